#!/usr/bin/env bash
# Summary: Choose the model to serve, download it, sync it to the workers and restart the cluster.
#
# Usage: switch_model.sh [-l | --list] [-d | --download-only] [--skip-download] [-s | --skip-restart]
#                        [--wait SECONDS] [--json] [--recipe NAME|FILE | NAME | NUMBER]
#
# NAME is a preset from `--list` (or its number) or a Hugging Face repo id; with none, on a terminal,
# the numbered list is shown and you pick one. The choice is written to config.local.env (MODEL=...);
# no script is edited. The preset's context, parallel size and memory utilization apply unless you
# set those keys yourself (see `sparkhelpers models show`).
#
# Options:
#   -l, --list            List the model presets (numbered) and exit.
#   -d, --download-only   Download (and sync) the model, do not touch config or the cluster.
#   --skip-download       Do not download or sync; the model must already be on every node.
#   -s, --skip-restart    Write the choice into config.local.env but do not restart the cluster.
#   --wait SECONDS        Wait for a start, stop or sweep holding the cluster lock (default: refuse at once).
#   --recipe NAME|FILE    Serve this recipe (file, name on RECIPE_PATH, or preset); written as RECIPE=...
#   --json                Print the result as JSON.
#   -h, --help            Show this help.
#
# Runs `sparkhelpers cluster switch` under the cluster lock: the model is resolved once, its node count
# checked against head + WORKER_HOST, then download, sync, config, stop, start and one chat request.
set -euo pipefail
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

spark_parse_args "$@"
[[ ${#SPARK_WORDS[@]} -le 1 ]] || usage_error "only one model may be given"

spark_load_config
sparkhelpers_exec cluster switch "${SPARK_ARGS[@]}" ${SPARK_WORDS[0]+-- "${SPARK_WORDS[0]}"}
