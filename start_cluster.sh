#!/usr/bin/env bash
# Summary: Start the vLLM cluster on the head and every worker, wait until it serves, and prove it.
#
# Usage: start_cluster.sh [--dry-run] [--nodes N | --solo] [--recipe NAME|FILE] [--replace] [--keep-on-failure]
#                       [--timeout SECONDS] [--json]
#
# Options:
#   --dry-run           Print every command per node and change nothing.
#   --nodes N           Use the head plus the first N-1 workers of WORKER_HOST.
#   --solo              Single node: the head only.
#   --recipe NAME|FILE  Serve this recipe (a file, a name on RECIPE_PATH, or a preset) instead of MODEL.
#   --replace           Stop a different running configuration first.
#   --keep-on-failure   Leave containers running after a failure, for debugging.
#   --timeout SECONDS   Seconds to wait for the engine to be healthy (default: START_TIMEOUT).
#   --json              Print the result as JSON.
#   -h, --help          Show this help.
set -euo pipefail
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

spark_parse_args "$@"
spark_no_words

# No spark_load_config: this wrapper reads no setting, and the core reads and checks the configuration
# itself (the same refusal of a config line bash would execute, with file:line), one Python start-up less.
# Phases (each printed with its time): preflight (SSH, Docker, fabric address, running cluster, port),
# image (same ID everywhere; copied head -> worker where missing), model (on every node; synced where
# missing), containers (in the order the launch mode needs), health (watching every engine process),
# one chat request. On failure: the node's last log lines, cleanup, exit 1. Ctrl-C or SIGTERM stops what
# started. Under the cluster lock (one start, stop, switch or sweep at a time), taken by the core this execs.
sparkhelpers_exec cluster start "${SPARK_ARGS[@]}"
