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
