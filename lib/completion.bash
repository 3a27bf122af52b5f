# shellcheck shell=bash
# Summary: Bash completion for the entry scripts' flags (read from each script's own header) and for
# the sparkhelpers command (its sub-commands, options and preset names, from the Python core).
#
# Usage: source /path/to/sparkhelpers/lib/completion.bash   (e.g. in ~/.bashrc)
#        `sparkhelpers --install-completion` installs the sparkhelpers part alone, for bash, zsh or fish.

_SPARK_COMPLETION_HOME="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_SPARK_SCRIPTS=(setup-env.sh checkout_setup.sh start_cluster.sh stop_cluster.sh switch_model.sh
  benchmark_current.sh benchmark_all.sh)

_spark_core() {
  if [[ -x "$_SPARK_COMPLETION_HOME/.venv/bin/sparkhelpers" ]]; then
    printf '%s\n' "$_SPARK_COMPLETION_HOME/.venv/bin/sparkhelpers"
  else
    printf '%s\n' sparkhelpers
  fi
}

# The flags a script documents: every -x / --long token of its header comment.
_spark_script_flags() {
  awk 'NR == 1 && /^#!/ { next } /^#/ { print; next } { exit }' "$1" 2>/dev/null |
    grep -oE '(^|[[:space:][|,])--?[A-Za-z][A-Za-z0-9-]*' | sed -E 's/^[[:space:][|,]+//' | sort -u
}

# Ask the Python core to complete "sparkhelpers WORDS..." (Click's bash protocol), one candidate a line.
_spark_core_complete() {
  local words="$1" cword="$2"
  COMP_WORDS="$words" COMP_CWORD="$cword" _SPARKHELPERS_COMPLETE=complete_bash "$(_spark_core)" 2>/dev/null
}

_spark_scripts_completion() {
  local cur="${COMP_WORDS[COMP_CWORD]}" script="${COMP_WORDS[0]}" path IFS=$'\n'
  path="$script"
  [[ -f "$path" ]] || path="$_SPARK_COMPLETION_HOME/${script##*/}"
  if [[ "$cur" == -* ]]; then
    mapfile -t COMPREPLY < <(compgen -W "$(_spark_script_flags "$path")" -- "$cur")
  elif [[ "${script##*/}" == switch_model.sh ]]; then
    mapfile -t COMPREPLY < <(_spark_core_complete "sparkhelpers models show $cur" 3)
  else
    COMPREPLY=()
  fi
  return 0
}

_sparkhelpers_completion() {
  local IFS=$'\n'
  mapfile -t COMPREPLY < <(_spark_core_complete "${COMP_WORDS[*]}" "$COMP_CWORD")
  return 0
}

for _spark_script in "${_SPARK_SCRIPTS[@]}"; do
  complete -o default -F _spark_scripts_completion "$_spark_script" "./$_spark_script" \
    "$_SPARK_COMPLETION_HOME/$_spark_script"
done
unset _spark_script
complete -o default -F _sparkhelpers_completion sparkhelpers
