"""The start's fabric gate: the doctor's own fabric and parity rules, run before any container starts,
and the bounded diagnosis of a rank that cannot reach its peers while the start waits for health.

``start_gate`` snapshots every node (one SSH round trip each, in parallel), keeps the doctor checks
that decide whether ranks can talk (twins up, subnets, unique IPs, MTU equal across the link,
NVIDIA driver and kernel parity) and runs the doctor's no-fragment pings at the MTU from the head
over each twin. CUDA parity follows from driver parity (the driver fixes the CUDA version it
reports) and image-ID parity (the start's image phase). A failure is one line per check naming the
node, the twin and the fix.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sparkhelpers.discover import checks as ck
from sparkhelpers.discover.doctor import fabric_pings
from sparkhelpers.discover.fabric import RECOMMENDED_MTU
from sparkhelpers.discover.facts import discover_snapshot
from sparkhelpers.discover.nodes import Node
from sparkhelpers.discover.probe import capture
from sparkhelpers.errors import SparkError
from sparkhelpers.runner import Runner

# Doctor checks that decide whether the ranks can reach each other (the rest stay doctor-only).
GATE_CHECKS = frozenset({"fabric", "twins", "twin-subnets", "subnet-match", "unique-ips", "mtu-match",
                         "driver-match", "kernel-match", "gpu-match", "same-port", "worker-ib-ip"})
# Log lines of a rank that cannot reach its peers: torch's rendezvous/TCPStore client, Gloo, NCCL
# (socket bootstrap and the RDMA data path), Ray's GCS client, and the sim's stand-ins of them.
PEER_ERROR = re.compile(
    r"failed to connect to|could not reach the master|Connection (?:refused|timed out|reset)|No route to host|"
    r"Network is unreachable|errno: 11[0-3]|DistNetworkError|TCPStore|rendezvous.*(?:timed out|failed)|"
    r"NCCL (?:WARN|error)|ncclSystemError|ncclRemoteError|IBV_WC_\w+_ERR|Unable to connect to GCS|"
    r"remote process exited or there was a network error", re.I)
MAX_LOG_LINES = 3


def _in_gate(check: ck.Check) -> bool:
    return check.name in GATE_CHECKS or check.name.startswith("ping-")


def gate_checks(nodes: list[ck.NodeFacts], mtu: int = RECOMMENDED_MTU) -> list[ck.Check]:
    """The doctor's static checks that the start gates on (pure: snapshots in, checks out)."""
    return [c for c in ck.static_checks(nodes, ck.Plan(mtu=mtu)) if _in_gate(c)]


def one_line(check: ck.Check, *, with_fix: bool = True) -> str:
    """``NODE: what is wrong (fix: what to do)`` -- the form the start prints per check."""
    where = "across nodes" if check.node == ck.CLUSTER else check.node
    return f"{where}: {check.message}" + (f" (fix: {check.fix})" if check.fix and with_fix else "")


@dataclass
class GateResult:
    checks: list[ck.Check] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    facts: list[ck.NodeFacts] = field(default_factory=list)
    mtu: int = RECOMMENDED_MTU

    @property
    def failures(self) -> list[ck.Check]:
        return [c for c in self.checks if c.status == "fail"]

    @property
    def warnings(self) -> list[ck.Check]:
        return [c for c in self.checks if c.status == "warn"]

    def recheck(self, runner: Runner) -> list[ck.Check]:
        """The live part again (pings from the head, no SSH): failures only. [] when nothing to ping."""
        if len(self.facts) < 2:
            return []
        return [c for c in live_pings(runner, self.nodes, self.facts, self.mtu) if c.status == "fail"]

    def raise_on_failure(self) -> None:
        bad = self.failures
        if not bad:
            return
        lines = [one_line(c, with_fix=False) for c in bad]
        fixes = dict.fromkeys(c.fix for c in bad if c.fix)
        raise SparkError("fabric preflight failed, nothing was started: " + "; ".join(lines),
                         fix="; then ".join(fixes) or "run ./checkout_setup.sh --quick for the full report")


