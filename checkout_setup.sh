#!/usr/bin/env bash
# Summary: Check the cluster: fabric, SSH, drivers, images, disk, ports and NCCL transport.
#
# Usage: checkout_setup.sh [--quick | --ib | --nccl | --full] [--json] [--snapshot NAME=DIR ...]
#        checkout_setup.sh --config
#
# Options:
#   --quick                Fast checks that start nothing (default).
#   --ib, --infiniband     Also test RDMA bandwidth between nodes when perftest is installed.
#   --nccl                 Also run nccl-tests when installed, and read the engine log for NET/IB.
#   --full                 Everything, and write a redacted report bundle.
#   --json                 Machine-readable results.
#   --snapshot NAME=DIR    Check captured snapshots instead of live nodes (repeat; the first is the head).
#   --config               Print this node's suggested NCCL export lines and exit.
#   -h, --help             Show this help.
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
    --quick | --ib | --infiniband | --nccl | --full)
      flag="$1"
      [[ "$flag" != --infiniband ]] || flag=--ib
      [[ -z "$level" || "$level" == "$flag" ]] || usage_error "choose one of --quick, --ib, --nccl, --full"
      level="$flag"
      ;;
    --json | --config) args+=("$1") ;;
    --snapshot)
      need_value "$1" $#
      args+=("$1" "$2")
      shift
      ;;
    *) usage_error "unknown argument: $1" ;;
  esac
  shift
done

spark_load_config
# The doctor probes every node in parallel and prints one line per check with its fix.
sparkhelpers_exec doctor "${level:---quick}" "${args[@]}"
