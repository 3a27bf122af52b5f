"""The side-by-side client benchmark (perf/client_error.py) and the truth server's own timing records: the
server's lateness summary, the CPU-window arithmetic, and the harness run end to end with tiny counts."""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):  # noqa: ANN202
    spec = importlib.util.spec_from_file_location(f"perf_{name}", ROOT / "perf" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[f"perf_{name}"] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


truth = _load("truth_server")
harness = _load("client_error")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_summary_is_its_own_lateness():
    served = [truth.Served(arrival=10.0, first=10.2015, last=10.2015 + 0.0202 * 9, tokens=10, late_sum_ms=5.0,
                           late_max_ms=1.5),
              truth.Served(arrival=11.0, first=11.2005, last=11.2005 + 0.0200 * 9, tokens=10, late_sum_ms=1.0,
                           late_max_ms=0.5),
              truth.Served(arrival=12.0)]  # still waiting for its first token: not counted
    s = truth.summarize(served, 200.0, 20.0)
    assert s["requests"] == 2 and s["tokens"] == 20
    assert s["ttft_late_mean_ms"] == pytest.approx(1.0) and s["ttft_mean_ms"] == pytest.approx(201.0)
    assert s["tpot_late_mean_ms"] == pytest.approx(0.1) and s["late_mean_ms"] == pytest.approx(0.3)
    assert s["late_max_ms"] == 1.5 and s["window_start"] == 10.0 and s["window_end"] == pytest.approx(11.3805)


def test_cpu_in_window_interpolates_between_samples():
    samples = [(0.0, 1.0), (1.0, 1.5), (2.0, 1.5), (3.0, 2.5)]  # (time, cpu seconds)
    assert harness.cpu_in_window(samples, 0.0, 1.0) == pytest.approx(50.0)
    assert harness.cpu_in_window(samples, 1.0, 2.0) == pytest.approx(0.0)
    assert harness.cpu_in_window(samples, 0.5, 2.5) == pytest.approx(37.5)  # 0.25 + 0 + 0.5 over 2 s
    assert harness.cpu_in_window(samples, 2.0, 2.0) is None


def test_split_adds_up():
    s = harness.Setup(1, 200.0, 20.0, 128, 512, Path("/tmp"))
    o = harness.Outcome("x", 16, ttft_mean_ms=205.0, ttft_p50_ms=204.0, tpot_mean_ms=20.1,
                        server={"ttft_late_mean_ms": 3.0, "ttft_mean_ms": 203.0, "ttft_p50_ms": 202.5,
                                "tpot_late_mean_ms": 0.04, "tpot_mean_ms": 20.04, "requests": 32})
    r = harness.split(o, s)
    assert r["ttft_mean_err_ms"] == pytest.approx(r["ttft_server_late_ms"] + r["ttft_client_ms"]) == 5.0
    assert r["ttft_p50_client_ms"] == pytest.approx(1.5)
    assert r["tpot_err_ms"] == pytest.approx(r["tpot_server_late_ms"] + r["tpot_client_ms"])


def _run(tmp_path: Path, clients: str, levels: str, timeout: float) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "rows.json"
    r = subprocess.run([sys.executable, str(ROOT / "perf" / "client_error.py"), "--levels", levels, "--clients",
                        clients, "--tokens", "5", "--ttft-ms", "40", "--itl-ms", "5", "--input-len", "16",
                        "--requests-per-slot", "1", "--port", str(_free_port()), "--json", str(out)],
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-2000:]
    return r, json.loads(out.read_text())


def test_harness_runs_our_client_at_two_levels(tmp_path):
    r, data = _run(tmp_path, "sparkhelpers", "1,2", 180)
    rows = {row["concurrency"]: row for row in data["rows"]}
    assert set(rows) == {1, 2} and all(row["client"] == "sparkhelpers" and not row["error"] for row in rows.values())
    for c, row in rows.items():
        assert row["server_requests"] == 4 + c if c > 1 else 5  # the measured requests plus the warm-ups
        assert row["ttft_mean_err_ms"] == pytest.approx(row["ttft_server_late_ms"] + row["ttft_client_ms"])
        assert row["ttft_server_late_ms"] >= 0 and row["cpu_total_s"] > 0  # a real process, really sampled
        assert row["cpu_load_pct"] is not None and row["tpot_err_ms"] is not None
    assert "TTFT mean err" in r.stdout and "sparkhelpers" in r.stdout and "server pinned to CPU" in r.stdout


@pytest.mark.engine
def test_harness_drives_vllm_bench_serve_and_llama_benchy_when_installed(tmp_path):
    if not harness.find_vllm("")[0]:
        pytest.skip("vllm is not installed here (tools/real-vllm.sh builds the side venv)")
    r, data = _run(tmp_path, "vllm,llama-benchy", "2", 900)
    rows = {row["client"]: row for row in data["rows"]}
    assert not rows["vllm"]["error"], rows["vllm"]
    assert rows["vllm"]["ttft_mean_err_ms"] > -1 and rows["vllm"]["server_requests"] >= 4
    if "llama-benchy" in rows:  # installed by name when the package index has it
        assert not rows["llama-benchy"]["error"], rows["llama-benchy"]
    else:
        assert "llama-benchy" in data["skipped"]


def test_truth_server_stamps_each_request_at_its_own_first_read(tmp_path):
    """On one keep-alive connection: a GET (another route), a pause, then a stream: the stream's arrival is
    its own first read (no stamp left over from the GET), so no token is ever early."""
    import http.client
    import time

    port = _free_port()
    server = subprocess.Popen([sys.executable, str(ROOT / "perf" / "truth_server.py"), "--port", str(port),
                               "--ttft-ms", "50", "--itl-ms", "5"], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/v1/models")
                conn.getresponse().read()
                break
            except OSError:
                time.sleep(0.1)
        conn.request("GET", "/nothing-here")  # a 404 on the same connection
        conn.getresponse().read()
        time.sleep(0.3)
        sent = time.perf_counter()
        conn.request("POST", "/v1/completions", body=json.dumps({"prompt": "x", "max_tokens": 3, "stream": True}),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        first = None
        while line := resp.fp.readline():
            if line.startswith(b"data: {") and first is None:
                first = time.perf_counter()
            if line.startswith(b"data: [DONE]"):
                break
        served = json.loads(urllib_get(port, "/requests"))
    finally:
        server.terminate()
        server.wait(10)
    assert len(served) == 1 and served[0]["arrival"] >= sent  # not the GET's, 0.3 s earlier
    assert (first - sent) * 1000 >= 50.0 and served[0]["tokens"] == 3


def urllib_get(port: int, path: str) -> bytes:
    import urllib.request

    return urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5).read()


def test_breakdown_splits_each_request_on_one_clock():
    bd = _load("client_breakdown")
    from sparkhelpers.bench.client import Health
    from sparkhelpers.bench.metrics import RequestRecord

    health = Health(origin=100.0)
    recs = []
    for i, start in enumerate((0.010, 0.020)):  # sent at 100.010 and 100.020
        r = RequestRecord(i, 8, 3, start=start, ttft=0.2035, latency=0.2035 + 0.0402, output_tokens=3, success=True)
        recs.append(r)
    served = [{"arrival": 99.0, "first": 99.2, "last": 99.24, "tokens": 3},  # the warm-up: dropped
              {"arrival": 100.011, "first": 100.2120, "last": 100.2520, "tokens": 3},
              {"arrival": 100.0215, "first": 100.2225, "last": 100.2625, "tokens": 3}]
    b = bd.breakdown(recs, health, served, 1, 200.0, 20.0)
    assert b["requests"] == 2 and b["ttft_err_ms"] == pytest.approx(3.5)
    assert b["send_ms"] == pytest.approx(1.25) and b["server_late_ms"] == pytest.approx(1.0)
    assert b["ttft_err_ms"] == pytest.approx(b["send_ms"] + b["server_late_ms"] + b["delivery_ms"])
    assert b["tpot_client_ms"] == pytest.approx(0.1) and b["tpot_server_late_ms"] == pytest.approx(0.0)


def test_breakdown_script_runs(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "perf" / "client_breakdown.py"), "--concurrency", "2", "--tokens",
                        "4", "--ttft-ms", "30", "--itl-ms", "5", "--port", str(_free_port()), "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    b = json.loads(r.stdout)
    assert b["requests"] == 4 and b["send_ms"] > -1 and b["server_late_ms"] >= 0
    assert b["ttft_err_ms"] == pytest.approx(b["send_ms"] + b["server_late_ms"] + b["delivery_ms"])
