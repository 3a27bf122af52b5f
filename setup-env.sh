#!/usr/bin/env bash
# Summary: Interactive set-up: discover the fabric, ask for workers and model, write config.local.env.
#
# Usage: source setup-env.sh [options]   (also exports the settings into your shell)
#        ./setup-env.sh [options]        (writes config.local.env only)
#
# Options:
#   --non-interactive   Take every answer from flags, the config and discovery; never prompt.
#   --workers LIST      Worker SSH addresses, space- or comma-separated.
#   --user NAME         SSH user on the workers.
#   --model NAME        Model preset or Hugging Face repo id.
#   --hf-token-stdin    Read the Hugging Face token from one line of standard input.
#   --head              Head mode (the default): this node is rank 0; ask for the workers.
#   --worker            Worker mode: check this node and print what the head needs.
#   --discover          Show this node's fabric and NCCL settings before the questions.
#   --dry-run           Ask and validate, then show what would be written; write nothing.
#   -h, --help          Show this help.
#
# Every answer is validated (SSH in batch mode, the worker's fabric IP, a no-fragment ping over
# the fabric) before anything is written; existing values are the defaults, so re-running keeps
# them. The token is read without echo and never exported or passed on a command line.

# Sourced: run in a child bash so the caller's shell options are never changed, then export
# only the export lines the child prints.
if [[ "${BASH_SOURCE[0]}" != "${0}" ]]; then
  if spark_exports_="$(bash "${BASH_SOURCE[0]}" --print-exports "$@")"; then
    eval "$(printf '%s\n' "$spark_exports_" | grep -E '^export [A-Z_][A-Z0-9_]*=')"
    unset spark_exports_
    return 0
  fi
  unset spark_exports_
  return 1
fi

set -euo pipefail
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

SPARK_INTERNAL_FLAGS=--print-exports  # the sourced form asks its own child for export lines
spark_parse_args "$@"
spark_no_words

spark_load_config
# Run: the core replaces this script. Sourced: the child bash above execs it, the caller's shell stays.
sparkhelpers_exec setup "${SPARK_ARGS[@]}"
