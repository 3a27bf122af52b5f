#!/usr/bin/env bash
# Summary: Benchmark the model the cluster is serving now and save the results.
#
# Usage: benchmark_current.sh [--single | --quick | --profile NAME] [-u URL] [-n PROMPTS] [-c CONCURRENCY]
#                             [-d DATASET] [-o DIR]
#
# Options:
#   --single          One request at concurrency 1 (the 'single' profile).
#   --quick           20 requests at concurrency 16 (the 'quick' profile).
#   --profile NAME    A named profile: built-in (single, quick, default, ladder, standard, smoke) or from
#                     BENCH_PROFILES_FILE (default: BENCH_PROFILE).
#   -u, --url URL     Server root (default: http://127.0.0.1:VLLM_PORT; a trailing /v1 is accepted).
#   -n PROMPTS        Requests per run (overrides the profile).
#   -c CONCURRENCY    Concurrency, or a comma-separated ladder such as 1,4,16 (overrides the profile).
#   -d DATASET        A local ShareGPT JSON file to draw prompts from instead of the profile's cells.
#   -o DIR            Results directory (default: RESULTS_DIR).
#   -h, --help        Show this help.
#
# Metrics are vllm bench serve's (see README "Benchmarks"). Each run is saved as JSON (vLLM's keys plus
# the cluster configuration) with a per-request JSONL; a summary table is printed at the end. Exit 1 when
# any request failed. Compare runs with: sparkhelpers bench matrix RESULTS_DIR.
set -euo pipefail
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h | --help) usage ;;
    -s | --single) args+=(--single) ;;
    -q | --quick) args+=(--quick) ;;
    --profile | -u | --url | -n | -c | -d | -o)
      need_value "$1" $#
      case "$1" in
        --profile) args+=(--profile "$2") ;;
        -u | --url) args+=(--url "$2") ;;
        *) args+=("$1" "$2") ;;
      esac
      shift
      ;;
    *) usage_error "unknown argument: $1" ;;
  esac
  shift
done

spark_load_config
sparkhelpers_exec bench current "${args[@]}"
