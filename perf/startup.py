#!/usr/bin/env python3
"""Start-up time of the CLI as scripts call it: `sparkhelpers --help` and `sparkhelpers config show`.

Usage: perf/startup.py [RUNS]   Prints median and p90 wall time in milliseconds for each command.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXE = Path(sys.executable).parent / "sparkhelpers"
COMMANDS = [["--help"], ["config", "show"], ["config", "get", "VLLM_PORT"]]


def measure(args: list[str], runs: int) -> list[float]:
    env = {**os.environ, "SPARK_HOME": str(ROOT)}
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([str(EXE), *args], env=env, stdout=subprocess.DEVNULL, check=True)
        times.append((time.perf_counter() - t0) * 1000)
    return times


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    measure(["--help"], 2)  # warm the page cache
    print(f"{'command':<36} {'median ms':>10} {'p90 ms':>8}  ({runs} runs, {os.cpu_count()} cores)")
    for args in COMMANDS:
        t = sorted(measure(args, runs))
        p90 = t[min(len(t) - 1, int(0.9 * len(t)))]
        print(f"{'sparkhelpers ' + ' '.join(args):<36} {statistics.median(t):>10.0f} {p90:>8.0f}")


if __name__ == "__main__":
    main()
