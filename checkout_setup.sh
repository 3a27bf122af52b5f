#!/usr/bin/env bash
# Summary: Check the cluster: fabric, SSH, drivers, images, disk, ports and NCCL transport.
#
# Usage: checkout_setup.sh [--quick | --ib | --nccl | --full] [--json]
#
# Options:
#   --quick    Fast checks that start nothing (default).
#   --ib       Also test RDMA bandwidth between nodes when perftest is installed.
#   --nccl     Also run nccl-tests when installed, and read the engine log for NET/IB.
#   --full     Everything, and write a redacted report bundle.
#   --json     Machine-readable results.
#   -h, --help Show this help.
#
# Exit status: 0 nothing failed, 1 a check failed, 2 usage error.
set -euo pipefail
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

level=""
args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h | --help) usage ;;
    --quick | --ib | --nccl | --full)
      [[ -z "$level" || "$level" == "$1" ]] || usage_error "choose one of --quick, --ib, --nccl, --full"
      level="$1"
      ;;
    --json) args+=(--json) ;;
    *) usage_error "unknown argument: $1" ;;
  esac
  shift
done

spark_load_config
# The doctor probes every node in parallel and prints one line per check with its fix.
sparkhelpers_exec doctor "${level:---quick}" "${args[@]}"
