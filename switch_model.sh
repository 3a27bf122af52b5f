#!/usr/bin/env bash
# Summary: Choose the model to serve, download it, sync it to the workers and restart the cluster.
#
# Usage: switch_model.sh [--list] [--download-only] [--skip-download] [--skip-restart] [NAME | NUMBER]
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

while [[ $# -gt 0 ]]; do
  case "$1" in
    -h | --help) usage ;;
    --list | --download-only | --skip-download | --skip-restart) ;;
    -*) usage_error "unknown option: $1" ;;
    *) [[ -z "${choice:-}" ]] || usage_error "only one model may be given"; choice="$1" ;;
  esac
  shift
done

spark_load_config
not_available "Switching models (switch_model.sh)"
