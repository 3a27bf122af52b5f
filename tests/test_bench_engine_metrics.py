"""Engine metrics: vLLM's /metrics parsed with prometheus_client's parser (a captured real-shaped text), the
per-run deltas, and the emulated engine serving them from its real llama.cpp backend (engine marker)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import test_bench_quirks

from sparkhelpers.bench import engine_metrics as em
from sparkhelpers.bench.run import RunOptions, execute

ROOT = Path(__file__).resolve().parents[1]
CAPTURED = (Path(__file__).parent / "fixtures" / "metrics" / "vllm-0.11-metrics.txt").read_text()
quirks = test_bench_quirks.quirks  # a real server without /metrics


def test_captured_vllm_text_parses_into_vllm_names():
    snap = em.parse(CAPTURED)
    assert snap.get(em.RUNNING) == 14 and snap.get(em.WAITING) == 3 and snap.kv_usage() == pytest.approx(0.4215)
    assert snap.get(em.PREEMPTIONS) == 7 and snap.get(em.PREFIX_QUERIES) == 1048576
    assert snap.get(em.PREFIX_HITS) == 655360 and snap.get("vllm:request_success") == 2048  # label sets summed
    assert snap.get(em.SPEC_ACCEPTED) == 84000 and snap.histograms[em.TTFT] == (pytest.approx(307.2), 2048)


def test_deltas_of_a_run_from_two_scrapes():
    before = em.parse(CAPTURED)
    later = (CAPTURED.replace("} 655360.0", "} 656360.0").replace("} 1.048576e+06", "} 1.050576e+06")
             .replace("num_preemptions_total{engine=\"0\",model_name=\"Qwen/Qwen3-30B-A3B\"} 7.0",
                      "num_preemptions_total{engine=\"0\",model_name=\"Qwen/Qwen3-30B-A3B\"} 9.0")
             .replace("_count{engine=\"0\",model_name=\"Qwen/Qwen3-30B-A3B\"} 2048.0",
                      "_count{engine=\"0\",model_name=\"Qwen/Qwen3-30B-A3B\"} 2058.0")
             .replace("_sum{engine=\"0\",model_name=\"Qwen/Qwen3-30B-A3B\"} 307.2",
                      "_sum{engine=\"0\",model_name=\"Qwen/Qwen3-30B-A3B\"} 308.2"))
    out = em.summarize(before, em.parse(later), {em.KV_USAGE: 0.61, em.WAITING: 5.0, em.RUNNING: 16.0})
    assert out["prefix_cache_queries"] == 2000 and out["prefix_cache_hits"] == 1000
    assert out["prefix_cache_hit_rate"] == 0.5 and out["preemptions"] == 2
    assert out["peak_kv_cache_usage"] == 0.61 and out["peak_requests_waiting"] == 5
    assert out["server_mean_ttft_ms"] == pytest.approx(100.0)  # 1 s over 10 new requests
    assert "spec_decode_acceptance_rate" not in out  # no new drafts in this run
    restarted = em.summarize(em.parse(later), before, {})
    assert restarted["preemptions"] == 0  # counters reset by a restart never give a negative delta


def test_not_prometheus_text_is_a_value_error():
    with pytest.raises(ValueError):
        em.parse("<html>not metrics</html>\n{")


def test_a_server_without_metrics_still_benchmarks(quirks):
    doc, _ = execute(RunOptions(base_url=f"http://127.0.0.1:{quirks.port}", model="normal", backend="openai-chat",
                                num_prompts=2, random_input_len=4, random_output_len=3))
    assert doc["completed"] == 2 and doc["engine_metrics"]["available"] is False
    assert "/metrics: ValueError: HTTP 404" in doc["engine_metrics"]["reason"]


@pytest.fixture(scope="module")
def sim_engine():
    """The emulated engine's proxy over its real llama.cpp backend (SmolLM2, 2 slots), on the host."""
    pytest.importorskip("xllamacpp")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "sparkhelpers" / "sim" / "engine")}
    sys.path.insert(0, str(ROOT / "tests"))
    from bench_engine import gguf_path

    proc = subprocess.Popen([sys.executable, "-m", "sparksim_engine.llama_server", "-m", gguf_path(), "--port",
                             str(port), "-np", "2", "-c", "2048", "-a", "smollm2"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + "/health", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    yield url
    proc.terminate()
    proc.wait(30)


def _run(url: str, **kw) -> dict:
    doc, _ = execute(RunOptions(base_url=url, model="smollm2", backend="openai", max_concurrency=1, seed=3, **kw))
    assert doc["failed"] == 0
    return doc["engine_metrics"]


@pytest.mark.engine
def test_emulated_engine_prefix_hits_well_above_zero_random_about_zero(sim_engine):
    snap = em.scrape(sim_engine)
    assert {em.RUNNING, em.WAITING, em.KV_USAGE, em.PREFIX_QUERIES, em.PREFIX_HITS, em.PREEMPTIONS} <= set(snap.values)
    rep = _run(sim_engine, dataset_name="prefix_repetition", num_prompts=6, prefix_repetition_prefix_len=48,
               prefix_repetition_suffix_len=6, prefix_repetition_num_prefixes=2, prefix_repetition_output_len=2)
    rnd = _run(sim_engine, dataset_name="random", num_prompts=4, random_input_len=54, random_output_len=2)
    assert rep["available"] and rep["prefix_cache_queries"] > 0
    assert rep["prefix_cache_hit_rate"] > 0.4, rep  # 4 of 6 prompts reuse a 48-token prefix of ~54
    assert rnd["prefix_cache_hit_rate"] < 0.1, rnd
    assert rep["preemptions"] == 0 and rep["peak_requests_running"] >= 1 and rep["server_mean_ttft_ms"] > 0
    assert rnd["prompt_tokens"] == rnd["prefix_cache_queries"] and rnd["generation_tokens"] == 8
