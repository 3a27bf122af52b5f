"""The sweep end to end with a real engine: two models x two variants, SIGTERM and --resume, kill -9 and
--resume (or the next sweep) restoring the pre-sweep state, a failing start.

The flow is the product's (sweep_steps.execute: lock, switch with the variant as config overrides, state,
restore, reports); only the cluster's start and stop are replaced, by tests/fixtures/sweep/engine_sweep.py,
which serves the real tiny engine (xllamacpp + SmolLM2, aliased as the model) on loopback.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.engine, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "tests" / "fixtures" / "sweep" / "engine_sweep.py"


@pytest.fixture
def engine_env(isolated_env, monkeypatch):
    import importlib.util

    if importlib.util.find_spec("xllamacpp") is None:
        pytest.skip("the engine extra is not installed (make venv)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    local = Path(os.environ["SPARK_CONFIG"])
    local.write_text("# user settings\nMODEL=test/original\n")
    monkeypatch.setenv("VLLM_PORT", str(port))
    monkeypatch.setenv("BENCH_PY", sys.executable)
    monkeypatch.setenv("BENCH_ENGINE", str(ROOT / "tests" / "bench_engine.py"))
    yield port, local
    pid = Path(os.environ["SPARK_STATE_DIR"], "standin-engine.pid")
    if pid.exists():  # never leave an engine behind
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid.read_text()), signal.SIGTERM)


def driver(name: str, *, resume: bool = False, **opts) -> list[str]:
    return [sys.executable, str(DRIVER), json.dumps({"name": name, "resume": resume, **opts})]


def results(name: str) -> Path:
    return Path(os.environ["RESULTS_DIR"]) / "sweeps" / name


def wait_cells(name: str, done: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    state_file = results(name) / "sweep-state.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if state_file.exists():
            cells = json.loads(state_file.read_text())["cells"]
            if sum(c["status"] == "SUCCESS" for c in cells.values()) >= done:
                return
        time.sleep(0.3)
    raise AssertionError(f"{done} cell(s) did not finish: {proc.poll()}")


def steps_log() -> list[str]:
    return (Path(os.environ["SPARK_STATE_DIR"]) / "standin-steps.log").read_text().splitlines()


def served(port: int) -> list[str]:
    """The served model ids; [] while nothing listens (a kill -9 may land between a stop and a start)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5) as r:
            return [m["id"] for m in json.load(r)["data"]]
    except ConnectionRefusedError:
        return []
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ConnectionRefusedError):
            return []
        raise


MATRIX = dict(models=["test/tiny-a", "test/tiny-b"], variants=["tier1-off", "tier1-on"], profiles=["smoke"])


