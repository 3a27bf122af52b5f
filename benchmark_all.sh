#!/usr/bin/env bash
# Summary: Sweep models and configuration variants, or recipes, over benchmark profiles (safe under cron).
#
# Usage: benchmark_all.sh [--yes] [--resume] [--profile LIST] [--models LIST] [--variants LIST] [--recipes LIST]
#                         [--name NAME] [--single-node | --multi-node] [--skip-token] [--download] [--dry-run]
#
# Options:
#   -y, --yes         Do not ask for confirmation (required when stdin is not a terminal, e.g. cron).
#   --resume          Continue the latest sweep (or --name): cells that ended SUCCESS or SKIPPED are skipped.
#   --profile LIST    Benchmark profile(s), comma-separated (default: BENCH_PROFILE).
#   --models LIST     Models (presets, their numbers from switch_model.sh --list, or Hugging Face ids),
#                     comma-separated (default: MODEL).
#   --variants LIST   Configuration variants from the profiles file (default: baseline), e.g. tier1-off,tier1-on.
#   --recipes LIST    Recipes (files, names on RECIPE_PATH, presets), comma-separated: each is served as
#                     written (no variants) and every result carries its recipe id.
#   --name NAME       Sweep directory name under RESULTS_DIR/sweeps (a plain name; default: the start time).
#   --single-node     Only models that run on one node (every such preset when --models is not given).
#   --multi-node      Only models that span nodes (every such preset when --models is not given).
#   --skip-token      Skip gated models (they need a Hugging Face token).
#   --download        Download and sync models that are missing (default: they must be on every node).
#   --dry-run         Print the plan and the commands, change nothing.
#   -h, --help        Show this help.
#
# One process, one cluster lock: each model x variant, then each recipe, is switched to in-process (the
# variant's keys are config overrides; config.local.env is never written), then every profile runs
# against it. Every recipe is loaded and hashed before anything changes; --dry-run prints each one's id,
# layout and serve command. Cell status:
# SUCCESS, SKIPPED, START_FAILED, BENCH_FAILED or TIMEOUT (BENCH_TIMEOUT). Before the first change the
# pre-sweep config and running state are recorded in the sweep's state; at the end (failure, timeout,
# SIGTERM, or after a kill -9 the next --resume or sweep) the cluster is put back as it was (or stopped).
# Logs to RESULTS_DIR/sweeps/NAME/sweep.log; writes matrix.md and report.html there (never through a
# symlink); exits 1 when any cell did not succeed, 2 on misuse.
set -euo pipefail
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

spark_parse_args "$@"
spark_no_words

spark_load_config
sparkhelpers_exec bench sweep "${SPARK_ARGS[@]}"
