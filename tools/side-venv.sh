#!/usr/bin/env bash
# Summary: Create (once) a side venv for a heavy tool under the shared cache, e.g. the LiteLLM proxy.
#
# Usage: tools/side-venv.sh NAME PYTHON 'SPEC' ['SPEC'...]
#
# Creates SIDE_VENV_ROOT/NAME (default root /var/cache/sparkhelpers) with pip-installed SPECs. The .specs file is
# written last, so an interrupted install never looks finished (it is rebuilt); a venv whose recorded specs
# equal the requested ones is left alone (idempotent). Concurrent runs wait on a lock. Prints the venv path.
set -euo pipefail
[[ $# -ge 3 ]] || { sed -n 's/^# \{0,1\}//;2,8p' "$0" >&2; exit 2; }
name=$1 python=$2
shift 2
root=${SIDE_VENV_ROOT:-/var/cache/sparkhelpers}
dest=$root/$name
want=$(printf '%s\n' "$@")
if [[ -f $dest/.specs && "$(cat "$dest/.specs")" == "$want" ]]; then
  echo "$dest"
  exit 0
fi
mkdir -p "$root"
exec 9>"$root/.$name.lock"
flock 9
if [[ -f $dest/.specs && "$(cat "$dest/.specs")" == "$want" ]]; then  # another run finished it meanwhile
  echo "$dest"
  exit 0
fi
command -v "$python" >/dev/null || { echo "side-venv: $python not found (fix: install it or pass another)" >&2; exit 1; }
rm -rf "$dest"  # a venv cannot be moved (its scripts hold its path), so it is built in place
echo "side-venv: creating $dest ($*)" >&2
"$python" -m venv "$dest"
"$dest/bin/pip" install -q --disable-pip-version-check "$@" >&2
printf '%s\n' "$want" >"$dest/.specs"
echo "$dest"
