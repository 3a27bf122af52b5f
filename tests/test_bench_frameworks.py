"""--framework vllm / llama-benchy: the commands we build, secrets kept off argv, results ingested."""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from sparkhelpers.bench import frameworks
from sparkhelpers.bench.run import RunOptions
from sparkhelpers.config import load_config

FIX = Path(__file__).parent / "fixtures" / "bench"
ROOT = Path(__file__).resolve().parents[1]
VLLM_FILE = FIX / "vllm-baseline-infqps-concurrency4-Qwen3-0.6B-20261120-031502.json"


def opts(**kw) -> RunOptions:
    o = RunOptions(base_url="http://127.0.0.1:8000", model="qwen", num_prompts=64, max_concurrency=16,
                   random_input_len=1024, random_output_len=128, goodput={"ttft": 500.0}, label="nightly",
                   metadata={"variant": "fp8-kv"}, **kw)
    o.validate()
    return o


def test_vllm_bench_serve_argv_mirrors_our_flags():
    argv = frameworks.vllm_bench_argv(opts(), container="sparkhelpers-spark-0", result_name="r.json",
                                      tokenizer="Qwen/Qwen3-0.6B", with_key=True)
    assert argv[:6] == ["docker", "exec", "-e", "OPENAI_API_KEY", "sparkhelpers-spark-0", "vllm"]
    joined = " ".join(argv)
    for part in ("bench serve --backend openai --base-url http://127.0.0.1:8000 --model qwen",
                 "--tokenizer Qwen/Qwen3-0.6B", "--dataset-name random --random-input-len 1024",
                 "--num-prompts 64 --request-rate inf", "--max-concurrency 16", "--goodput ttft:500",
                 "--percentile-metrics ttft,tpot,itl,e2el --metric-percentiles 50,90,95,99",
                 "--save-result --result-dir /tmp/sparkhelpers-bench --result-filename r.json",
                 "--label nightly --metadata variant=fp8-kv"):
        assert part in joined, part


def test_llama_benchy_argv_keeps_the_key_out_of_argv():
    argv = frameworks.benchy_argv(opts(), python="/venv/bin/python", out_file="/r/x.json", tokenizer="Qwen/Q",
                                  extra="--book-url http://127.0.0.1:9/book.txt")
    assert argv[:2] == ["/venv/bin/python", "-c"] and "SPARK_BENCH_API_KEY" in argv[2]
    assert "--api-key" not in argv[3:]
    i = argv.index("--concurrency")
    assert argv[i + 1] == "16" and argv[argv.index("--runs") + 1] == "4" and "--exact-tg" in argv
    assert argv[-2:] == ["--book-url", "http://127.0.0.1:9/book.txt"]


def test_vllm_framework_runs_in_the_head_container_and_ingests(tmp_path, monkeypatch):
    """A stand-in docker (no GPU here) that replays a real-shaped vllm bench serve result file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "docker.log"
    docker = bin_dir / "docker"
    docker.write_text(f"""#!/usr/bin/env bash
printf '%s\\n' "$*" >> {log}
printf 'key-set=%s\\n' "${{OPENAI_API_KEY:+yes}}" >> {log}
if [[ "$3" == cat || "$4" == cat ]]; then cat {VLLM_FILE}; fi
""")
    docker.chmod(docker.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("WORKER_HOST", "w1")
    monkeypatch.setenv("MODEL", "org/some-model")
    monkeypatch.setenv("TENSOR_PARALLEL", "2")
    monkeypatch.setenv("VLLM_IMAGE", "img:1")
    paths = frameworks.run_framework("vllm", opts(), load_config(), out_dir=tmp_path / "out", api_key="s3cret")
    calls = log.read_text()
    assert "exec -e OPENAI_API_KEY sparkhelpers-spark-0 vllm bench serve" in calls and "key-set=yes" in calls
    assert "s3cret" not in calls
    doc = json.loads(paths[1].read_text())
    assert paths[0].name.startswith("original-") and doc["run"]["tool"] == "vllm bench serve"
    assert doc["target"]["nodes"] == 2 and doc["target"]["tp"] == 2 and doc["target"]["image"] == "img:1"
    assert doc["p99_ttft_ms"] > 0


def test_vllm_framework_dry_run_prints_and_runs_nothing(tmp_path, sparkhelpers_bin):
    r = subprocess.run([*sparkhelpers_bin, "bench", "run", "--framework", "vllm", "--dry-run", "--model", "m",
                        "--max-concurrency", "4", "--result-dir", str(tmp_path)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert "[dry-run] local: docker exec sparkhelpers-spark-0 vllm bench serve" in r.stderr


BENCHY_VENVS = [Path(os.environ.get("SIDE_VENV_ROOT", "/var/cache/sparkhelpers")) / "llama-benchy-0.4.0",
                ROOT / "perf" / ".venv-benchy"]  # make side-venvs; perf/client_error.py's own install
BENCHY_VENV = next((v for v in BENCHY_VENVS if (v / "bin" / "llama-benchy").exists()), None)


@pytest.mark.skipif(BENCHY_VENV is None, reason="llama-benchy is not installed (make side-venvs)")
def test_llama_benchy_framework_against_the_truth_server(tmp_path, monkeypatch):
    import socket
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([os.sys.executable, str(ROOT / "perf" / "truth_server.py"), "--port", str(port),
                               "--ttft-ms", "50", "--itl-ms", "5"])
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        py = BENCHY_VENV / "bin" / "python"
        tok = tmp_path / "tokenizer.json"
        spec = importlib.util.spec_from_file_location("client_error", ROOT / "perf" / "client_error.py")
        client_error = importlib.util.module_from_spec(spec)
        sys.modules["client_error"] = client_error  # its dataclasses look the module up
        spec.loader.exec_module(client_error)
        subprocess.run([str(py), "-c", client_error.TOKENIZER_SNIPPET, str(tok)], check=True)
        monkeypatch.setenv("PATH", f"{py.parent}:{os.environ['PATH']}")
        monkeypatch.setenv("MODEL", str(tok))
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setenv("BENCH_LLAMA_BENCHY_ARGS",
                           f"--book-url http://127.0.0.1:{port}/book.txt --skip-coherence --no-adapt-prompt")
        o = RunOptions(base_url=f"http://127.0.0.1:{port}", model="truth", num_prompts=4, max_concurrency=2,
                       random_input_len=32, random_output_len=8)
        paths = frameworks.run_framework("llama-benchy", o, load_config(), out_dir=tmp_path / "out")
        docs = [json.loads(p.read_text()) for p in paths[1:]]
        assert len(docs) == 2 and all(d["max_concurrency"] == 2 and d["output_throughput"] > 0 for d in docs)
    finally:
        server.terminate()
        server.wait(10)
