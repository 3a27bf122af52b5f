# shellcheck shell=bash
# Summary: Shared shell library for the sparkhelpers entry scripts (sourced, never run).
#
# Provides: SPARK_HOME, spark_load_config, log, warn, die, usage, usage_error, require_cmd,
# sparkhelpers (runs the Python core), sparkhelpers_exec (replaces the script with it). The cluster lock
# is the Python core's alone (sparkhelpers.locking): scripts exec the core, so the PID it records is theirs.
# Exit codes: 0 success, 1 failure, 2 usage.

if [[ -n "${SPARK_DEBUG:-}" && "${SPARK_DEBUG}" != 0 ]]; then
  PS4='+(${BASH_SOURCE}:${LINENO}): ${FUNCNAME[0]:+${FUNCNAME[0]}(): }'
  set -x
fi

# The repo root is the directory above this file, whatever the caller's working directory.
SPARK_HOME="${SPARK_HOME:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
export SPARK_HOME
SCRIPT_NAME="$(basename "${0}")"
SCRIPT_PATH="${0}"

log() { printf '%s: %s\n' "$SCRIPT_NAME" "$*" >&2; }
warn() { printf '%s: warning: %s\n' "$SCRIPT_NAME" "$*" >&2; }
die() {
  printf '%s: %s\n' "$SCRIPT_NAME" "$1" >&2
  [[ $# -gt 1 ]] && printf '%s: fix: %s\n' "$SCRIPT_NAME" "$2" >&2
  exit 1
}

# Print the script's header comment (the lines after the shebang, up to the first non-comment).
usage_text() {
  awk 'NR == 1 && /^#!/ { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$SCRIPT_PATH"
}

# usage: --help prints to stdout and exits 0.
usage() { usage_text; exit 0; }

# usage_error MESSAGE: misuse prints to stderr and exits 2.
usage_error() {
  printf '%s: %s\n' "$SCRIPT_NAME" "$1" >&2
  printf "Try '%s --help' for usage.\n" "$SCRIPT_NAME" >&2
  exit 2
}

# require_cmd COMMAND PACKAGE: fail with the install line when COMMAND is missing.
require_cmd() {
  command -v "$1" >/dev/null 2>&1 && return 0
  die "$1 is not installed" "sudo apt-get install -y ${2:-$1}"
}

# spark_load_config: the configuration as shell variables, from the Python parser; no config file
# is ever sourced. `sparkhelpers config shell` applies flag > environment > config.local.env >
# config.env > built-in default (sparkhelpers.config.resolve, the one rule) and prints quoted
# KEY='value' lines; a line bash would execute ($(...), backticks, a command) is refused there with
# file:line before anything runs. Plain assignments: a key only the files set is not exported.
spark_load_config() {
  local assignments_
  assignments_="$(sparkhelpers config shell)" || exit
  eval "$assignments_"
}

# sparkhelpers ARGS...: run the Python core (the repo's venv first, then PATH).
sparkhelpers() {
  if [[ -x "$SPARK_HOME/.venv/bin/sparkhelpers" ]]; then
    "$SPARK_HOME/.venv/bin/sparkhelpers" "$@"
  elif command -v sparkhelpers >/dev/null 2>&1; then
    command sparkhelpers "$@"
  else
    die "the sparkhelpers Python package is not installed" "cd $SPARK_HOME && make venv"
  fi
}

# sparkhelpers_exec ARGS...: replace this script with the Python core, so signals (cron, systemd,
# timeout) reach it directly and it can clean up; use it as a script's last command.
sparkhelpers_exec() {
  if [[ -x "$SPARK_HOME/.venv/bin/sparkhelpers" ]]; then
    exec "$SPARK_HOME/.venv/bin/sparkhelpers" "$@"
  elif command -v sparkhelpers >/dev/null 2>&1; then
    exec sparkhelpers "$@"
  fi
  die "the sparkhelpers Python package is not installed" "cd $SPARK_HOME && make venv"
}

# need_value FLAG COUNT: a flag that takes a value was given as the last argument.
need_value() { [[ "$2" -ge 2 ]] || usage_error "$1 needs a value"; }
