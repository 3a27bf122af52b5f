# shellcheck shell=bash
# Summary: Shared shell library for the sparkhelpers entry scripts (sourced, never run).
#
# Provides: SPARK_HOME, spark_load_config, spark_parse_args, log, warn, die, usage, usage_error, require_cmd,
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

# spark_flag_table: the script's header Options block as "NAME CANONICAL TAKES_VALUE" lines. The header is the
# one list of a wrapper's flags: "#   -l, --local-only   text" (an alias pair), "#   --nodes N   text" (a word in
# capitals after the flags: it takes a value). The canonical name is the first long one.
spark_flag_table() {
  awk 'NR == 1 && /^#!/ { next } !/^#/ { exit }
    /^# Options:/ { on = 1; next }
    on && /^#   -/ {
      spec = substr($0, 5); sub(/  .*/, "", spec); gsub(/,/, " ", spec)
      n = split(spec, w, " "); canon = ""; value = 0; names = ""
      for (i = 1; i <= n; i++) {
        if (w[i] ~ /^-/) { names = names " " w[i]; if (canon == "" && w[i] ~ /^--/) canon = w[i] }
        else value = 1
      }
      if (canon == "") canon = w[1]
      m = split(names, f, " ")
      for (i = 1; i <= m; i++) print f[i], canon, value
    }' "$SCRIPT_PATH"
}

# spark_parse_args ARGS...: check ARGS against the header's flags; -h/--help prints the header. Fills SPARK_ARGS
# (each flag in its canonical long form, with its value) and SPARK_WORDS (the other arguments). A misuse is
# one line and exit 2. SPARK_INTERNAL_FLAGS names flags a wrapper passes that stay out of the header.
spark_parse_args() {
  local -A canon_=() takes_=()
  local name_ canonical_ value_
  while read -r name_ canonical_ value_; do
    canon_[$name_]=$canonical_
    takes_[$name_]=$value_
  done < <(spark_flag_table)
  for name_ in ${SPARK_INTERNAL_FLAGS:-}; do canon_[$name_]=$name_; takes_[$name_]=0; done
  SPARK_ARGS=()
  SPARK_WORDS=()
  while [[ $# -gt 0 ]]; do
    case "$1" in
      -h | --help) usage ;;
      --) shift; SPARK_WORDS+=("$@"); break ;;
      -*)
        [[ -v "canon_[$1]" ]] || usage_error "unknown option: $1"
        if [[ "${takes_[$1]}" == 1 ]]; then
          need_value "$1" $#
          SPARK_ARGS+=("${canon_[$1]}" "$2")
          shift
        else
          SPARK_ARGS+=("${canon_[$1]}")
        fi
        ;;
      *) SPARK_WORDS+=("$1") ;;
    esac
    shift
  done
}

# spark_no_words: the script takes no positional argument.
spark_no_words() { [[ ${#SPARK_WORDS[@]} -eq 0 ]] || usage_error "unexpected argument: ${SPARK_WORDS[0]}"; }
