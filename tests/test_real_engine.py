"""The real-engine track: the product's own start_cluster.sh / stop_cluster.sh / status on the emulated
cluster, with real vLLM (CPU build, --enforce-eager) serving a tiny real Hugging Face model instead of the
stand-in. Single node, two nodes Ray-less (the product's exact --nnodes/--headless argv, ranks meeting over
gloo across the sim's fabric), and the loss of a rank.

Slow (each start is 0.5-2 min of real vLLM on 2 cores): marked sim + engine + real_vllm, so the fast
subset and `-m "not real_vllm"` skip it. Needs tools/real-vllm.sh (cached under /var/cache/sparkhelpers).
Run locally: tools/real-vllm.sh && .venv/bin/pytest -m real_vllm tests/test_real_engine.py
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from sparkhelpers.sim import realvllm

pytestmark = [pytest.mark.sim, pytest.mark.engine, pytest.mark.real_vllm, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
MODEL = "Qwen/Qwen3-0.6B"  # the product's default; its snapshot holds the tiny real model
START_TIMEOUT = "900"  # real vLLM on a loaded 2-core machine: 1-2 min per rank, more under load
BROKEN_WITHIN_S = 120  # status must call a cluster with a lost rank broken within this


def require_engine() -> None:
    if realvllm.engine_available():
        return
    why = f"the real vLLM engine is not installed ({realvllm.BUILD_HINT})"
    if os.environ.get("SPARK_REQUIRE_REAL_VLLM") == "1":
        pytest.fail(f"SPARK_REQUIRE_REAL_VLLM=1 but {why}")
    pytest.skip(why)


def env_for(cluster, **extra: str) -> list[str]:
    base = {"SPARK_CONFIG": cluster.profile, "MODEL": MODEL, "START_TIMEOUT": START_TIMEOUT, "STOP_TIMEOUT": "10",
            **realvllm.track_config(), **extra}
    return ["env", *[f"{k}={v}" for k, v in base.items()]]


def script(cluster, name: str, *args: str, timeout: float = 1200, **extra: str):
    return cluster.exec("spark1", [*env_for(cluster, **extra), str(ROOT / name), *args], timeout=timeout)


def cli(cluster, *args: str, timeout: float = 180):
    return cluster.exec("spark1", [*env_for(cluster), str(ROOT / ".venv/bin/sparkhelpers"), *args], timeout=timeout)


def chat(cluster) -> dict:
    code = f"""
import json, urllib.request
req = urllib.request.Request("http://127.0.0.1:8000/v1/chat/completions", method="POST",
    headers={{"Content-Type": "application/json"}},
    data=json.dumps({{"model": "{MODEL}", "max_tokens": 8,
                      "messages": [{{"role": "user", "content": "Hi"}}]}}).encode())
print(urllib.request.urlopen(req, timeout=300).read().decode())
"""
    r = cluster.exec("spark1", ["python3", "-c", code], timeout=320)
    assert r.ok, r.stderr
    return json.loads(r.stdout)


@pytest.fixture
def real_cluster(make_sim):
    require_engine()
    c = make_sim(nodes=2, image_on="all")
    for node in ("spark1", "spark2"):
        c.seed_model(node, MODEL, real=True)
    yield c
    script(c, "stop_cluster.sh", "--force", timeout=300)


def engine_log(cluster, rank: int) -> str:
    """A rank's engine log (logs live under the head's state dir, which every node sees at the same path)."""
    path = Path(cluster.dir) / "spark1" / "state" / "logs" / f"sim-{cluster.name}" / f"engine-{rank}.log"
    return path.read_text(errors="replace") if path.is_file() else f"(no {path})"


@pytest.fixture
def real_start(real_cluster):
    """``real_start(nodes)``: the product's start_cluster.sh on the real engine, asserted to have served with
    the real vLLM 0.32.0 on every rank (each rank's log tail in the failure message); (cluster, result, seconds)."""
    def start(nodes: int):  # noqa: ANN202
        c = real_cluster
        t0 = time.monotonic()
        r = script(c, "start_cluster.sh", "--nodes", str(nodes))
        took = time.monotonic() - t0
        logs = [engine_log(c, rank) for rank in range(nodes)]
        tails = "\n".join(f"--- engine-{rank}.log\n{log[-3000:]}" for rank, log in enumerate(logs))
        assert r.ok, f"{r.stdout}\n{r.stderr}\n{tails}"
        assert "version 0.32.0" in logs[0], f"the real vLLM served\n{tails}"
        assert not any("sparksim engine" in log for log in logs), "not the stand-in"
        return c, r, took
    return start


def healthy_status(c) -> dict:
    st = cli(c, "status", "--json")
    data = json.loads(st.stdout)
    assert st.ok and data["healthy"], st.stdout + st.stderr
    return data


def test_real_vllm_single_node_start_chat_stop(real_start):
    c, r, took = real_start(1)
    assert "is ready" in r.stdout and "HF_HUB_OFFLINE is True" in engine_log(c, 0)
    answer = chat(c)
    assert answer["usage"]["completion_tokens"] > 0 and answer["model"] == MODEL
    healthy_status(c)
    stop = script(c, "stop_cluster.sh", timeout=300)
    assert stop.ok, stop.stderr
    print(f"real vLLM single-node start: {took:.0f} s")


@pytest.mark.skipif(os.environ.get("SPARK_REAL_ENGINE_MULTINODE") == "0",
                    reason="SPARK_REAL_ENGINE_MULTINODE=0: the two-node real-engine case is switched off")
def test_real_vllm_two_nodes_native_chat_then_a_lost_rank_is_reported(real_start):
    c, r, took = real_start(2)
    assert "native, 2 node(s)" in r.stdout
    answer = chat(c)
    assert answer["usage"]["completion_tokens"] > 0
    healthy_status(c)

    # rank 1 dies (its container killed): real vLLM's /health stays 200; status must still say broken
    kill = c.exec("spark2", f"docker kill $(docker ps -q --filter label=sparkhelpers.cluster=sim-{c.name})")
    assert kill.ok, kill.stderr
    lost = time.monotonic()
    verdict = None
    while time.monotonic() - lost < BROKEN_WITHIN_S:
        st = cli(c, "status", "--json")
        data = json.loads(st.stdout)
        if not data["healthy"]:
            verdict = (st.returncode, data, time.monotonic() - lost)
            break
        time.sleep(3)
    assert verdict, f"status called the cluster healthy {BROKEN_WITHIN_S} s after rank 1 died"
    rc, data, after = verdict
    assert rc == 1 and data["problems"], data
    print(f"real vLLM 2-node start: {took:.0f} s; status reported the lost rank after {after:.1f} s: "
          f"{data['problems']}")
