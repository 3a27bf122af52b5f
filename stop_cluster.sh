#!/usr/bin/env bash
# Summary: Stop this cluster's containers on the head and every worker.
#
# Usage: stop_cluster.sh [--local-only] [--force] [--dry-run] [--json]
#
# Options:
#   -l, --local-only   Stop only the containers on this node.
#   -f, --force        End whatever holds the cluster lock (a hung start, a sweep), then kill the
#                      containers at once.
#   --json             Print per-node results as JSON.
#   --dry-run          Print the commands per node and change nothing.
#   -h, --help         Show this help.
set -euo pipefail
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

spark_parse_args "$@"
spark_no_words

# No spark_load_config: this wrapper reads no setting, and the core reads and checks the configuration
# itself (the same refusal of a config line bash would execute, with file:line), one Python start-up less.
# Waits up to 30 s for the cluster lock; --force does not wait: it ends the lock holder (SIGTERM, it
# cleans up as for Ctrl-C), then kills the containers.
# Only containers labelled sparkhelpers.cluster=$CLUSTER_NAME, every node in parallel, STOP_TIMEOUT
# each; an unreachable node is reported and makes the exit code 1. Running it twice is harmless.
sparkhelpers_exec cluster stop "${SPARK_ARGS[@]}"
