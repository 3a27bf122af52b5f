#!/usr/bin/env bash
# Summary: Start the vLLM cluster on the head and every worker, wait until it serves, and prove it.
#
# Usage: start_cluster.sh [--dry-run] [--nodes N | --solo] [--replace] [--keep-on-failure] [--timeout SECONDS]
#
# Options:
#   --dry-run           Print every command per node and change nothing.
#   --nodes N           Use the head plus the first N-1 workers of WORKER_HOST.
#   --solo              Single node: the head only.
#   --replace           Stop a different running configuration first.
#   --keep-on-failure   Leave containers running after a failure, for debugging.
#   --timeout SECONDS   Seconds to wait for the engine to be healthy (default: START_TIMEOUT).
#   -h, --help          Show this help.
set -euo pipefail
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

while [[ $# -gt 0 ]]; do
  case "$1" in
    -h | --help) usage ;;
    --dry-run | --solo | --replace | --keep-on-failure) ;;
    --nodes | --timeout) need_value "$1" $#; shift ;;
    *) usage_error "unknown argument: $1" ;;
  esac
  shift
done

spark_load_config
not_available "Starting the cluster (start_cluster.sh)"
