#!/usr/bin/env bash
# Summary: Install, once, the real Ray the emulated cluster's engine image carries (Ray mode runs it for real).
#
# Usage: tools/real-ray.sh [--python PYTHON] [--print]
#   Installs ray==2.49.2 from PyPI (pip --target, about 15 s) under
#   ${SPARK_REAL_RAY_CACHE:-/var/cache/sparkhelpers/real-ray}/ray-2.49.2-cpXY, for the interpreter the sim
#   image carries (default: the one behind .venv/bin/python, else python3). The Java jars, RLlib, the
#   dashboard's web build and the test suites are left out and the binaries' debug symbols stripped
#   (222 MB -> about 130 MB): the image stays small. Idempotent (a .ready stamp, one lock).
#   --print prints the directory only.
#   Example: tools/real-ray.sh && .venv/bin/sparkhelpers sim build
set -euo pipefail
VERSION=2.49.2
CACHE=${SPARK_REAL_RAY_CACHE:-/var/cache/sparkhelpers/real-ray}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PYTHON="" PRINT=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --python) PYTHON=${2:?--python needs a path}; shift ;;
    --print) PRINT=1 ;;
    -h|--help) sed -n 's/^# \{0,1\}//;2,/^$/p' "${BASH_SOURCE[0]}" | sed '/^set -euo/d'; exit 0 ;;
    *) echo "real-ray: unknown argument '$1' (fix: see tools/real-ray.sh --help)" >&2; exit 2 ;;
  esac
  shift
done
if [[ -z $PYTHON ]]; then
  venv_py=$HERE/../.venv/bin/python
  if [[ -x $venv_py ]]; then
    PYTHON=$("$venv_py" -c 'import sys; print(getattr(sys, "_base_executable", sys.executable))')
  else
    PYTHON=$(command -v python3)
  fi
fi
TAG=$("$PYTHON" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
DEST=$CACHE/ray-$VERSION-$TAG
if [[ $PRINT == 1 ]]; then
  echo "$DEST"
  exit 0
fi
log() { echo "real-ray: $*" >&2; }

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9
if [[ ! -f $DEST/.ready ]]; then
  log "installing ray==$VERSION for $PYTHON into $DEST"
  rm -rf "$DEST"
  "$PYTHON" -m pip install -q --disable-pip-version-check --no-warn-script-location --target "$DEST" \
    "ray==$VERSION" 2> >(grep -v "Running pip as the 'root' user\|is ignored: it is neither" >&2)
  rm -rf "${DEST:?}/ray/jars" "$DEST/ray/rllib" "$DEST/ray/dashboard/client/build" "${DEST:?}/bin"
  find "$DEST" -depth -type d -name tests -path '*/ray/*' -exec rm -rf {} +
  if command -v strip >/dev/null; then
    find "$DEST/ray" -type f \( -name '*.so' -o -name gcs_server -o -name raylet \) -exec strip --strip-debug {} +
  fi
  "$PYTHON" -c "import sys; sys.path.insert(0, '$DEST'); import ray, ray.scripts.scripts; \
assert ray.__version__ == '$VERSION', ray.__version__"
  chmod -R a+rX "$DEST"
  touch "$DEST/.ready"
  log "ray $VERSION ready in $DEST ($(du -sm "$DEST" | cut -f1) MB)"
fi
echo "$DEST"
