#!/usr/bin/env bash
# Summary: Stop this cluster's containers on the head and every worker.
#
# Usage: stop_cluster.sh [--local-only] [--force] [--dry-run]
#
# Options:
#   -l, --local-only   Stop only the containers on this node.
#   -f, --force        Kill containers at once, even while a start holds the cluster lock.
#   --dry-run          Print the commands per node and change nothing.
#   -h, --help         Show this help.
set -euo pipefail
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h | --help) usage ;;
    -l | --local-only) args+=(--local-only) ;;
    -f | --force) args+=(--force) ;;
    --dry-run) args+=(--dry-run) ;;
    *) usage_error "unknown argument: $1" ;;
  esac
  shift
done

spark_load_config
# --force does not wait for the lock: it must be able to end a hung start (which then fails cleanly).
[[ " ${args[*]} " == *" --dry-run "* || " ${args[*]} " == *" --force "* ]] || spark_lock stop_cluster.sh 30
# Only containers labelled sparkhelpers.cluster=$CLUSTER_NAME, every node in parallel, STOP_TIMEOUT
# each; an unreachable node is reported and makes the exit code 1. Running it twice is harmless.
sparkhelpers cluster stop "${args[@]}"
