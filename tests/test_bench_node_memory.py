"""The nodes' memory low-water mark during a benchmark run: the sampler's parsing, the real sampler on this
machine, an unreachable node, which nodes a run samples, the matrix column and HTML, and (sim) a real
2-node emulated cluster whose nodes report different values, one SSH session per node."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sparkhelpers.bench import matrix, node_memory, report, summary
from sparkhelpers.bench.node_memory import NodeTrack, parse_sample, sampler_script
from sparkhelpers.config import load_config
from sparkhelpers.runner import LOCAL, Host, Runner

ROOT = Path(__file__).resolve().parents[1]


def test_parse_sample_reads_the_sampler_line_and_nothing_else():
    assert parse_sample("mem 127601452 119862340") == (127601452, 119862340)
    assert parse_sample("mem - 5000") == (None, 5000)
    assert parse_sample("mem 127601452 -") == (127601452, None)  # a meminfo without MemAvailable
    for noise in ("", "Welcome to DGX OS", "mem 1 2 3", "mem x y", "MemAvailable: 1 kB"):
        assert parse_sample(noise) is None, noise


def test_track_keeps_first_lowest_last_and_ignores_noise():
    t = NodeTrack("spark2", "10.0.0.2")
    for line in ("banner", "mem 1048576 900000", "mem 1048576 400000", "mem 1048576 -", "mem 1048576 700000"):
        t.feed(line)
    s = t.summary()
    assert (t.first_kib, t.min_kib, t.last_kib, t.samples) == (900000, 400000, 700000, 3)
    assert s["mem_total_gib"] == 1.0 and s["mem_available_min_kib"] == 400000
    assert s["mem_available_min_gib"] == round(400000 / 1048576, 2) and s["min_at_s"] is not None


def test_summary_names_the_lowest_node():
    a, b = NodeTrack("head", "local"), NodeTrack("spark2", "10.0.0.2")
    a.feed("mem 2097152 1500000")
    b.feed("mem 2097152 1200000")
    out = node_memory.summarize([a, b], 0.5)
    assert out["available"] and out["min_node"] == "spark2"
    assert out["min_mem_available_gib"] == out["nodes"]["spark2"]["mem_available_min_gib"]
    none = node_memory.summarize([NodeTrack("head", "local", error="ssh: refused")], 0.5)
    assert none == {"available": False, "reason": "head: ssh: refused", "nodes": {"head": none["nodes"]["head"]}}


def test_the_sampler_streams_this_machines_meminfo_in_one_process():
    w = node_memory.Watcher([("here", LOCAL)], interval_s=0.2).start(first_sample_s=5)
    time.sleep(0.7)
    out = w.stop()
    real = next(int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines()
                if ln.startswith("MemTotal:"))
    here = out["nodes"]["here"]
    assert out["available"] and here["samples"] >= 3, out  # several samples from one shell, not one call each
    assert here["mem_total_gib"] == round(real / 1048576, 2)
    assert 0 < here["mem_available_min_gib"] <= here["mem_total_gib"]


def test_sampler_script_is_one_shell_loop_of_builtins():
    script = sampler_script(0.5)
    assert script.count("/proc/meminfo") == 1 and "sleep 0.5" in script
    assert "awk" not in script and "grep" not in script  # no process per line, one sleep per sample
    r = subprocess.run(["bash", "-c", script.replace("while s; do sleep 0.5; done", "s")], capture_output=True,
                       text=True, timeout=10)
    assert parse_sample(r.stdout.strip()) is not None, r.stdout


def test_an_unreachable_node_is_reported_not_fatal():
    closed = Host("127.0.0.1", options=("-p", "1"), connect_timeout=2)
    w = node_memory.Watcher([("head", LOCAL), ("gone", closed)], interval_s=0.2).start(first_sample_s=5)
    out = w.stop()
    assert out["available"] and out["nodes"]["head"]["samples"] >= 1
    assert out["nodes"]["gone"]["samples"] == 0 and out["nodes"]["gone"]["error"], out


def test_stop_ends_the_streamed_command():
    stop = threading.Event()
    lines: list[str] = []
    t0 = time.monotonic()
    threading.Timer(0.5, stop.set).start()
    res = Runner().stream_on(LOCAL, "while :; do echo tick; sleep 0.1; done", lines.append, stop=stop, timeout=20)
    assert res.ok and lines and time.monotonic() - t0 < 5


def test_cluster_nodes_only_when_the_cluster_serves_the_url():
    cfg = load_config(flags={"HEAD_HOST": "", "WORKER_HOST": "10.9.0.2 10.9.0.3", "WORKER_USER": "ops"})
    names = [n for n, _ in node_memory.cluster_nodes(cfg, "http://127.0.0.1:8000")]
    assert names == ["head", "10.9.0.2", "10.9.0.3"]
    assert node_memory.cluster_nodes(cfg, "http://10.9.0.3:4000")  # a gateway on a worker
    assert node_memory.cluster_nodes(cfg, "http://192.0.2.7:8000") == []  # another server: nothing sampled
    remote = load_config(flags={"HEAD_HOST": "10.9.0.1", "WORKER_HOST": "10.9.0.2"})
    assert node_memory.cluster_nodes(remote, "http://127.0.0.1:8000") == []  # a control machine's loopback
    assert [h.address for _, h in node_memory.cluster_nodes(remote, "http://10.9.0.1:8000")] == ["10.9.0.1",
                                                                                                 "10.9.0.2"]


def _doc(model: str, low: float | None) -> dict:
    nodes = {"head": {"mem_available_min_gib": low + 10 if low else None, "samples": 4},
             "spark2": {"mem_available_min_gib": low, "samples": 4}}
    return {"model_id": model, "completed": 4, "failed": 0, "output_throughput": 100.0, "median_ttft_ms": 50.0,
            "p99_ttft_ms": 60.0, "p99_tpot_ms": 10.0, "max_concurrency": 4,
            "target": {"model": model, "variant": "default"}, "workload": {"cell": "chat"},
            "run": {"valid": True, "tool": "sparkhelpers", "started_at": "2026-12-02T03:00:00Z"},
            "node_memory": {"available": low is not None, "nodes": nodes, "min_node": "spark2",
                            "min_mem_available_gib": low}}


def test_matrix_column_table_and_html_show_the_low_water_mark():
    m = matrix.build([_doc("a", 80.0), _doc("a", 82.0), _doc("b", None)])
    rows = {r["model"]: r for r in matrix.long_rows(m)}
    assert rows["a"]["mem_low_gib"] == pytest.approx(81.0) and rows["a"]["mem_low_gib_ci95"] is not None
    assert rows["b"]["mem_low_gib"] is None  # no samples: none invented
    assert "mem low 81.0±" in matrix.to_table(m) and "mem_low_gib" in matrix.to_csv(m).splitlines()[0]
    html = report.to_html(m)
    assert "lowest MemAvailable (GiB)" in html and "spark2 80.0, head 90.0" in html


def test_run_summary_prints_each_node():
    doc = _doc("a", 80.0)
    doc.update({"duration": 1.0, "num_prompts": 4, "total_input_tokens": 4, "total_output_tokens": 4,
                "request_throughput": 4.0, "total_token_throughput": 8.0, "max_output_tokens_per_s": 9.0,
                "max_concurrent_requests": 4, "extra": {}})
    doc["node_memory"]["nodes"]["spark2"]["mem_total_gib"] = 121.7
    assert "spark2 lowest (GiB):" in summary.format_summary(doc) and "80.00 of 121.7 (4 samples)" in \
        summary.format_summary(doc)


MEM = {"spark1": 104_857_600, "spark2": 94_371_840}  # 100 GiB and 90 GiB available
DIP_KIB = 52_428_800  # spark2 drops to 50 GiB for a moment mid-run


def _set_available(cluster, node: str, kib: int) -> None:
    """Rewrite the node's /proc/meminfo in place (same inode: the node's bind mount sees it)."""
    from sparkhelpers.sim import facts

    path = cluster.node_dir(node) / "meminfo"
    text = facts.meminfo_text({**cluster.facts[node], "mem_available_kib": kib})
    with open(path, "r+") as f:
        f.truncate(0)
        f.write(text)


@pytest.mark.sim
def test_bench_run_on_the_emulated_cluster_samples_each_node(make_sim):
    cluster = make_sim(nodes=2, facts={n: {"mem_available_kib": kib} for n, kib in MEM.items()})
    env = ["env", f"SPARK_CONFIG={cluster.profile}"]
    server = subprocess.Popen(["nsenter", "-t", str(cluster.node("spark1").pid), "-a", sys.executable,
                               str(ROOT / "perf" / "truth_server.py"), "--port", "8199", "--ttft-ms", "100"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        bench = [str(ROOT / ".venv/bin/sparkhelpers"), "bench", "run", "--base-url", "http://127.0.0.1:8199",
                 "--model", "truth", "--num-prompts", "40", "--max-concurrency", "4", "--random-input-len", "8",
                 "--random-output-len", "40", "--ready-check-timeout-sec", "30", "--json"]
        from sparkhelpers.sim.cluster import exec_argv

        proc = subprocess.Popen(exec_argv(cluster.node("spark1"), [*env, *bench]), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the worker's one sampler session is up: the run is being watched
            if cluster.exec("spark2", "pgrep -fc '[M]emAvailable' || true").stdout.strip() not in ("", "0"):
                break
            time.sleep(0.2)
        sessions = cluster.exec("spark2", "pgrep -fc '[M]emAvailable' || true").stdout.strip()
        _set_available(cluster, "spark2", DIP_KIB)
        time.sleep(1.5)
        _set_available(cluster, "spark2", MEM["spark2"])
        out, err = proc.communicate(timeout=120)
    finally:
        server.kill()
        server.wait()
    assert proc.returncode == 0, err[-2000:]
    assert sessions == "1", f"one sampler session on the worker, not one call per sample ({sessions})"
    mem = json.loads(out)["node_memory"]
    assert mem["available"], mem
    head, worker = mem["nodes"]["head"], next(v for k, v in mem["nodes"].items() if k != "head")
    assert head["mem_available_min_gib"] == 100.0 and head["samples"] >= 4
    assert worker["mem_available_start_gib"] == 90.0 and worker["mem_available_end_gib"] == 90.0
    assert worker["mem_available_min_gib"] == 50.0 and worker["samples"] >= 4  # the dip, caught mid-run
    assert mem["min_mem_available_gib"] == 50.0 and mem["min_node"] != "head"
