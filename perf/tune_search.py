#!/usr/bin/env python3
"""Adaptive search vs the exhaustive grid, run for real on the emulated cluster: runs (engine starts,
confirmations included), wall time and the winner of each, on the same recipe, objective and levers.

Usage: perf/tune_search.py [--levers max_num_seqs=4,8 --levers prefix_caching=false ...] (as root: it runs
the sim). Default: TTFT at c=8 on 8 prompts of 16/16, base max_num_seqs 1, levers max_num_seqs=4,8,
prefix_caching=false and chunked_prefill=false. The two jobs use separate state directories, so the
second is not the first's stored result.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ("recipe: 1\nname: qwen3-tune\nmodel: Qwen/Qwen3-0.6B\nimage: {image}\nnodes: 1\nengine_args:\n"
          "  max_model_len: 2048\n  max_num_seqs: 1\n  enforce_eager: true\n")
PROFILES = ("profiles:\n  tune-lean:\n    cells: [{name: \"16/16\", dataset: random, input_len: 16, output_len: 16}]\n"
            "    concurrency: [8]\n    prompts_per_concurrency: 1\n    min_prompts: 8\n    warmups: 1\n"
            "    repeats: 3\n")
LEVERS = ["max_num_seqs=4,8", "prefix_caching=false", "chunked_prefill=false"]


def tune(cluster, levers: list[str], grid: bool, state: str) -> tuple[dict, float]:  # noqa: ANN001
    env = [f"SPARK_CONFIG={cluster.profile}", f"SPARK_STATE_DIR={state}", "START_TIMEOUT=300", "STOP_TIMEOUT=5",
           "BENCH_PROFILES_FILE=/root/tune-profiles.yaml"]
    argv = [str(ROOT / ".venv/bin/sparkhelpers"), "tune", "run", "/root/tune-base.yaml", "--objective", "ttft@c8",
            "--guard", "output_tps@c8>=-25%", "--profile", "tune-lean", "--json"]
    for lever in levers:
        argv += ["--lever", lever]
    t0 = time.monotonic()
    r = cluster.exec("spark1", ["env", *env, *argv, *(["--grid"] if grid else [])], timeout=7200)
    if not r.stdout.strip():
        raise SystemExit(f"tune failed: {r.stderr[-2000:]}")
    return json.loads(r.stdout), time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levers", action="append", default=None, help="a --lever of tune run (repeatable)")
    args = ap.parse_args()
    levers = args.levers or LEVERS
    from sparkhelpers import sim

    state_dir = Path(tempfile.mkdtemp(prefix="bench-tune-"))
    name = f"b{os.getpid()}"
    cluster = sim.up(name, 1, state_dir=state_dir, image_on="all")
    try:
        cluster.seed_model("spark1", "Qwen/Qwen3-0.6B")
        cluster.exec("spark1", "cat >/root/tune-base.yaml", input=RECIPE.format(image=cluster.image)).check("recipe")
        cluster.exec("spark1", "cat >/root/tune-profiles.yaml", input=PROFILES).check("profile")
        rows = [(label, *tune(cluster, levers, grid, f"/root/state-{label}"))
                for label, grid in (("adaptive", False), ("grid", True))]
    finally:
        sim.down(name, state_dir=state_dir)
    print(f"tune search on the emulated cluster (1 node, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}); "
          f"levers {' '.join(levers)}; objective ttft@c8 (16/16, 8 prompts), 3 repeats")
    print(f"{'strategy':<10}{'runs':>6}{'wall s':>9}  winner (median TTFT ms, gain vs control)")
    for label, record, wall in rows:
        w = record.get("winner") or {}
        print(f"{label:<10}{record['runs']:>6}{wall:>9.0f}  {w.get('name', record.get('error'))} "
              f"({w.get('median') or 0:.0f} ms, {(w.get('gain_vs_control') or 0) * 100:+.0f}%)")


if __name__ == "__main__":
    main()
