#!/usr/bin/env python3
"""Do the emulated engine's tuning levers move its figures? Before/after, side by side, at c=1 and c=8.

Usage: perf/sim_levers.py [--sets base,seqs8,...] [--prompts 16] [--input-len 16] [--output-len 64]
                          [--port 8231]

Starts the vLLM stand-in (sparksim_engine.vllm_cli, the real llama.cpp backend with SmolLM2-135M, 1 thread)
on 127.0.0.1 once per flag set, runs this project's benchmark client (`bench run`'s) at concurrency 1 and 8,
and prints output tok/s, median TTFT and TPOT, the prefix-cache hit rate, and the engine's CPU seconds per
output token (from /proc; it does not depend on how many other processes share the cores, wall-clock
figures do). Sets: base (no flags: 4 slots), seqs1, seqs8, batch16 (--max-num-batched-tokens 16),
noprefix (--no-enable-prefix-caching, on a repeated-prefix workload), prefix (the same workload, caching
on), fp8 (--kv-cache-dtype fp8), ngram (n-gram speculative decoding).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from sparkhelpers.bench.run import RunOptions, execute  # noqa: E402
from sparkhelpers.sim.image import smollm2_gguf  # noqa: E402

SETS = {
    "base": [], "seqs1": ["--max-num-seqs", "1"], "seqs8": ["--max-num-seqs", "8"],
    "batch16": ["--max-num-batched-tokens", "16"], "fp8": ["--kv-cache-dtype", "fp8"],
    "prefix": [], "noprefix": ["--no-enable-prefix-caching"],
    "ngram": ["--speculative-config", json.dumps({"method": "ngram", "num_speculative_tokens": 4,
                                                  "prompt_lookup_max": 3})],
}
PREFIX_SETS = ("prefix", "noprefix")  # measured on vLLM's prefix_repetition workload


def start(flags: list[str], port: int, hub: Path) -> subprocess.Popen:
    snap = hub / "hub" / "models--sim--smol" / "snapshots" / "x"
    snap.mkdir(parents=True, exist_ok=True)
    (snap / "config.json").write_text("{}")
    env = {**os.environ, "PYTHONPATH": str(HERE.parent / "sparkhelpers" / "sim" / "engine"), "HF_HUB_OFFLINE": "1",
           "HF_HOME": str(hub), "SPARKSIM_MODEL": str(smollm2_gguf()), "SPARKSIM_RAY_TMP": str(hub / "ray")}
    proc = subprocess.Popen([sys.executable, "-m", "sparksim_engine.vllm_cli", "serve", "sim/smol", "--host",
                             "127.0.0.1", "--port", str(port), "--served-model-name", "smol", *flags],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"perf/sim_levers.py: the engine with {flags} did not start")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(name: str, port: int, conc: int, args: argparse.Namespace, pid: int, seed: int) -> dict:
    shape = dict(dataset_name="prefix_repetition", prefix_repetition_prefix_len=96, prefix_repetition_suffix_len=8,
                 prefix_repetition_num_prefixes=2, prefix_repetition_output_len=args.output_len) \
        if name in PREFIX_SETS else dict(random_input_len=args.input_len, random_output_len=args.output_len)
    before = cpu_seconds(pid)
    doc, _ = execute(RunOptions(base_url=f"http://127.0.0.1:{port}", model="smol", max_concurrency=conc,
                                num_prompts=args.prompts if conc > 1 else max(4, args.prompts // 4), seed=seed,
                                num_warmups=1, **shape))
    cpu = cpu_seconds(pid) - before
    em = doc.get("engine_metrics") or {}
    out = doc.get("total_output_tokens") or 1
    return {"set": name, "c": conc, "ok": doc["completed"], "failed": doc["failed"],
            "out_tps": round(doc["output_throughput"], 1), "ttft_ms": round(doc["median_ttft_ms"]),
            "tpot_ms": round(doc["median_tpot_ms"], 1), "hit": em.get("prefix_cache_hit_rate"),
            "cpu_ms_per_tok": round(1000 * cpu / out, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", default="base,seqs1,seqs8,batch16,prefix,noprefix,fp8,ngram")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--input-len", type=int, default=16)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--port", type=int, default=8231)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="sim-levers-") as tmp:
        for i, name in enumerate(args.sets.split(",")):
            proc = start(SETS[name], args.port, Path(tmp))
            try:
                for conc in (1, 8):
                    rows.append(measure(name, args.port, conc, args, proc.pid, seed=100 + i))
                    print(json.dumps(rows[-1]), flush=True)
            finally:
                proc.terminate()
                proc.wait(30)
    print(f"\n{'set':9} {'c':>2} {'out tok/s':>9} {'TTFT ms':>8} {'TPOT ms':>8} {'hit':>6} {'CPU ms/tok':>10}")
    for r in rows:
        print(f"{r['set']:9} {r['c']:>2} {r['out_tps']:>9} {r['ttft_ms']:>8} {r['tpot_ms']:>8} "
              f"{'-' if r['hit'] is None else r['hit']:>6} {r['cpu_ms_per_tok']:>10}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (2 cores; wall-clock figures scale with it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
