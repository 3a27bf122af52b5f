"""The emulated vLLM engine answers to the tuning levers (the tuner is tested against it).

Flag → lever mapping is checked pure; the effects are checked on the real llama.cpp backend on loopback by
behaviour that does not depend on how busy this shared machine is: sequences decoded side by side or one after
another, prompt tokens reused or recomputed, n-gram drafts made and accepted. Throughput figures under load are
for the benchmark (perf/sim_levers.py), not for a test."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ROOT / "sparkhelpers" / "sim" / "engine"
sys.path.insert(0, str(ENGINE))

from sparksim_engine import levers, vllm_cli  # noqa: E402


def parse(*flags: str) -> levers.Levers:
    spec = vllm_cli.load_flags("0.19.0")
    args = vllm_cli.build_parser(spec).parse_args(vllm_cli.normalize(["m", *flags], spec))
    return levers.from_vllm(args)


def test_defaults_are_four_slots_prefix_cache_on_chunked_prefill_on():
    lv = parse()
    assert (lv.slots, lv.batch_tokens, lv.ubatch_tokens, lv.prefix_cache, lv.chunked_prefill, lv.kv_fp8,
            lv.spec_ngram, lv.kv_tokens) == (4, 2048, 512, True, True, False, 0, 4096)


@pytest.mark.parametrize("flags, field, value", [
    (["--max-num-seqs", "8"], "slots", 8),
    (["--max-num-seqs", "999"], "slots", 16),  # SPARKSIM_MAX_SLOTS
    (["--max-num-batched-tokens", "64"], "batch_tokens", 64),
    (["--max-num-batched-tokens", "2k"], "batch_tokens", 2000),
    (["--max-num-batched-tokens", "2K"], "batch_tokens", 2048),
    (["--max-num-batched-tokens", "64"], "ubatch_tokens", 64),
    (["--no-enable-prefix-caching"], "prefix_cache", False),
    (["--enable-prefix-caching"], "prefix_cache", True),
    (["--no-enable-chunked-prefill"], "batch_tokens", 4096),  # the whole prompt in one step
    (["--no-enable-chunked-prefill", "--max-model-len", "8k"], "batch_tokens", 8000),
    (["--kv-cache-dtype", "fp8"], "kv_tokens", 8192),
    (["--kv-cache-dtype", "fp8_e5m2"], "kv_fp8", True),
    (["--kv-cache-dtype", "auto"], "kv_fp8", False),
    (["--speculative-config", '{"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 5}'],
     "spec_ngram", 3),
    (["--speculative-config", '{"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 5}'],
     "spec_lookup", 5),
    (["--speculative-config", '{"method": "eagle", "model": "x/y", "num_speculative_tokens": 3}'],
     "spec_ignored", "eagle"),
    (["--max-model-len", "16k"], "kv_tokens", 16000),  # the pool holds at least one full sequence
])
def test_each_flag_moves_its_lever(flags, field, value):
    assert getattr(parse(*flags), field) == value


@pytest.mark.parametrize("flags, message", [
    (["--max-num-seqs", "64", "--max-num-batched-tokens", "32"],
     "max_num_batched_tokens (32) must be greater than or equal to max_num_seqs (64)"),
    (["--no-enable-chunked-prefill", "--max-num-batched-tokens", "1024", "--max-model-len", "4096"],
     "max_num_batched_tokens (1024) is smaller than max_model_len (4096)"),
    (["--speculative-config", '{"method": "ngram"}'], "num_speculative_tokens must be provided"),
])
def test_combinations_vllm_refuses_are_refused(flags, message):
    with pytest.raises(levers.LeverError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse(*flags)


def test_the_engine_refuses_them_at_start_with_vllms_line(tmp_path):
    snap = tmp_path / "hub" / "models--org--m" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    env = {**os.environ, "PYTHONPATH": str(ENGINE), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    r = subprocess.run([sys.executable, "-m", "sparksim_engine.vllm_cli", "serve", "org/m", "--max-num-seqs", "64",
                        "--max-num-batched-tokens", "32"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 1 and "ValueError: max_num_batched_tokens (32) must be greater" in r.stderr
    assert "Starting to load model" not in r.stderr  # checked with the config, before any load


# --- the effects, on the real backend ----------------------------------------------------------------------


def _start(tmp_path: Path, name: str, *flags: str) -> tuple[str, subprocess.Popen]:
    pytest.importorskip("xllamacpp")
    sys.path.insert(0, str(ROOT / "tests"))
    from bench_engine import gguf_path

    hub = tmp_path / "hf"
    snap = hub / "hub" / "models--sim--smol" / "snapshots" / "x"
    snap.mkdir(parents=True, exist_ok=True)
    (snap / "config.json").write_text("{}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ENGINE), "HF_HUB_OFFLINE": "1", "HF_HOME": str(hub),
           "SPARKSIM_MODEL": gguf_path(), "SPARKSIM_RAY_TMP": str(tmp_path / "ray")}
    log = open(tmp_path / f"{name}.log", "w")  # noqa: SIM115 (kept open for the engine's life)
    proc = subprocess.Popen([sys.executable, "-m", "sparksim_engine.vllm_cli", "serve", "sim/smol", "--host",
                             "127.0.0.1", "--port", str(port), "--served-model-name", "smol", *flags],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            urllib.request.urlopen(url + "/health", timeout=2)
            return url, proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise AssertionError(f"engine {name} did not start: {(tmp_path / f'{name}.log').read_text()[-2000:]}")


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    """Two stand-ins: 4 slots with prefix caching and n-gram drafts; 1 slot, no prefix caching, fp8 KV."""
    tmp = tmp_path_factory.mktemp("levers")
    spec = json.dumps({"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3})
    wide, p1 = _start(tmp, "wide", "--max-num-seqs", "4", "--speculative-config", spec)
    try:
        narrow, p2 = _start(tmp, "narrow", "--max-num-seqs", "1", "--no-enable-prefix-caching",
                            "--kv-cache-dtype", "fp8")
    except BaseException:
        p1.kill()
        raise
    yield {"wide": wide, "narrow": narrow, "logs": tmp}
    for p in (p1, p2):
        p.terminate()
        p.wait(30)


def _complete(url: str, prompt: str, max_tokens: int = 4) -> dict:
    body = json.dumps({"model": "smol", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}).encode()
    req = urllib.request.Request(url + "/v1/completions", body, {"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=300).read())


def _metric(url: str, name: str) -> float:
    for line in urllib.request.urlopen(url + "/metrics", timeout=10).read().decode().splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def _stream_times(url: str, prompt: str, max_tokens: int) -> tuple[float, float]:
    """(first token, last byte) monotonic times of one streaming completion."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=300)
    conn.request("POST", "/v1/completions", json.dumps({"model": "smol", "prompt": prompt, "max_tokens": max_tokens,
                 "stream": True, "ignore_eos": True}), {"Content-Type": "application/json"})
    resp, first = conn.getresponse(), None
    for raw in resp:
        if first is None and raw.startswith(b"data: {"):
            first = time.monotonic()
    return first or time.monotonic(), time.monotonic()