def test_two_models_two_variants_sigterm_resumed_rendered(engine_env):
    _, local = engine_env
    original = local.read_text()
    proc = subprocess.Popen(driver("t", **MATRIX), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_cells("t", 2, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert "interrupted by SIGTERM" in err and "--resume --name t" in err
    assert local.read_text() == original  # config.local.env is never written during a sweep
    steps = steps_log()
    assert steps[-1] == "stop"  # nothing was serving before the sweep: it is stopped again
    assert steps[0] == "stop"  # the switch stops, then starts with the variant's keys as config overrides
    assert "start test/tiny-a ENABLE_PREFIX_CACHING=false lock=held" in steps[1]

    r = subprocess.run(driver("t", resume=True), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    state = json.loads((results("t") / "sweep-state.json").read_text())
    assert [c["status"] for c in state["cells"].values()] == ["SUCCESS"] * 4
    assert state["pre"]["restored"] is True and state["pre"]["serving"] is False
    assert "skipped (--resume)" in (results("t") / "sweep.log").read_text()
    assert local.read_text() == original
    matrix = (results("t") / "matrix.md").read_text()
    for row in ("test/tiny-a [tier1-off]", "test/tiny-a [tier1-on]", "test/tiny-b [tier1-off]",
                "test/tiny-b [tier1-on]"):
        assert row in matrix
    html = (results("t") / "report.html").read_text()
    assert html.count("<svg") == 3 and "<script" not in html
    doc = json.loads(next((results("t") / "results").rglob("*concurrency2*.json")).read_text())
    assert doc["target"]["variant"] in ("tier1-off", "tier1-on") and doc["target"]["model"].startswith("test/tiny")
    assert doc["target"]["engine_options"]["enable_prefix_caching"] in ("false", "true")


@pytest.mark.parametrize("then", ["resume", "next sweep"])
def test_kill_9_then_the_pre_sweep_state_is_restored(engine_env, then):
    port, local = engine_env
    sys.path.insert(0, str(DRIVER.parent))
    import engine_sweep

    engine_sweep.engine_start("test/original", str(port))  # the configured model is serving before the sweep
    original = local.read_bytes()
    proc = subprocess.Popen(driver("k", models=["test/tiny-a", "test/tiny-b"], profiles=["smoke"]),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_cells("k", 1, proc)
    state = json.loads((results("k") / "sweep-state.json").read_text())
    assert state["pre"]["serving"] is True and state["pre"]["served"] == ["test/original"]
    assert base64.b64decode(state["pre"]["config_b64"]) == original and state["pre"]["restored"] is False
    proc.kill()  # kill -9: no handler runs, the swept model keeps serving
    proc.communicate(timeout=30)
    assert served(port) != ["test/original"]

    args = driver("k", resume=True) if then == "resume" else driver("n", models=["test/tiny-b"], profiles=["smoke"])
    r = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert served(port) == ["test/original"], "the model served before the killed sweep is served again"
    assert local.read_bytes() == original
    assert json.loads((results("k") / "sweep-state.json").read_text())["pre"]["restored"] is True
    log = (results("k" if then == "resume" else "n") / "sweep.log").read_text()
    assert "taking over the cluster lock from pid" in r.stderr  # the killed sweep's record
    if then == "next sweep":
        assert "sweep k ended before it put the cluster back" in log
    assert "start test/original" in steps_log()[-1] and "replace=True" in steps_log()[-1]


def test_a_failing_start_is_start_failed_and_exits_1(engine_env, monkeypatch):
    monkeypatch.setenv("STANDIN_FAIL_START", "engine exited: CUDA OOM")
    r = subprocess.run(driver("f", models=["test/tiny-a"], profiles=["smoke"]), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1
    assert "START_FAILED" in r.stdout and "CUDA OOM" in r.stdout


def recipe_shelf(tmp_path: Path, local: Path) -> bytes:
    """tiny-a on RECIPE_PATH, tiny-b as a file (one served value apart), and a configured RECIPE (orig)."""
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    head = "recipe: 1\nmodel: Qwen/Qwen3-0.6B\nimage: vllm/vllm-openai:v0.19.0\nnodes: 1\n"
    (shelf / "tiny-a.yaml").write_text(head + "name: tiny-a\nengine_args:\n  max_num_seqs: 2\n")
    (tmp_path / "tiny-b.yaml").write_text(head + "name: tiny-b\nengine_args:\n  max_num_seqs: 4\n")
    (tmp_path / "orig.yaml").write_text(head + "name: orig\nserved_name: orig-recipe\n")
    local.write_text(f"# user settings\nMODEL=test/original\nRECIPE={tmp_path / 'orig.yaml'}\n"
                     f"RECIPE_PATH={shelf}\n")
    return local.read_bytes()


def test_recipe_sweep_results_carry_each_recipe_id_and_the_configured_recipe_is_served_again(engine_env, tmp_path):
    """Two recipes (one on RECIPE_PATH, one a file) through the real switch, bench and restore; the cluster
    served a configured RECIPE before the sweep, and serves it again after."""
    port, local = engine_env
    sys.path.insert(0, str(DRIVER.parent))
    import engine_sweep

    original = recipe_shelf(tmp_path, local)
    engine_sweep.engine_start("orig-recipe", str(port))
    r = subprocess.run(driver("rs", recipes=["tiny-a", str(tmp_path / "tiny-b.yaml")], profiles=["smoke"]),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    state = json.loads((results("rs") / "sweep-state.json").read_text())
    planned = {c["variant"]: c["recipe_id"] for c in state["plan"]}
    assert set(planned) == {"recipe:tiny-a", "recipe:tiny-b"} and len(set(planned.values())) == 2
    assert [c["status"] for c in state["cells"].values()] == ["SUCCESS", "SUCCESS"]
    docs = [json.loads(p.read_text()) for p in (results("rs") / "results").rglob("*.json")
            if not p.name.endswith(".records.json")]
    assert docs and {d["target"]["variant"] for d in docs} == set(planned)
    for d in docs:
        assert d["target"]["recipe_id"] == planned[d["target"]["variant"]], d["target"]
        assert d["completed"] > 0 and d["failed"] == 0
    matrix = (results("rs") / "matrix.md").read_text()
    assert "Qwen/Qwen3-0.6B [recipe:tiny-a]" in matrix and "Qwen/Qwen3-0.6B [recipe:tiny-b]" in matrix
    assert served(port) == ["orig-recipe"], "the configured recipe serves again"
    assert local.read_bytes() == original and state["pre"]["restored"] is True
    starts = [s for s in steps_log() if s.startswith("start ")]
    assert [s.rsplit("recipe=", 1)[-1] for s in starts] == ["tiny-a", "tiny-b", "orig"]
    assert "replace=True" in starts[-1]


def test_recipe_sweep_killed_9_then_resumed_restores_the_configured_recipe(engine_env, tmp_path):
    port, local = engine_env
    sys.path.insert(0, str(DRIVER.parent))
    import engine_sweep

    original = recipe_shelf(tmp_path, local)
    engine_sweep.engine_start("orig-recipe", str(port))
    proc = subprocess.Popen(driver("rk", recipes=["tiny-a", str(tmp_path / "tiny-b.yaml")], profiles=["smoke"]),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_cells("rk", 1, proc)
    proc.kill()  # kill -9: tiny-a (or tiny-b) keeps serving, nothing is put back
    proc.communicate(timeout=30)
    assert served(port) != ["orig-recipe"]
    r = subprocess.run(driver("rk", resume=True), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    state = json.loads((results("rk") / "sweep-state.json").read_text())
    assert [c["status"] for c in state["cells"].values()] == ["SUCCESS", "SUCCESS"] and state["pre"]["restored"]
    planned = {c["variant"]: c["recipe_id"] for c in state["plan"]}
    for p in (results("rk") / "results").rglob("*.json"):
        target = json.loads(p.read_text())["target"]
        assert target["recipe_id"] == planned[target["variant"]]
    assert served(port) == ["orig-recipe"] and local.read_bytes() == original
    assert "recipe=orig" in steps_log()[-1] and "replace=True" in steps_log()[-1]
