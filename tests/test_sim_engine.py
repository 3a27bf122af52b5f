"""The sim engine's stand-ins run on the host too (no root): flag parsing, cache lookups, Ray on loopback.

The full behaviour (containers, fabric, real chats) is tested on the emulated cluster in test_sim.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parents[1] / "sparkhelpers" / "sim" / "engine"


def engine(module: str, *args: str, env: dict | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": str(ENGINE), **(env or {})}
    return subprocess.run([sys.executable, "-m", f"sparksim_engine.{module}", *args], capture_output=True,
                          text=True, env=full, timeout=timeout)


@pytest.mark.parametrize("flags_file", sorted((ENGINE / "flags").glob("vllm-*.json")), ids=lambda p: p.stem)
def test_vllm_flag_file_is_consistent(flags_file):
    spec = json.loads(flags_file.read_text())
    assert flags_file.stem == f"vllm-{spec['vllm_version']}"
    kinds = {"str", "int", "float", "json", "size", "choice", "list", "store_true", "bool_optional"}
    assert spec["vllm_version"]
    for flag, meta in spec["flags"].items():
        assert flag.startswith("-") and meta["type"] in kinds, flag
        assert meta["type"] != "choice" or meta["choices"], flag
    for needed in ("--tensor-parallel-size", "--distributed-executor-backend", "--nnodes", "--node-rank",
                   "--master-addr", "--master-port", "--headless", "--served-model-name", "--gpu-memory-utilization",
                   "--max-model-len", "--enable-prefix-caching", "--kv-cache-dtype", "--load-format"):
        assert needed in spec["flags"], needed


@pytest.mark.parametrize("args, message", [
    (["serve", "m", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["serve", "m", "-tp", "two"], "invalid int value"),
    (["serve", "m", "--kv-cache-dtype", "int3"], "invalid choice"),
    (["serve", "m", "--max-model-len", "lots"], "invalid size value"),
    (["serve", "m", "--speculative-config", "{bad"], "invalid JSON"),
])
def test_vllm_rejects_bad_flags_like_argparse(args, message):
    r = engine("vllm_cli", *args)
    assert r.returncode == 2 and message in r.stderr


def test_vllm_needs_the_model_in_the_cache_when_offline(tmp_path):
    r = engine("vllm_cli", "serve", "org/absent", "--enable-prefix-caching", "--max-model-len", "32k",
               env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)})
    assert r.returncode == 1 and "huggingface_hub.errors.LocalEntryNotFoundError: Cannot find an appropriate " \
        "cached snapshot folder" in r.stderr  # real vLLM's error, measured offline
    assert "vLLM API server version" in r.stderr


def test_vllm_single_node_refuses_tp2_without_ray(tmp_path):
    snap = tmp_path / "hub" / "models--org--m" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    r = engine("vllm_cli", "serve", "org/m", "-tp", "2",
               env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path), "SPARKSIM_RAY_TMP": str(tmp_path / "ray")})
    assert r.returncode == 1 and "exceeds the total number of available GPUs (1)" in r.stderr


def test_llama_server_flags_and_missing_model():
    r = engine("llama_server", "-m", "/nonexistent.gguf", "--bogus")
    assert r.returncode == 1 and r.stderr.startswith("error:")
    r = engine("llama_server", "-m", "/nonexistent.gguf", "--port", "8099")
    assert r.returncode == 1 and "error loading model" in r.stderr


def test_ray_daemons_join_status_and_stop_on_loopback(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"SPARKSIM_RAY_TMP": str(tmp_path), "SPARKSIM_RAY_CONNECT_TIMEOUT_S": "1"}
    try:
        r = engine("ray_cli", "start", "--head", "--port", str(port), "--node-ip-address", "127.0.0.1", env=env)
        assert r.returncode == 0 and "Ray runtime started." in r.stdout
        r = engine("ray_cli", "start", "--address", f"127.0.0.1:{port + 1 if port < 65535 else 1}",
                   "--node-ip-address", "127.0.0.1", env=env)
        assert r.returncode == 1 and "Unable to connect to GCS" in r.stderr
        r = engine("ray_cli", "start", "--address", f"127.0.0.1:{port}", "--node-ip-address", "127.0.0.1",
                   "--num-gpus", "1", env=env)
        assert r.returncode == 0, r.stderr
        for _ in range(50):
            status = engine("ray_cli", "status", env=env).stdout
            if "/2.0 GPU" in status:
                break
            time.sleep(0.1)
        assert status.count(" 1 node_") == 2 and " 0.0/2.0 GPU" in status and "Autoscaler status" in status
        for section in ("Total Usage:", "Total Constraints:", "Total Demands:"):  # Ray 2.49's text
            assert section in status
    finally:
        r = engine("ray_cli", "stop", env=env)
    assert "Stopped all 2 Ray processes." in r.stdout
    r = engine("ray_cli", "status", env=env)
    assert r.returncode == 1 and "Could not find any running Ray instance" in r.stderr


def test_ray_drops_a_dead_node_late_like_real_ray(tmp_path):
    """Real Ray drops a killed node from Active after ~16 s and its GPU from the totals after ~26 s (here
    scaled down to 2 s and 4 s); the node's closed connection alone does not drop it."""
    import signal
    import socket

    from sparkhelpers.cluster.nodes import parse_ray_status

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"SPARKSIM_RAY_TMP": str(tmp_path), "SPARKSIM_RAY_DEAD_AFTER_S": "2", "SPARKSIM_RAY_RESOURCES_AFTER_S": "4"}
    worker_tmp = tmp_path / "w"
    try:
        assert engine("ray_cli", "start", "--head", "--port", str(port), "--node-ip-address", "127.0.0.1",
                      "--num-gpus", "1", env=env).returncode == 0
        assert engine("ray_cli", "start", "--address", f"127.0.0.1:{port}", "--node-ip-address", "127.0.0.1",
                      "--num-gpus", "1", env={**env, "SPARKSIM_RAY_TMP": str(worker_tmp)}).returncode == 0
        status = ""
        for _ in range(50):
            status = engine("ray_cli", "status", env=env).stdout
            if parse_ray_status(status) == (2, 2):
                break
            time.sleep(0.1)
        assert parse_ray_status(status) == (2, 2)
        raylet = next((worker_tmp / "sparksim").glob("raylet-*.pid"))
        os.kill(int(raylet.read_text()), signal.SIGKILL)
        killed = time.monotonic()
        seen = {}
        while time.monotonic() - killed < 15 and len(seen) < 2:
            nodes, gpus = parse_ray_status(engine("ray_cli", "status", env=env).stdout)
            if nodes == 1:
                seen.setdefault("inactive", time.monotonic() - killed)
            if gpus == 1:
                seen.setdefault("gpu", time.monotonic() - killed)
            time.sleep(0.2)
        assert 1.5 < seen["inactive"] < 5 and seen["gpu"] >= 3.5 and seen["gpu"] >= seen["inactive"], seen
    finally:
        engine("ray_cli", "stop", env=env)
        engine("ray_cli", "stop", env={**env, "SPARKSIM_RAY_TMP": str(worker_tmp)})
