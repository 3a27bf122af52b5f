#!/usr/bin/env python3
"""Cold and warm `sparkhelpers sim up` (2 nodes) and `sim down`, as a user runs them.

Usage: perf/sim_up.py [WARM_RUNS]   (root; default 3 warm runs)

Cold = empty image cache: the engine image is built from host files, imported into the head and
saved into the cache. Warm = cache present: nodes start and `docker load` the cached image.
Prints seconds per run and the median. Uses its own state and cache directories (removed after).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXE = Path(sys.executable).parent / "sparkhelpers"
NAME = f"bench{os.getpid()}"


def timed(args: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    r = subprocess.run([str(EXE), "sim", *args, "--name", NAME], env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"sim_up: `sparkhelpers sim {' '.join(args)}` failed:\n{r.stderr}")
    return elapsed


def main() -> None:
    warm_runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    work = Path(tempfile.mkdtemp(prefix="sim-bench-"))
    env = {**os.environ, "SPARK_STATE_DIR": str(work / "state"), "SPARK_SIM_CACHE": str(work / "cache")}
    rows: list[tuple[str, list[float]]] = []
    try:
        cold = [timed(["up", "--image-on", "head"], env)]
        downs = [timed(["down"], env)]
        rows.append(("cold up, image on head (build + import + save)", cold))
        for image_on in ("head", "all"):
            ups = []
            for _ in range(warm_runs):
                ups.append(timed(["up", "--image-on", image_on], env))
                downs.append(timed(["down"], env))
            rows.append((f"warm up, image on {image_on}", ups))
        nodes_only = []
        for _ in range(warm_runs):
            nodes_only.append(timed(["up", "--image-on", "none"], env))
            downs.append(timed(["down"], env))
        rows.append(("up without image (nodes only)", nodes_only))
        rows.append(("down", downs))
    finally:
        subprocess.run([str(EXE), "sim", "down", "--name", NAME], env=env, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    load = os.getloadavg()[0]
    print(f"sparkhelpers sim: 2 nodes, {os.cpu_count()} CPUs, load average {load:.1f} at the end\n")
    print(f"| {'step':<48} | runs (s) | median (s) |")
    print(f"|{'-' * 50}|----------|------------|")
    for label, values in rows:
        runs = " ".join(f"{v:.1f}" for v in values)
        print(f"| {label:<48} | {runs} | {statistics.median(values):.1f} |")


if __name__ == "__main__":
    main()
