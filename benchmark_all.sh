#!/usr/bin/env bash
# Summary: Sweep models and configuration variants over benchmark profiles (safe under cron).
#
# Usage: benchmark_all.sh [--yes] [--resume] [--profile NAME] [--models LIST] [--variants LIST]
#
# Options:
#   --yes             Do not ask for confirmation (required when not on a terminal).
#   --resume          Skip cells that already finished.
#   --profile NAME    Benchmark profile for every cell (default: BENCH_PROFILE).
#   --models LIST     Comma-separated presets to sweep.
#   --variants LIST   Comma-separated configuration variants to sweep.
#   -h, --help        Show this help.
set -euo pipefail
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

while [[ $# -gt 0 ]]; do
  case "$1" in
    -h | --help) usage ;;
    --yes | --resume) ;;
    --profile | --models | --variants) need_value "$1" $#; shift ;;
    *) usage_error "unknown argument: $1" ;;
  esac
  shift
done

spark_load_config
not_available "The benchmark sweep (benchmark_all.sh)"
