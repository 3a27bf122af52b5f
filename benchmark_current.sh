#!/usr/bin/env bash
# Summary: Benchmark the model the cluster is serving now and save the results.
#
# Usage: benchmark_current.sh [-s | --single | -q | --quick | --profile NAME] [-u URL] [-n PROMPTS]
#                             [-c CONCURRENCY] [-d DATASET] [-o DIR] [--variant NAME] [--json]
#
# Options:
#   -s, --single                One request at concurrency 1 (the 'single' profile).
#   -q, --quick                 20 requests at concurrency 16 (the 'quick' profile).
#   --profile NAME              A named profile: built-in (single, quick, default, ladder, standard, smoke) or
#                               from BENCH_PROFILES_FILE (default: BENCH_PROFILE).
#   -u, --url URL               Server root (default: the cluster's endpoint; a trailing /v1 is accepted).
#   -n, --num-prompts PROMPTS   Requests per run (overrides the profile).
#   -c, --concurrency LIST      Concurrency, or a comma-separated ladder such as 1,4,16 (overrides the profile).
#   -d, --dataset FILE          A local ShareGPT JSON file to draw prompts from instead of the profile's cells.
#   -o, --output DIR            Results directory (default: RESULTS_DIR).
#   --variant NAME              Configuration variant name recorded in the results.
#   --json                      Print the run summaries as JSON.
#   -h, --help        Show this help.
#
# Metrics are vllm bench serve's (see README "Benchmarks"). Each run is saved as JSON (vLLM's keys plus
# the cluster configuration) with a per-request JSONL; a summary table is printed at the end. Exit 1 when
# any request failed. Compare runs with: sparkhelpers bench matrix RESULTS_DIR.
set -euo pipefail
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

spark_parse_args "$@"
spark_no_words

spark_load_config
sparkhelpers_exec bench current "${SPARK_ARGS[@]}"
