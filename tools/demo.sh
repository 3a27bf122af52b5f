#!/usr/bin/env bash
# Summary: `make demo`: the main job on the built-in defaults, on whatever this version can run.
#
# Usage: tools/demo.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SH=.venv/bin/sparkhelpers
echo "== sparkhelpers $($SH --version | cut -d' ' -f2): configuration (flag > env > config.local.env > config.env)"
$SH config show
echo
echo "== where things live (each path can be redirected by the variable named on the left)"
$SH config paths
echo
echo "The emulated-cluster demo (start, chat, benchmark, stop) is not available in this version yet."