def _side_by_side(url: str, n: int = 4, max_tokens: int = 12) -> int:
    """How many of n concurrent requests got their first token before any of them had finished."""
    times: list[tuple[float, float]] = []
    threads = [threading.Thread(target=lambda i=i: times.append(_stream_times(url, f"Story {i}: once", max_tokens)))
               for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    first_end = min(end for _first, end in times)
    return sum(1 for first, _end in times if first < first_end)


@pytest.mark.engine
def test_max_num_seqs_decodes_that_many_sequences_together(engines):
    assert _side_by_side(engines["wide"]) == 4  # 4 slots: all four stream at once
    assert _side_by_side(engines["narrow"]) == 1  # 1 slot: one after another (the others queue)


@pytest.mark.engine
def test_prefix_caching_reuses_a_repeated_prompt_only_when_on(engines):
    prompt = "Prefix caching test: " + " ".join(f"word{i}" for i in range(40))
    for url in (engines["wide"], engines["narrow"]):
        _complete(url, prompt)
    wide = _complete(engines["wide"], prompt)
    narrow = _complete(engines["narrow"], prompt)
    assert wide["usage"]["prompt_tokens_details"]["cached_tokens"] > 20
    assert narrow["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert narrow["timings"]["prompt_n"] == narrow["usage"]["prompt_tokens"]  # all recomputed
    assert _metric(engines["wide"], "vllm:prefix_cache_hits_total") > 20
    assert _metric(engines["narrow"], "vllm:prefix_cache_queries_total") == 0  # vLLM records none when off


@pytest.mark.engine
def test_ngram_speculation_drafts_and_accepts_on_repetitive_text(engines):
    text = "The cat sat on the mat. " * 6
    r = _complete(engines["wide"], text + "The cat", max_tokens=16)
    assert r["timings"].get("draft_n", 0) > 0 and r["timings"].get("draft_n_accepted", 0) > 0
    assert _metric(engines["wide"], "vllm:spec_decode_num_accepted_tokens_total") > 0
    assert "draft_n" not in _complete(engines["narrow"], text + "The cat", max_tokens=4)["timings"]


@pytest.mark.engine
def test_fp8_kv_cache_is_q8_0_with_twice_the_pool(engines):
    log = (engines["logs"] / "narrow.log").read_text()
    assert "kv=q8_0 kv_pool=8192" in log and "n_ctx_slot = 8192" in log  # llama.cpp's own line
    assert "slots=1 " in log and "prefix_cache=off" in log
