#!/usr/bin/env bash
# Summary: Benchmark the model the cluster is serving now and save the results.
#
# Usage: benchmark_current.sh [--single | --quick | --profile NAME] [-u URL] [-n PROMPTS] [-c CONCURRENCY]
#                             [-d] [-o DIR]
#
# Options:
#   --single          One request at a time, a short run.
#   --quick           A short concurrency ladder.
#   --profile NAME    A named profile (default: BENCH_PROFILE).
#   -u URL            Server URL (default: from the config).
#   -n PROMPTS        Number of prompts per cell.
#   -c CONCURRENCY    Concurrency, or a comma-separated ladder.
#   -d                Debug output.
#   -o DIR            Results directory (default: RESULTS_DIR).
#   -h, --help        Show this help.
set -euo pipefail
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

while [[ $# -gt 0 ]]; do
  case "$1" in
    -h | --help) usage ;;
    --single | --quick | -d) ;;
    --profile | -u | -n | -c | -o) need_value "$1" $#; shift ;;
    *) usage_error "unknown argument: $1" ;;
  esac
  shift
done

spark_load_config
not_available "Benchmarking (benchmark_current.sh)"
