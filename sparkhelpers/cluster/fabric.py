"""Each node's fabric facts for the plan: configured values win, discovery fills the gaps.

Discovery (``sparkhelpers.discover``) runs on every node of the plan in parallel, one SSH round trip
each, only when the configuration leaves something open (fabric IP, interface or HCAs). A multi-node
start looks at its nodes first anyway (``look_all``: the fabric facts its gate needs and its preflight
probe, in one round trip per node), and discovery reads those.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from sparkhelpers.cluster.plan import DISCOVER, NodeNet, fabric_from_config
from sparkhelpers.config import Config
from sparkhelpers.errors import SparkError
from sparkhelpers.runner import Host, Runner
from sparkhelpers.topology import Topology, topology


@dataclass(frozen=True)
class NodeLook:
    """One node seen in one round trip at the start: its fabric facts and, when a preflight probe was
    given, that probe's script and output (the preflight reuses the output only for the same script)."""

    facts: object  # discover.HostFacts
    probe_script: str = ""
    probe_out: str = ""


def look(runner: Runner, host: Host, probe_script: str = "") -> NodeLook:
    """``host``'s fabric facts (capture.sh's fabric scope) and, beside them in the same round trip, the
    read-only ``probe_script``. An unreachable node is one line naming it."""
    from sparkhelpers.discover import discover
    from sparkhelpers.discover.probe import MemorySnapshot, capture_with

    try:
        snapshot, out = capture_with(runner, host, scope="fabric", also=probe_script)
    except SparkError as exc:
        if "ssh failed" in exc.message:
            raise SparkError(f"node {host.label} is unreachable over SSH: {exc.message.rsplit(': ', 1)[-1]}",
                             fix=f"check that {host.address} is up and `ssh -o BatchMode=yes {host.target} true` "
                                 "works, or start fewer nodes with --nodes") from None
        raise
    return NodeLook(discover(MemorySnapshot(snapshot)), probe_script, out)


def look_all(runner: Runner, nodes: list, probes: dict[int, str]) -> dict[int, NodeLook]:
    """``look`` at every node (topology nodes) in parallel, each with its probe script from ``probes``."""
    looks = runner.parallel(lambda n: look(runner, n.host, probes.get(n.rank, "")), list(nodes))
    return {n.rank: one for n, one in zip(nodes, looks, strict=True)}


def placeholders(configured: dict[int, NodeNet]) -> dict[int, NodeNet]:
    """The configured facts with ``DISCOVER`` where discovery would answer (a dry run shows them so)."""
    return {rank: NodeNet(net.fabric_ip or DISCOVER, net.ifname or DISCOVER, net.hcas or DISCOVER, net.gid_index)
            for rank, net in configured.items()}


def resolve_fabric(cfg: Config, runner: Runner, count: int, topo: Topology | None = None,
                   looks: dict[int, NodeLook] | None = None) -> dict[int, NodeNet]:
    """Fabric facts of the first ``count`` nodes of the topology (or node set ``topo``). Under --dry-run
    (``runner.dry_run``) nothing is asked: what discovery would fill in is shown as ``DISCOVER``.
    ``looks``: nodes already seen during this start (by rank; ``look_all``) are not asked again; the
    ones discovery has to ask are added to it, so the start's gate does not capture them twice."""
    from sparkhelpers.discover import nccl_env

    topo = topo or topology(cfg)
    configured = fabric_from_config(topo, cfg, count)
    if count == 1 or all(n.fabric_ip and n.ifname and n.hcas for n in configured.values()):
        return configured
    nodes = topo.nodes[:count]
    if runner.dry_run:
        return placeholders(configured)
    looks = {} if looks is None else looks
    looks.update(look_all(runner, [n for n in nodes if n.rank not in looks], {}))
    out: dict[int, NodeNet] = {}
    for node in nodes:
        net, env = configured[node.rank], nccl_env(looks[node.rank].facts)
        if not env and not (net.fabric_ip and net.ifname):
            name = "the head" if node.is_head else node.name
            raise SparkError(f"discovery found no usable ConnectX-7 fabric on {name}",
                             fix="run `sparkhelpers discover` there for details, or set HEAD_IP/WORKER_IB_IP, "
                                 "FABRIC_IF and NCCL_IB_HCA")
        out[node.rank] = NodeNet(fabric_ip=net.fabric_ip or env.get("VLLM_HOST_IP", ""),
                                 ifname=net.ifname or env.get("NCCL_SOCKET_IFNAME", ""),
                                 hcas=net.hcas or env.get("NCCL_IB_HCA", ""),
                                 gid_index=net.gid_index or env.get("NCCL_IB_GID_INDEX", ""))
    return out


# vLLM's Ray-less multi-node launch (`--nnodes/--node-rank/--master-addr/--headless`) arrived with
# "[V1] Support MP Executor for multi node distributed inference" (vllm-project/vllm#23691, merged
# 2025-08-26), first released in 0.10.2. Older images need LAUNCH_MODE=ray.
NATIVE_MIN_VLLM = (0, 10, 2)


def parse_version(text: str) -> tuple[int, ...] | None:
    m = re.search(r"\b(\d+)\.(\d+)\.(\d+)", text)
    return tuple(int(x) for x in m.groups()) if m else None


def native_supported(runner: Runner, image: str, cache: Path, *, probe: bool = True,
                     head: Host | None = None) -> bool | None:
    """Whether the head's image can launch Ray-less (None = unknown: the default, native, is used).
    The answer is cached per image ID, because `vllm --version` imports vLLM (seconds on a Spark).
    A dry run of a remote head asks nothing (None)."""
    head = head or Host("local")
    if runner.dry_run and not head.is_local:
        return None
    r = runner.on(head, ["docker", "image", "inspect", "--format", "{{.Id}}", image], timeout=30, mutating=False)
    image_id = r.stdout.strip()
    if not r.ok or not image_id:
        return None  # preflight reports the missing image with its fix
    known = {}
    with contextlib.suppress(OSError, ValueError):
        known = json.loads(cache.read_text())
    if image_id not in known:
        if not probe:
            return None
        v = runner.on(head, ["docker", "run", "--rm", "--pull", "never", "--network", "none", "--entrypoint", "vllm",
                             image, "--version"], timeout=300, mutating=False)
        version = parse_version(v.stdout) if v.ok else None
        known[image_id] = ".".join(map(str, version)) if version else ""
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(known, indent=1) + "\n")
    version = parse_version(known[image_id])
    return None if version is None else version >= NATIVE_MIN_VLLM
