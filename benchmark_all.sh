#!/usr/bin/env bash
# Summary: Sweep models and configuration variants over benchmark profiles (safe under cron).
#
# Usage: benchmark_all.sh [--yes] [--resume] [--profile LIST] [--models LIST] [--variants LIST] [--name NAME]
#                         [--download] [--dry-run]
#
# Options:
#   --yes, -y         Do not ask for confirmation (required when stdin is not a terminal, e.g. cron).
#   --resume          Continue the latest sweep (or --name): cells that ended SUCCESS or SKIPPED are skipped.
#   --profile LIST    Benchmark profile(s), comma-separated (default: BENCH_PROFILE).
#   --models LIST     Models (presets or Hugging Face ids), comma-separated (default: MODEL).
#   --variants LIST   Configuration variants from the profiles file (default: baseline), e.g. tier1-off,tier1-on.
#   --name NAME       Sweep directory name under RESULTS_DIR/sweeps (default: the start time).
#   --download        Let switch_model.sh download missing models (default: --skip-download).
#   --dry-run         Print the plan and the commands, change nothing.
#   -h, --help        Show this help.
#
# Each model x variant is served through switch_model.sh (the variant's keys in the environment), then
# every profile runs against it. Cell status: SUCCESS, SKIPPED, START_FAILED, BENCH_FAILED or TIMEOUT
# (BENCH_TIMEOUT). Holds the cluster lock; logs to RESULTS_DIR/sweeps/NAME/sweep.log; writes matrix.md and
# report.html there; always puts the cluster back to config.local.env's model and options (or stops it);
# exits 1 when any cell did not succeed, 2 on misuse.
set -euo pipefail
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h | --help) usage ;;
    -y | --yes) args+=(--yes) ;;
    --resume | --download | --dry-run) args+=("$1") ;;
    --profile | --models | --variants | --name)
      need_value "$1" $#
      args+=("$1" "$2")
      shift
      ;;
    *) usage_error "unknown argument: $1" ;;
  esac
  shift
done

spark_load_config
sparkhelpers_exec bench sweep "${args[@]}"