def _snapshot_all(runner: Runner, nodes: list[Node], work: Path, known: Mapping[int, object]) -> list[ck.NodeFacts]:
    def one(node: Node) -> ck.NodeFacts:
        if node.rank in known:  # captured moments ago by the start's fabric discovery
            return ck.NodeFacts(node.name, known[node.rank], node.is_head)
        try:
            path = capture(runner, work / node.name.replace("/", "_"), node.host)
        except SparkError as exc:
            raise SparkError(f"node {node.name} is unreachable over SSH: {exc.message.rsplit(': ', 1)[-1]}",
                             fix=f"check that {node.host.address} is up and `ssh -o BatchMode=yes "
                                 f"{node.host.target} true` works, or start fewer nodes with --nodes") from None
        return ck.NodeFacts(node.name, discover_snapshot(str(path)), node.is_head)

    return runner.parallel(one, nodes)


def live_pings(runner: Runner, nodes: list[Node], facts: list[ck.NodeFacts], mtu: int) -> list[ck.Check]:
    """The doctor's no-fragment pings from the head to every worker over each twin (in parallel)."""
    head = next(f for f in facts if f.is_head)
    head_host = next(n.host for n in nodes if n.is_head)  # HEAD_HOST: the pings run on the head, not here
    pairs = [(n, f) for n, f in zip(nodes, facts, strict=True) if not n.is_head]
    results = runner.parallel(lambda p: fabric_pings(runner, head.facts, p[0], p[1].facts, mtu, head_host), pairs)
    return [c for result in results for c in result]


def start_gate(runner: Runner, nodes: list[Node], *, mtu: int = RECOMMENDED_MTU,
               known: Mapping[int, object] | None = None) -> GateResult:
    """Snapshot every node, judge the fabric and parity, ping over each twin. Head first in ``nodes``.
    ``known``: facts by rank already captured during this start (those nodes are not asked again)."""
    if len(nodes) < 2 or runner.dry_run:
        return GateResult()
    work = Path(tempfile.mkdtemp(prefix="sparkhelpers-gate-"))
    try:
        facts = _snapshot_all(runner, nodes, work, known or {})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = GateResult(gate_checks(facts, mtu), nodes=list(nodes), facts=facts, mtu=mtu)
    if not result.failures:  # a ping over a twin already known to be down only repeats the failure
        result.checks += [c for c in live_pings(runner, nodes, facts, mtu) if _in_gate(c)]
    return result


def peer_error_lines(log_text: str, limit: int = MAX_LOG_LINES) -> list[str]:
    """The last few lines of an engine/Ray log that say a rank cannot reach its peers (pure)."""
    hits = [ln.strip() for ln in log_text.splitlines() if PEER_ERROR.search(ln)]
    return hits[-limit:]


def still_failing(log_text: str, last: int = 5) -> bool:
    """True when one of the log's last few lines is a peer error (the rank has not got past it)."""
    tail = [ln for ln in log_text.splitlines() if ln.strip()][-last:]
    return any(PEER_ERROR.search(ln) for ln in tail)


@dataclass
class PeerWatch:
    """Peer-error lines per rank over time (pure). A rank still failing to reach its peers ``grace_s``
    after its first such line is stuck (a rank that starts before its master logs a few, then joins)."""

    grace_s: float = 90.0
    first_seen: dict[str, float] = field(default_factory=dict)

    def observe(self, node: str, log_text: str, now: float) -> list[str]:
        """Look at ``node``'s log tail; its peer-error lines when it has been stuck too long, else []."""
        if not still_failing(log_text):
            self.first_seen.pop(node, None)
            return []
        self.first_seen.setdefault(node, now)
        return peer_error_lines(log_text) if now - self.first_seen[node] >= self.grace_s else []


def stuck_message(node: str, lines: list[str], broken: list[ck.Check]) -> str:
    """One line: which rank cannot reach its peers, what the live re-check says, its own log lines."""
    parts = [f"{node} cannot reach its peers"]
    if broken:
        parts.append("live fabric re-check: " + "; ".join(c.message if c.node == node else one_line(c, with_fix=False)
                                                        for c in broken))
    if lines:
        parts.append("its log: " + " | ".join(lines))
    return "; ".join(parts)
