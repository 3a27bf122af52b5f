"""benchmark_all.sh's sweep end to end with a real engine: two models x two variants, killed and resumed.

The cluster scripts are stand-ins (tests/fixtures/sweep/) that serve the real tiny engine (xllamacpp +
SmolLM2, aliased as the model) on loopback; everything else is the real sweep: lock, switch per model x
variant with the variant's keys in the environment, profile runs, state file, SIGTERM, --resume, the
configured state put back, matrix.md and report.html.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.engine, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
STANDINS = ROOT / "tests" / "fixtures" / "sweep"


@pytest.fixture
def standin_home(tmp_path, isolated_env, monkeypatch):
    pytest.importorskip("xllamacpp", reason="the engine extra is not installed (make venv)")
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(ROOT / "config.env", home / "config.env")
    (home / ".venv").symlink_to(Path(sys.executable).parents[1])  # benchmark_all.sh runs this venv's CLI
    for script in ("switch_model.sh", "start_cluster.sh", "stop_cluster.sh", "common.sh"):
        shutil.copy(STANDINS / script, home / script)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    local = Path(os.environ["SPARK_CONFIG"])
    local.write_text("# user settings\nMODEL=test/original\n")
    monkeypatch.setenv("SPARK_HOME", str(home))
    monkeypatch.setenv("VLLM_PORT", str(port))
    monkeypatch.setenv("BENCH_PY", sys.executable)
    monkeypatch.setenv("BENCH_ENGINE", str(ROOT / "tests" / "bench_engine.py"))
    yield home, local
    subprocess.run([str(home / "stop_cluster.sh")], timeout=30)  # never leave an engine behind


def sweep_cmd(*extra):
    return [str(ROOT / "benchmark_all.sh"), "--yes", "--name", "t", *extra]


def test_two_models_two_variants_killed_resumed_rendered(standin_home):
    home, local = standin_home
    original = local.read_text()
    results = Path(os.environ["RESULTS_DIR"]) / "sweeps" / "t"
    state_file = results / "sweep-state.json"
    args = sweep_cmd("--models", "test/tiny-a,test/tiny-b", "--variants", "tier1-off,tier1-on",
                     "--profile", "smoke")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:  # kill it once two cells are done
        if state_file.exists():
            cells = json.loads(state_file.read_text())["cells"]
            if sum(c["status"] == "SUCCESS" for c in cells.values()) >= 2:
                break
        time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)  # the script execs the CLI, so the signal reaches it
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert "interrupted by SIGTERM" in err and "--resume --name t" in err
    assert local.read_text() == original  # config.local.env put back
    steps = (Path(os.environ["SPARK_STATE_DIR"]) / "standin-steps.log").read_text().splitlines()
    assert steps[-1] == "stop"  # nothing was serving before the sweep: it is stopped again
    assert "switch test/tiny-a ENABLE_PREFIX_CACHING=false lock=held" in steps[0]

    r = subprocess.run(sweep_cmd("--resume"), capture_output=True, text=True, timeout=300,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    state = json.loads(state_file.read_text())
    assert [c["status"] for c in state["cells"].values()] == ["SUCCESS"] * 4
    assert "skipped (--resume)" in (results / "sweep.log").read_text()
    assert local.read_text() == original
    matrix = (results / "matrix.md").read_text()
    for row in ("test/tiny-a [tier1-off]", "test/tiny-a [tier1-on]", "test/tiny-b [tier1-off]",
                "test/tiny-b [tier1-on]"):
        assert row in matrix
    html = (results / "report.html").read_text()
    assert html.count("<svg") == 3 and "<script" not in html
    doc = json.loads(next((results / "results").rglob("*concurrency2*.json")).read_text())
    assert doc["target"]["variant"] in ("tier1-off", "tier1-on") and doc["target"]["model"].startswith("test/tiny")
    assert doc["target"]["engine_options"]["enable_prefix_caching"] in ("false", "true")


def test_a_failing_switch_is_start_failed_and_exits_1(standin_home):
    home, _ = standin_home
    (home / "switch_model.sh").write_text("#!/usr/bin/env bash\necho 'engine exited: CUDA OOM' >&2\nexit 1\n")
    r = subprocess.run(sweep_cmd("--models", "test/tiny-a", "--profile", "smoke"),
                       capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert r.returncode == 1
    assert "START_FAILED" in r.stdout and "CUDA OOM" in r.stdout
