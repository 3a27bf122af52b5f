"""The sim engine's stand-ins run on the host too (no root): flag parsing, cache lookups, the Ray launcher.

The full behaviour (containers, fabric, real chats) is tested on the emulated cluster in test_sim.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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


RAY_STATUS = Path(__file__).resolve().parent / "fixtures" / "ray"  # captured from the real Ray 2.49.2 in the sim


@pytest.mark.parametrize("env, argv, declared", [
    ({"NVIDIA_VISIBLE_DEVICES": "all"}, ["start", "--head"], '{"GPU": 1}'),  # --gpus all: one GB10
    ({"NVIDIA_VISIBLE_DEVICES": "0,1"}, ["start", "--address", "h:6385"], '{"GPU": 2}'),
    ({}, ["start", "--head"], None),  # no --gpus: NVML would see nothing, Ray shows 0 GPUs
    ({"NVIDIA_VISIBLE_DEVICES": "void"}, ["start", "--head"], None),
    ({"NVIDIA_VISIBLE_DEVICES": "all"}, ["start", "--head", "--num-gpus", "0"], None),  # the caller decides
    ({"NVIDIA_VISIBLE_DEVICES": "all"}, ["start", "--head", "--num-gpus=3"], None),
    ({"NVIDIA_VISIBLE_DEVICES": "all", "RAY_OVERRIDE_RESOURCES": '{"GPU": 4}'}, ["start"], '{"GPU": 4}'),
    ({"NVIDIA_VISIBLE_DEVICES": "all"}, ["status"], None),
])
def test_ray_launcher_declares_only_the_gpu_nvml_would_see(env, argv, declared):
    sys.path.insert(0, str(ENGINE))
    try:
        from sparksim_engine.ray_cli import start_env
    finally:
        sys.path.remove(str(ENGINE))
    assert start_env(argv, env).get("RAY_OVERRIDE_RESOURCES") == declared


def test_ray_status_parser_reads_the_real_ray_text():
    from sparkhelpers.cluster.nodes import parse_ray_status

    text = (RAY_STATUS / "status-2.49.2-two-nodes.txt").read_text()
    assert "Total Usage:" in text and "Total Demands:" in text  # Ray 2.49's own words, not the old stand-in's
    assert parse_ray_status(text) == (2, 2)
    one = (RAY_STATUS / "status-2.49.2-node-lost.txt").read_text()  # after the worker was killed and dropped
    assert parse_ray_status(one) == (1, 1)
    assert parse_ray_status("") == (0, 0)
