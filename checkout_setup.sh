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

spark_parse_args "$@"
spark_no_words
level="" args=()
for arg in "${SPARK_ARGS[@]}"; do
  case "$arg" in
    --quick | --ib | --nccl | --full)
      [[ -z "$level" || "$level" == "$arg" ]] || usage_error "choose one of --quick, --ib, --nccl, --full"
      level="$arg"
      ;;
    *) args+=("$arg") ;;
  esac
done

spark_load_config
# The doctor probes every node in parallel and prints one line per check with its fix.
sparkhelpers_exec doctor "${level:---quick}" "${args[@]}"
