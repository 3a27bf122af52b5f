#!/usr/bin/env bash
# Summary: Stop this cluster's containers on the head and every worker.
#
# Usage: stop_cluster.sh [--local-only] [--force]
#
# Options:
#   -l, --local-only   Stop only the containers on this node.
#   -f, --force        Kill containers without waiting for a clean shutdown.
#   -h, --help         Show this help.
set -euo pipefail
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

while [[ $# -gt 0 ]]; do
  case "$1" in
    -h | --help) usage ;;
    -l | --local-only | -f | --force) ;;
    *) usage_error "unknown argument: $1" ;;
  esac
  shift
done

spark_load_config
not_available "Stopping the cluster (stop_cluster.sh)"
