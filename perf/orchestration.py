#!/usr/bin/env python3
"""Orchestration overhead of start_cluster.sh and stop_cluster.sh, measured on the emulated cluster.

Usage: perf/orchestration.py [--nodes N] [--runs R] [--mode native|ray] [--no-count]   (as root: it runs the sim)

start overhead = wall time of start_cluster.sh (run on the head, to "ready" including the chat check)
                 minus the engine's own time to ready (its first log line on the head to /health 200).
stop overhead  = wall time of `sparkhelpers cluster stop` minus the longest time docker itself took to
                 stop and remove the containers on one node.
Run 1 is cold (the image and the model are copied to the workers); the others are warm.

SSH is counted two ways per node: `ssh` invocations made on the head (a logging wrapper first on PATH;
rsync's and scripts' own ssh calls included; `ssh -O` control commands listed apart) and SSH handshakes
each node's sshd accepted (its log), i.e. TCP connections. With connection multiplexing the second is the
one that costs: a multiplexed invocation opens a channel on an existing connection. --no-count runs
without the wrapper (its fork costs about 5 ms a call).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NODE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class Run:
    start_wall: float
    engine_s: float
    stop_wall: float
    docker_s: float
    phases: dict[str, float]
    calls: dict[str, Counter] = field(default_factory=dict)  # "start"/"stop" -> node -> ssh invocations
    handshakes: dict[str, Counter] = field(default_factory=dict)  # "start"/"stop" -> node -> sshd accepts


class SshCount:
    """A logging `ssh` wrapper on the head's PATH, and the nodes' sshd logs."""

    def __init__(self, cluster) -> None:  # noqa: ANN001
        self.cluster = cluster
        self.dir = Path(cluster.dir) / "ssh-count"
        self.log = self.dir / "calls.log"
        (self.dir / "bin").mkdir(parents=True, exist_ok=True)
        wrapper = self.dir / "bin" / "ssh"
        wrapper.write_text(f"#!/bin/bash\na=\"$*\"\nprintf '%s\\n' \"${{a//$'\\n'/ }}\" >>{self.log}\n"
                           "exec /usr/bin/ssh \"$@\"\n")
        wrapper.chmod(0o755)
        self.log.touch()
        self.addresses = {addr: n.name for n in cluster.nodes for addr in (n.mgmt_ip, n.fabric_ip) if addr}

    @property
    def path(self) -> str:
        return f"{self.dir / 'bin'}:{NODE_PATH}"

    def mark(self) -> tuple[int, dict[str, int]]:
        accepts = {n.name: self._accepts(n.name) for n in self.cluster.nodes}
        return len(self.log.read_text().splitlines()), accepts

    def since(self, mark: tuple[int, dict[str, int]]) -> tuple[Counter, Counter]:
        lines, accepts = mark
        calls: Counter = Counter()
        for line in self.log.read_text().splitlines()[lines:]:
            if re.search(r"(^|\s)-O\s", line):
                calls["ssh -O (local)"] += 1
                continue
            node = next((name for addr, name in self.addresses.items() if re.search(rf"\b{re.escape(addr)}\b",
                                                                                  line)), "other")
            calls[node] += 1
        done = Counter({n.name: self._accepts(n.name) - accepts[n.name] for n in self.cluster.nodes})
        return calls, done

    def _accepts(self, node: str) -> int:
        log = self.cluster.node_dir(node) / "sshd.log"
        return log.read_text(errors="replace").count("Accepted publickey") if log.exists() else 0


def on_head(cluster, argv: list[str], path: str = NODE_PATH, timeout: float = 600):  # noqa: ANN001, ANN201
    env = [f"PATH={path}", f"SPARK_CONFIG={cluster.profile}", "MAX_MODEL_LEN=2048", "START_TIMEOUT=300",
           "STOP_TIMEOUT=10"]
    return cluster.exec("spark1", ["env", *env, *argv], timeout=timeout)


def engine_started_at(log: Path) -> float:
    """Epoch of the engine's first line ("sparkhelpers: 2026-...Z starting ...") in the head's log."""
    stamp = log.read_text().splitlines()[0].split()[1]
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


def one_run(cluster, state: Path, mode: str, nodes: int, count: SshCount | None) -> Run:  # noqa: ANN001
    path = count.path if count else NODE_PATH
    mark = count.mark() if count else None
    t0 = time.monotonic()
    r = on_head(cluster, ["env", f"LAUNCH_MODE={mode}", str(ROOT / "start_cluster.sh"), "--nodes", str(nodes)], path)
    start_wall = time.monotonic() - t0
    if not r.ok:
        raise SystemExit(f"start failed:\n{r.stdout}\n{r.stderr}")
    started = count.since(mark) if count else None
    report = json.loads((state / "state.json").read_text())
    engine_s = report["ready_at"] - engine_started_at(state.parent.parent / "logs" / state.name / "engine-0.log")
    mark = count.mark() if count else None
    t0 = time.monotonic()
    s = on_head(cluster, [str(ROOT / ".venv/bin/sparkhelpers"), "cluster", "stop", "--json"], path)
    stop_wall = time.monotonic() - t0
    if not s.ok:
        raise SystemExit(f"stop failed:\n{s.stdout}\n{s.stderr}")
    docker_s = max(n["docker_s"] for n in json.loads(s.stdout))
    run = Run(start_wall, engine_s, stop_wall, docker_s, report.get("phases_s", {}))
    if count:
        stopped = count.since(mark)
        run.calls = {"start": started[0], "stop": stopped[0]}
        run.handshakes = {"start": started[1], "stop": stopped[1]}
    return run


def seed(cluster) -> None:  # noqa: ANN001
    snap = cluster.seed_model("spark1", "Qwen/Qwen3-0.6B")
    floats = 64 * 1024 * 1024  # 256 MiB of weights to copy on the cold run
    weights = (f"import json,struct,sys; h=json.dumps({{'w':{{'dtype':'F32','shape':[{floats}],"
               f"'data_offsets':[0,{4 * floats}]}}}}).encode(); "
               f"sys.stdout.buffer.write(struct.pack('<Q',len(h))+h+bytes({4 * floats}))")
    cluster.exec("spark1", f"echo '{{}}' >{snap}/tokenizer.json && python3 -c \"{weights}\" "
                           f">{snap}/model.safetensors").check("completing the snapshot")


def report(rows: list[Run], args: argparse.Namespace) -> None:
    print(f"{args.nodes}-node {args.mode} start/stop on the emulated cluster ({os.cpu_count()} cores), seconds:")
    print(f"{'run':<6}{'start':>8}{'engine':>8}{'overhead':>10}{'stop':>8}{'docker':>8}{'overhead':>10}")
    for i, r in enumerate(rows, 1):
        print(f"{i:<6}{r.start_wall:>8.2f}{r.engine_s:>8.2f}{r.start_wall - r.engine_s:>10.2f}{r.stop_wall:>8.2f}"
              f"{r.docker_s:>8.2f}{r.stop_wall - r.docker_s:>10.2f}" + ("  (cold: image and model copied)"
                                                                         if i == 1 else ""))
    warm = rows[1:] or rows
    phases = sorted({p for r in warm for p in r.phases}, key=lambda p: list(warm[0].phases).index(p)
                    if p in warm[0].phases else 99)
    print("median warm phases: " + ", ".join(f"{p} {statistics.median(r.phases.get(p, 0) for r in warm):.2f}"
                                              for p in phases))
    if warm[0].calls:
        for what in ("start", "stop"):
            calls = warm[-1].calls[what]
            shakes = warm[-1].handshakes[what]
            print(f"last warm {what}: ssh invocations on the head per target: "
                  + (", ".join(f"{k} {v}" for k, v in sorted(calls.items())) or "none")
                  + "; SSH handshakes accepted per node: " + ", ".join(f"{k} {v}" for k, v in sorted(shakes.items())))
    print(f"median warm start overhead {statistics.median(r.start_wall - r.engine_s for r in warm):.2f} s, "
          f"stop overhead {statistics.median(r.stop_wall - r.docker_s for r in warm):.2f} s "
          f"(load average {os.getloadavg()[0]:.2f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--mode", choices=("native", "ray"), default="native")
    ap.add_argument("--no-count", action="store_true", help="no ssh-counting wrapper (pure timing)")
    args = ap.parse_args()
    from sparkhelpers import sim

    state_dir = Path(tempfile.mkdtemp(prefix="bench-orch-"))
    name = f"b{os.getpid()}"
    cluster = sim.up(name, args.nodes, state_dir=state_dir, image_on="head")
    try:
        count = None
        seed(cluster)
        count = None if args.no_count else SshCount(cluster)
        state = Path(cluster.dir) / "spark1" / "state" / "run" / f"sim-{name}"
        rows = [one_run(cluster, state, args.mode, args.nodes, count) for _ in range(args.runs)]
    finally:
        if count:
            kept = state_dir / "ssh-calls.log"
            kept.write_text(count.log.read_text())
            print(f"every ssh invocation: {kept}")
        sim.down(name, state_dir=state_dir)
    report(rows, args)


if __name__ == "__main__":
    main()
