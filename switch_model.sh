#!/usr/bin/env bash
# Summary: Choose the model to serve, download it, sync it to the workers and restart the cluster.
#
# Usage: switch_model.sh [--list] [--download-only] [--skip-download] [--skip-restart] [NAME | NUMBER]
#
# NAME is a preset from `--list` (or its number) or a Hugging Face repo id. The choice is written
# to config.local.env (MODEL=...); no script is edited. The preset's context, parallel size and
# memory utilization apply unless you set those keys yourself (see `sparkhelpers models show`).
#
# Options:
#   --list            List the model presets (numbered) and exit.
#   --download-only   Download (and sync) the model, do not touch config or the cluster.
#   --skip-download   Do not download or sync; the model must already be on every node.
#   --skip-restart    Write the choice into config.local.env but do not restart the cluster.
#   -h, --help        Show this help.
set -euo pipefail
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

list=0 download_only=0 skip_download=0 skip_restart=0 choice=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h | --help) usage ;;
    --list) list=1 ;;
    --download-only) download_only=1 ;;
    --skip-download) skip_download=1 ;;
    --skip-restart) skip_restart=1 ;;
    -*) usage_error "unknown option: $1" ;;
    *) [[ -z "$choice" ]] || usage_error "only one model may be given"; choice="$1" ;;
  esac
  shift
done
((download_only && skip_download)) && usage_error "--download-only and --skip-download exclude each other"

spark_load_config
if ((list)); then
  sparkhelpers models list
  exit 0
fi
[[ -n "$choice" ]] || usage_error "name a model: a preset, its number from --list, or a Hugging Face repo id"

# Validates the choice and turns a number into the preset name.
name="$(sparkhelpers models show "$choice" --field name)"
nodes="$(sparkhelpers models show "$name" --field nodes)"
read -ra workers <<<"${WORKER_HOST:-}"
if ((nodes > 1 + ${#workers[@]})); then
  die "$name needs $nodes nodes; this cluster has $((1 + ${#workers[@]})) (head + WORKER_HOST)" \
    "add workers to WORKER_HOST, or pick a model for fewer nodes (switch_model.sh --list)"
fi
sparkhelpers models fit "$name" >/dev/null 2>&1 ||
  warn "$name may not fit in memory: see 'sparkhelpers models fit $name'"

fetch() {
  sparkhelpers models download "$name" || die "download of $name failed (see above)" "run the same command again: it resumes"
  if ((nodes > 1)); then
    sparkhelpers models sync "$name" || die "sync of $name to the workers failed (see above)" "run the same command again: it resumes"
  fi
}

if ((download_only)); then
  fetch
  log "$name is downloaded (and on every worker when it needs them); config unchanged"
  exit 0
fi

sparkhelpers config set MODEL "$name"
((skip_download)) || fetch

if ((skip_restart)); then
  log "MODEL=$name written to config.local.env; serve it with: ./stop_cluster.sh && ./start_cluster.sh"
  exit 0
fi

log "restarting the cluster with $name"
"$SPARK_HOME/stop_cluster.sh" ||
  die "restart step (stop_cluster.sh) failed; MODEL=$name is saved" "fix the cause above, then: ./stop_cluster.sh && ./start_cluster.sh"
"$SPARK_HOME/start_cluster.sh" ||
  die "restart step (start_cluster.sh) failed; MODEL=$name is saved" "read the start log above, then: ./start_cluster.sh"
sparkhelpers models smoke || die "$name does not answer the smoke chat request" "read the engine log"
log "$name is serving"
