#!/usr/bin/env bash
# Summary: `make demo`: an emulated 2-node Spark cluster on this machine: start vLLM, chat, benchmark, stop.
#
# Usage: tools/demo.sh
#
# Needs root (network namespaces) and the packages `make deps` installs; no GPU, no internet and no
# Docker Hub. The real scripts run on the emulated head node exactly as on a Spark, pointed at the
# workers by the profile `sparkhelpers sim up` writes (see README "Emulated cluster (sim)").
# DEMO_BENCH_ARGS overrides the benchmark arguments (default: --quick -n 4 -c 4).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
SH=$ROOT/.venv/bin/sparkhelpers
NAME=demo
RUN_ENV=()

step() { printf '\n== %s\n' "$*"; }
fail() {
  printf 'demo: %s\n' "$1" >&2
  [[ $# -gt 1 ]] && printf 'demo: fix: %s\n' "$2" >&2
  exit 1
}
on_head() { "$SH" sim exec --name "$NAME" spark1 -- "$@"; }
# run_script SCRIPT ARGS...: run a root script on the head with the sim profile, as a user would.
run_script() { on_head env SPARK_CONFIG="$PROFILE" "${RUN_ENV[@]}" "$ROOT/$1" "${@:2}"; }

[[ $(id -u) -eq 0 ]] || fail "the demo needs root (it creates network namespaces)" "sudo make demo"

step "1/6 emulated cluster: spark1 (head) and spark2 (worker), engine image on the head only"
"$SH" sim down --name "$NAME" >/dev/null 2>&1 || true
"$SH" sim up --name "$NAME" --nodes 2 --image-on head
PROFILE=$("$SH" sim profile --name "$NAME")
MODEL=$(SPARK_CONFIG=$PROFILE "$SH" config get MODEL)
PORT=$(SPARK_CONFIG=$PROFILE "$SH" config get VLLM_PORT)
HEAD_IP=$(SPARK_CONFIG=$PROFILE "$SH" config get HEAD_IP)

step "2/6 model $MODEL in the head's cache (a placeholder: the sim's engine really generates with SmolLM2-135M)"
"$SH" sim seed-model --name "$NAME" spark1 "$MODEL"

step "3/6 start_cluster.sh --nodes 2 on the head (SPARK_CONFIG=$PROFILE TENSOR_PARALLEL=2)"
RUN_ENV=(TENSOR_PARALLEL=2) # one model across both nodes, as on two real Sparks
rc=0
run_script start_cluster.sh --nodes 2 || rc=$?
RUN_ENV=()
if [[ $rc -ne 0 ]]; then
  fail "start_cluster.sh failed (exit $rc), see above" \
    "inspect with: $SH sim exec --name $NAME spark1 -- bash; clean up with: $SH sim down --name $NAME"
fi

step "4/6 a chat request to http://$HEAD_IP:$PORT (streamed, real tokens)"
on_head "$ROOT/.venv/bin/python" "$ROOT/tools/demo_chat.py" "http://$HEAD_IP:$PORT" ||
  fail "the chat request failed" "see the engine logs: $SH sim exec --name $NAME spark1 -- docker logs \$(docker ps -q | head -1)"

echo
on_head env SPARK_CONFIG="$PROFILE" "$SH" status || true

step "5/6 quick benchmark (benchmark_current.sh ${DEMO_BENCH_ARGS:---quick -n 4 -c 4})"
# The sim's engine is one CPU thread: 4 requests at concurrency 4 keep this step under a minute.
read -r -a bench_args <<<"${DEMO_BENCH_ARGS:---quick -n 4 -c 4}"
rc=0
run_script benchmark_current.sh "${bench_args[@]}" || rc=$?
if [[ $rc -ne 0 ]]; then
  fail "benchmark_current.sh failed (exit $rc), see above" "$SH sim down --name $NAME when done"
fi

step "6/6 stop"
rc=0
run_script stop_cluster.sh || rc=$?
[[ $rc -eq 0 ]] || fail "stop_cluster.sh failed (exit $rc), see above" "$SH sim down --name $NAME"

cat <<EOF

== keep playing (the emulated cluster '$NAME' is still up)
  $SH sim status --name $NAME
  $SH sim exec --name $NAME spark1 -- bash                 # a shell on the head
  $SH sim exec --name $NAME spark1 -- env SPARK_CONFIG=$PROFILE $ROOT/start_cluster.sh --nodes 2
  $SH sim exec --name $NAME spark1 -- env SPARK_CONFIG=$PROFILE LAUNCH_MODE=ray $ROOT/start_cluster.sh --nodes 2 --replace
  $SH sim exec --name $NAME spark1 -- env SPARK_CONFIG=$PROFILE $SH logs --node 1 --follow
  $SH sim fault --name $NAME spark2 link-down twin1        # then: ... spark2 clear
  $SH sim down --name $NAME                                # remove everything
EOF
