#!/usr/bin/env python3
"""Orchestration overhead of start_cluster.sh and stop_cluster.sh, measured on the emulated cluster.

Usage: perf/orchestration.py [--nodes N] [--runs R] [--mode native|ray]   (as root: it runs the sim)

start overhead = wall time of start_cluster.sh (run on the head, to "ready" including the chat check)
                 minus the engine's own time to ready (its first log line on the head to /health 200).
stop overhead  = wall time of `sparkhelpers cluster stop` minus the longest time docker itself took to
                 stop and remove the containers on one node.
Run 1 is cold (the image and the model are copied to the workers); the others are warm.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def on_head(cluster, argv: list[str], timeout: float = 600):  # noqa: ANN001, ANN201
    env = [f"SPARK_CONFIG={cluster.profile}", "MAX_MODEL_LEN=2048", "START_TIMEOUT=300", "STOP_TIMEOUT=10"]
    return cluster.exec("spark1", ["env", *env, *argv], timeout=timeout)


def engine_started_at(log: Path) -> float:
    """Epoch of the engine's first line ("sparkhelpers: 2026-...Z starting ...") in the head's log."""
    stamp = log.read_text().splitlines()[0].split()[1]
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


def one_run(cluster, state: Path, mode: str, nodes: int) -> tuple[float, float, float, float]:  # noqa: ANN001
    t0 = time.monotonic()
    r = on_head(cluster, ["env", f"LAUNCH_MODE={mode}", str(ROOT / "start_cluster.sh"), "--nodes", str(nodes)])
    start_wall = time.monotonic() - t0
    if not r.ok:
        raise SystemExit(f"start failed:\n{r.stdout}\n{r.stderr}")
    report = json.loads((state / "state.json").read_text())
    engine_s = report["ready_at"] - engine_started_at(state.parent.parent / "logs" / state.name / "engine-0.log")
    t0 = time.monotonic()
    s = on_head(cluster, [str(ROOT / ".venv/bin/sparkhelpers"), "cluster", "stop", "--json"])
    stop_wall = time.monotonic() - t0
    if not s.ok:
        raise SystemExit(f"stop failed:\n{s.stdout}\n{s.stderr}")
    docker_s = max(n["docker_s"] for n in json.loads(s.stdout))
    return start_wall, engine_s, stop_wall, docker_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--mode", choices=("native", "ray"), default="native")
    args = ap.parse_args()
    from sparkhelpers import sim

    state_dir = Path(tempfile.mkdtemp(prefix="bench-orch-"))
    name = f"b{os.getpid()}"
    cluster = sim.up(name, args.nodes, state_dir=state_dir, image_on="head")
    try:
        snap = cluster.seed_model("spark1", "Qwen/Qwen3-0.6B")
        floats = 64 * 1024 * 1024  # 256 MiB of weights to copy on the cold run
        weights = (f"import json,struct,sys; h=json.dumps({{'w':{{'dtype':'F32','shape':[{floats}],"
                   f"'data_offsets':[0,{4 * floats}]}}}}).encode(); "
                   f"sys.stdout.buffer.write(struct.pack('<Q',len(h))+h+bytes({4 * floats}))")
        cluster.exec("spark1", f"echo '{{}}' >{snap}/tokenizer.json && python3 -c \"{weights}\" "
                               f">{snap}/model.safetensors").check("completing the snapshot")
        state = Path(cluster.dir) / "spark1" / "state" / "run" / f"sim-{name}"
        rows = [one_run(cluster, state, args.mode, args.nodes) for _ in range(args.runs)]
    finally:
        sim.down(name, state_dir=state_dir)
    print(f"{args.nodes}-node {args.mode} start/stop on the emulated cluster ({os.cpu_count()} cores), seconds:")
    print(f"{'run':<6}{'start':>8}{'engine':>8}{'overhead':>10}{'stop':>8}{'docker':>8}{'overhead':>10}")
    for i, (sw, eng, stw, dk) in enumerate(rows, 1):
        print(f"{i:<6}{sw:>8.2f}{eng:>8.2f}{sw - eng:>10.2f}{stw:>8.2f}{dk:>8.2f}{stw - dk:>10.2f}"
              + ("  (cold: image and model copied)" if i == 1 else ""))
    warm = rows[1:] or rows
    print(f"median warm start overhead {statistics.median(r[0] - r[1] for r in warm):.2f} s, "
          f"stop overhead {statistics.median(r[2] - r[3] for r in warm):.2f} s")


if __name__ == "__main__":
    main()
