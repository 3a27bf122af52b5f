"""The nodes' memory low-water mark during a benchmark run: how close the run came to running out.

One long-lived session per node (an SSH session, or a local shell for a head that is this machine,
through ``runner.Runner.stream_on``) streams ``MemAvailable`` every ``interval_s``: the sampler is a
shell loop of builtins (``read`` over /proc/meminfo, one ``sleep`` per sample), so a sample costs the
node one fork and the control machine nothing but a line on a pipe; never one SSH call per sample.
On a GB10 the GPU allocates from the same unified memory, so MemAvailable is the engine's headroom.
A node that cannot be reached gives its error in the result, never a failed benchmark.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from sparkhelpers.runner import Host, Runner

KIB_PER_GIB = 1024 * 1024


def sampler_script(interval_s: float) -> str:
    """The node side: ``mem <MemTotal kB> <MemAvailable kB>`` every ``interval_s`` until the pipe closes."""
    return ("s() { t=-; while read -r k v _; do case $k in MemTotal:) t=$v;; "
            "MemAvailable:) echo \"mem $t $v\"; return 0;; esac; done </proc/meminfo; echo \"mem $t -\"; }; "
            f"while s; do sleep {interval_s:g}; done")


def parse_sample(line: str) -> tuple[int | None, int | None] | None:
    """One sampler line -> (MemTotal kB, MemAvailable kB); None for anything else (a login banner, noise).
    A field the node did not report is None."""
    parts = line.split()
    if len(parts) != 3 or parts[0] != "mem" or not all(p.isdigit() or p == "-" for p in parts[1:]):
        return None

    def kib(text: str) -> int | None:
        return int(text) if text.isdigit() else None

    return kib(parts[1]), kib(parts[2])


@dataclass
class NodeTrack:
    """What one node's samples say: first, lowest (and when), last."""

    name: str
    host: str
    total_kib: int | None = None
    first_kib: int | None = None
    min_kib: int | None = None
    last_kib: int | None = None
    min_at_s: float | None = None  # seconds after the sampler started
    samples: int = 0
    error: str = ""
    started: float = field(default_factory=time.monotonic)

    def feed(self, line: str) -> None:
        sample = parse_sample(line)
        if sample is None:
            return
        total, avail = sample
        self.total_kib = total if total is not None else self.total_kib
        if avail is None:
            return
        self.samples += 1
        self.last_kib = avail
        if self.first_kib is None:
            self.first_kib = avail
        if self.min_kib is None or avail < self.min_kib:
            self.min_kib, self.min_at_s = avail, round(time.monotonic() - self.started, 2)

    def summary(self) -> dict:
        def gib(kib: int | None) -> float | None:
            return round(kib / KIB_PER_GIB, 2) if kib is not None else None

        out = {"host": self.host, "samples": self.samples, "mem_total_gib": gib(self.total_kib),
               "mem_available_start_gib": gib(self.first_kib), "mem_available_min_gib": gib(self.min_kib),
               "mem_available_end_gib": gib(self.last_kib), "mem_available_min_kib": self.min_kib,
               "min_at_s": self.min_at_s}
        if self.error:
            out["error"] = self.error
        return out


class Watcher:
    """Samples every node from ``start()`` to ``stop()``; ``stop()`` returns the result's section."""

    def __init__(self, nodes: Sequence[tuple[str, Host]], *, interval_s: float = 0.5,
                 runner: Runner | None = None) -> None:
        self.interval_s = interval_s
        self.runner = runner or Runner()
        self.tracks = [NodeTrack(name, host.label) for name, host in nodes]
        self._hosts = [host for _, host in nodes]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self, first_sample_s: float = 0.0) -> Watcher:
        """Start one sampler per node; wait up to ``first_sample_s`` for every node's first sample (an SSH
        session takes a moment to open: the run should not start before the nodes are watched)."""
        script = sampler_script(self.interval_s)
        for track, host in zip(self.tracks, self._hosts, strict=True):
            t = threading.Thread(target=self._sample, args=(track, host, script), daemon=True,
                                 name=f"node-memory-{track.name}")
            t.start()
            self._threads.append(t)
        deadline = time.monotonic() + first_sample_s
        while time.monotonic() < deadline and any(tr.samples == 0 and not tr.error for tr in self.tracks):
            time.sleep(0.05)
        return self

    def _sample(self, track: NodeTrack, host: Host, script: str) -> None:
        res = self.runner.stream_on(host, script, track.feed, stop=self._stop)
        if not res.ok and not self._stop.is_set():
            track.error = f"sampler ended (exit {res.returncode}): {res.last_line}"[:200]
        elif track.samples == 0:
            track.error = f"no MemAvailable sample ({res.last_line or 'no output'})"[:200]

    def stop(self) -> dict:
        self._stop.set()
        for t in self._threads:
            t.join(10)
        return summarize(self.tracks, self.interval_s)


def summarize(tracks: Sequence[NodeTrack], interval_s: float) -> dict:
    """The result's ``node_memory`` section: per node, and the cluster's lowest point."""
    nodes = {t.name: t.summary() for t in tracks}
    sampled = [t for t in tracks if t.min_kib is not None]
    if not sampled:
        reasons = "; ".join(f"{t.name}: {t.error}" for t in tracks if t.error) or "no node sampled"
        return {"available": False, "reason": reasons[:300], "nodes": nodes}
    low = min(sampled, key=lambda t: t.min_kib or 0)
    return {"available": True, "interval_s": interval_s, "nodes": nodes, "min_node": low.name,
            "min_mem_available_gib": nodes[low.name]["mem_available_min_gib"]}


def cluster_nodes(cfg, base_url: str) -> list[tuple[str, Host]]:
    """The configured nodes when ``base_url`` is served by this cluster (its host is loopback with a local
    head, or one of the nodes' addresses); else none: a run against another server samples nothing."""
    from sparkhelpers.errors import SparkError
    from sparkhelpers.topology import topology

    try:
        topo = topology(cfg)
    except SparkError:
        return []
    host = (urlsplit(base_url).hostname or "").lower()
    addresses = {n.host.address.lower() for n in topo.nodes if not n.host.is_local}
    addresses |= {n.fabric_ip for n in topo.nodes if n.fabric_ip}
    local = topo.head.host.is_local and (host in ("localhost", "::1") or host.startswith("127."))
    if not (local or host in addresses):
        return []
    return [(n.name, n.host) for n in topo.nodes]
