#!/usr/bin/env bash
# Summary: the real programs the recipe tests compare against, in cached side venvs (tools/side-venv.sh):
#   sparkrun 0.4.2 (needs Python 3.12; the recipe oracle) and ray[serve] + kubernetes (manifest schemas).
# Usage: tools/recipe-oracles.sh [--print]   (--print: only print the two venv paths)
set -euo pipefail
here=$(dirname "${BASH_SOURCE[0]}")
root=${SIDE_VENV_ROOT:-/var/cache/sparkhelpers}
if [[ "${1:-}" == "--print" ]]; then
  printf '%s\n%s\n' "$root/sparkrun-0.4.2" "$root/k8s-validate"
  exit 0
fi
py312=""
for candidate in "${PYENV_ROOT:-$HOME/.pyenv}/versions/3.12"*/bin/python3.12 /usr/bin/python3.12; do
  if [[ -x "$candidate" ]]; then
    py312=$candidate
    break
  fi
done
[[ -n "$py312" ]] || { echo "recipe-oracles: Python 3.12 is missing (fix: pyenv install 3.12)" >&2; exit 1; }
"$here/side-venv.sh" sparkrun-0.4.2 "$py312" 'sparkrun==0.4.2' >/dev/null
"$here/side-venv.sh" k8s-validate python3 'ray[serve]==2.60.0' 'kubernetes==37.0.2' >/dev/null
