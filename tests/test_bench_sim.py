"""benchmark_all.sh on the emulated cluster, nothing replaced: the in-process switch, start and stop on the
sim's head, two presets x two variants, killed mid-sweep and resumed, matrix and HTML rendered, the
configuration untouched and the cluster left stopped (as it was)."""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from pathlib import Path

import pytest

from sparkhelpers.sim.cluster import exec_argv

pytestmark = pytest.mark.sim
ROOT = Path(__file__).resolve().parents[1]
PRESETS = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct", "qwen3-0.6b": "Qwen/Qwen3-0.6B"}
SWEEP_DIR = "sweeps/simt"


def on_head(cluster, snippet: str, timeout: float = 120):
    return cluster.exec("spark1", snippet, timeout=timeout)


def test_sweep_two_presets_two_variants_killed_resumed(make_sim):
    cluster = make_sim(nodes=1, image_on="all")
    for repo in PRESETS.values():
        cluster.seed_model("spark1", repo)
    profile = cluster.profile
    original = Path(profile).read_text()
    get = f"env SPARK_CONFIG={profile} {ROOT}/.venv/bin/sparkhelpers config get"
    sweep_dir = f"{on_head(cluster, f'{get} RESULTS_DIR').stdout.strip()}/{SWEEP_DIR}"
    lock = f"{on_head(cluster, f'{get} SPARK_STATE_DIR').stdout.strip()}/cluster.lock"
    sweep = [f"{ROOT}/benchmark_all.sh", "--yes", "--name", "simt"]
    args = [*sweep, "--models", ",".join(PRESETS), "--variants", "tier1-off,tier1-on", "--profile", "smoke"]
    node = cluster.node("spark1")
    proc = subprocess.Popen(exec_argv(node, ["env", f"SPARK_CONFIG={profile}", *args]), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)

    def state() -> dict:
        r = on_head(cluster, f"cat {sweep_dir}/sweep-state.json 2>/dev/null || echo '{{}}'")
        return json.loads(r.stdout or "{}").get("cells", {})

    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and sum(c["status"] == "SUCCESS" for c in state().values()) < 2:
        time.sleep(1)
    # SIGTERM to the sweep itself (benchmark_all.sh exec'd the CLI; the lock file names its pid)
    holder = on_head(cluster, f"cat {lock}").stdout
    assert "(benchmark_all.sh)" in holder, holder
    on_head(cluster, f"kill -TERM {holder.split()[1]}").check("signalling the sweep")
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 1, err
    assert "interrupted by SIGTERM" in err
    assert Path(profile).read_text() == original  # a sweep never writes the config
    r = on_head(cluster, "docker ps --format '{{.Names}}'")
    assert "sparkhelpers-" not in r.stdout  # nothing served before the sweep: stopped again

    r = on_head(cluster, f"env SPARK_CONFIG={profile} {shlex.join([*sweep, '--resume'])}", timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    cells = state()
    assert len(cells) == 4 and {c["status"] for c in cells.values()} == {"SUCCESS"}
    assert Path(profile).read_text() == original
    matrix = on_head(cluster, f"cat {sweep_dir}/matrix.md").stdout
    for repo in PRESETS.values():
        for variant in ("tier1-off", "tier1-on"):
            assert f"{repo} [{variant}]" in matrix
    html = on_head(cluster, f"cat {sweep_dir}/report.html").stdout
    assert html.count("<svg") == 3
    log = on_head(cluster, f"cat {sweep_dir}/sweep.log").stdout
    assert "skipped (--resume)" in log and "restoring the configured model" in log


def test_recipe_sweep_two_recipes_real_results_ids_differ_configured_model_served_again(make_sim):
    """benchmark_all.sh --recipes on the emulated cluster, nothing replaced: the configured model serves
    before; two recipes of one model (one by name on RECIPE_PATH, one by file) that differ in one engine
    argument are started in turn, each benchmarked; every result carries the id of the recipe that served
    it (the containers' label says the same); then the configured model serves again, config untouched."""
    cluster = make_sim(nodes=1, image_on="all")
    cluster.seed_model("spark1", PRESETS["qwen3-0.6b"])
    profile = cluster.profile
    base = (f"recipe: 1\nmodel: {PRESETS['qwen3-0.6b']}\nimage: {cluster.image}\nnodes: 1\n"
            "engine_args:\n  max_model_len: 2048\n  max_num_seqs: ")
    on_head(cluster, "mkdir -p /root/shelf").check("recipe shelf")
    for path, name, seqs in (("/root/shelf/sweep-a.yaml", "sweep-a", 2), ("/root/sweep-b.yaml", "sweep-b", 4)):
        cluster.exec("spark1", f"cat >{path}", input=f"{base}{seqs}\nname: {name}\n").check("writing a recipe")
    env = ["env", f"SPARK_CONFIG={profile}", "RECIPE_PATH=/root/shelf", "MODEL=qwen3-0.6b", "MAX_MODEL_LEN=2048"]
    get = f"env SPARK_CONFIG={profile} {ROOT}/.venv/bin/sparkhelpers config get"
    sweep_dir = f"{on_head(cluster, f'{get} RESULTS_DIR').stdout.strip()}/sweeps/recipes"
    original = Path(profile).read_text()

    def labels() -> str:
        r = on_head(cluster, "docker ps --filter label=sparkhelpers.cluster --format "
                             "'{{.Label \"sparkhelpers.recipe\"}} {{.Label \"sparkhelpers.config\"}}'")
        assert r.ok, r.stderr
        return r.stdout.strip()

    r = on_head(cluster, shlex.join([*env, f"{ROOT}/start_cluster.sh"]), timeout=400)
    assert r.returncode == 0, r.stderr[-2000:]
    before = labels()
    assert before.startswith("qwen3-0.6b@vllm@") and len(before.split()) == 2, before  # recipe id, config hash
    dry = on_head(cluster, shlex.join([*env, f"{ROOT}/benchmark_all.sh", "--dry-run", "--recipes",
                                       "sweep-a,/root/sweep-b.yaml", "--profile", "smoke"]))
    assert dry.returncode == 0, dry.stderr
    planned_ids = [ln.split(" id ", 1)[1].split()[0] for ln in dry.stdout.splitlines() if ln.startswith("recipe ")]
    assert len(planned_ids) == 2 and planned_ids[0] != planned_ids[1] and before.split()[0] not in planned_ids
    assert labels() == before, "the dry run changed nothing"
    r = on_head(cluster, shlex.join([*env, f"{ROOT}/benchmark_all.sh", "--yes", "--name", "recipes", "--recipes",
                                     "sweep-a,/root/sweep-b.yaml", "--profile", "smoke"]), timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    state = json.loads(on_head(cluster, f"cat {sweep_dir}/sweep-state.json").stdout)
    assert [c["recipe_id"] for c in state["plan"]] == planned_ids
    assert {c["status"] for c in state["cells"].values()} == {"SUCCESS"} and state["pre"]["restored"] is True
    read = ("import glob, json, sys; print(json.dumps([json.load(open(p)) for p in "
            "glob.glob(sys.argv[1] + '/results/**/*.json', recursive=True)]))")
    docs = json.loads(on_head(cluster, shlex.join([f"{ROOT}/.venv/bin/python", "-c", read, sweep_dir])).stdout)
    assert len(docs) >= 2
    by_variant = {}
    for d in docs:
        by_variant.setdefault(d["target"]["variant"], set()).add(d["target"]["recipe_id"])
        assert d["completed"] > 0 and d["failed"] == 0 and d["output_throughput"] > 0
    assert by_variant == {"recipe:sweep-a": {planned_ids[0]}, "recipe:sweep-b": {planned_ids[1]}}
    log = on_head(cluster, f"cat {sweep_dir}/sweep.log").stdout
    assert f"switching to recipe sweep-a ({planned_ids[0]})" in log
    assert labels() == before, "the configured model serves again, with the same configuration"
    assert Path(profile).read_text() == original
    on_head(cluster, shlex.join([*env, f"{ROOT}/stop_cluster.sh"])).check("stopping")
