#!/usr/bin/env python3
"""Wall time of discovery and the doctor: local capture + parse, the doctor on two fixture snapshots,
and (as root, when the sim can run) `checkout_setup.sh --quick` on an emulated 2-node cluster.

Usage: perf/doctor.py [RUNS]   Prints median and max wall time in milliseconds for each step.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXE = Path(sys.executable).parent / "sparkhelpers"
SNAPS = ROOT / "tests" / "fixtures" / "snapshots"


def timed(argv: list[str], runs: int, env: dict[str, str] | None = None) -> list[float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False, timeout=300)
        times.append((time.perf_counter() - t0) * 1000)
    return times


def show(label: str, t: list[float]) -> None:
    print(f"{label:<52} {statistics.median(t):>10.0f} {max(t):>8.0f}")


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    print(f"{'step':<52} {'median ms':>10} {'max ms':>8}  ({runs} runs, {os.cpu_count()} cores)")
    show("sparkhelpers discover --json (this host)", timed([str(EXE), "discover", "--json"], runs))
    show("sparkhelpers doctor --snapshot x2 --json", timed(
        [str(EXE), "doctor", "--snapshot", f"head={SNAPS / 'spark1'}", "--snapshot", f"w={SNAPS / 'spark2'}",
         "--json"], runs))
    if os.geteuid() != 0:
        print("(not root: the emulated-cluster step is skipped)")
        return
    from sparkhelpers import sim

    with tempfile.TemporaryDirectory(prefix="bench-doctor-") as state:
        name = f"bench{os.getpid()}"
        try:
            cluster = sim.up(name, 2, state_dir=state, image_on="none")
            argv = ["nsenter", "-t", str(cluster.head.pid), "-a", "env", f"SPARK_CONFIG={cluster.profile}",
                    str(ROOT / "checkout_setup.sh"), "--quick"]
            show("checkout_setup.sh --quick on a 2-node sim (from head)", timed(argv, runs))
        finally:
            sim.down(name, state_dir=state)


if __name__ == "__main__":
    main()
