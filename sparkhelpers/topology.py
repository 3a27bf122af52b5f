"""Who the cluster is, and how it is laid out: the one home of both rules.

Topology: rank 0 is the head (``HEAD_HOST``, empty = this machine), ranks 1.. are ``WORKER_HOST`` in
order, each with its ``WORKER_IB_IP`` entry (matched by position). Every node is reached with the same
SSH settings (``WORKER_USER``, ``SSH_KEY``, ``SSH_OPTIONS`` split once with shlex, so quoting works the
same for every command, ``SSH_CONNECT_TIMEOUT``). ``endpoint()`` is the URL every client uses (start,
status, smoke, bench, sweep): ``VLLM_HOST`` when it is a real address; for a wildcard (0.0.0.0, ::)
loopback when the head is this machine, else the head's address.

Layout (``choose_layout``): how many nodes serve and with which tensor (TP) and pipeline (PP) sizes.
A GB10 node has one GPU, so nodes = TP x PP always.

1. The node count: ``--solo`` is 1; ``--nodes N`` is N; else a TP set by the user (TENSOR_PARALLEL),
   else the preset's TP, gives TP x PP; else (a raw repo, nothing set) every configured node.
   A one-node runtime (llama-cpp) defaults to 1 and refuses more.
2. TP: the user's TENSOR_PARALLEL always; else the preset's unless --nodes/--solo asked for a count
   (then the count spreads the model: TP = count // PP); else count // PP.
3. PP: the user's PIPELINE_PARALLEL, else the preset's, else 1.
4. nodes must equal TP x PP, and the count must fit the configured nodes (head + workers).
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from sparkhelpers import validate as v
from sparkhelpers.config import Config
from sparkhelpers.errors import SparkError, UsageError
from sparkhelpers.runner import LOCAL, Host, Multiplex, control_dir

if TYPE_CHECKING:
    from sparkhelpers.models.catalog import ModelSpec

WILDCARDS = ("0.0.0.0", "::", "")
SINGLE_NODE_RUNTIMES = ("llama-cpp",)
MAX_NODES = 8  # a Spark cluster: 1 to 8 nodes, one GB10 GPU each


@dataclass(frozen=True)
class Node:
    rank: int
    name: str  # "head", or the worker's WORKER_HOST entry
    host: Host  # how commands reach it (LOCAL for a head that is this machine)
    fabric_ip: str = ""  # HEAD_IP / WORKER_IB_IP when configured ("" = discover)
    fabric2_ip: str = ""  # the second twin's (HEAD_IP2 / WORKER_IB_IP2; "" = bulk copies use one twin)

    @property
    def twin_ips(self) -> tuple[str, ...]:
        """The fabric addresses bulk copies may use, twin 1 first (empty: none configured)."""
        return tuple(ip for ip in (self.fabric_ip, self.fabric2_ip) if ip)

    @property
    def is_head(self) -> bool:
        return self.rank == 0


@dataclass(frozen=True)
class Topology:
    nodes: tuple[Node, ...]
    listen: str  # VLLM_HOST
    port: int  # VLLM_PORT

    @property
    def head(self) -> Node:
        return self.nodes[0]

    @property
    def workers(self) -> tuple[Node, ...]:
        return self.nodes[1:]

    @property
    def remote_head(self) -> bool:
        """True when this machine is a control machine, not the head."""
        return not self.head.host.is_local

    def endpoint(self) -> str:
        return endpoint_url(self.listen, self.port, self.head.host)

    def pick(self, which: str) -> Node:
        """A node by rank, "head", WORKER_HOST entry or fabric IP (for --node options)."""
        if which.isdigit() and int(which) < len(self.nodes):
            return self.nodes[int(which)]
        for node in self.nodes:
            if which in (node.name, node.host.address, node.fabric_ip) and which:
                return node
        raise UsageError(f"--node {which}: no such node (ranks 0-{len(self.nodes) - 1}: "
                         f"{', '.join(n.name for n in self.nodes)})", fix="pass a rank or a WORKER_HOST entry")


def ssh_options(cfg: Config) -> tuple[str, ...]:
    """SSH_OPTIONS split like a shell would: -o 'ProxyCommand=ssh -W %h:%p bastion' stays one value."""
    raw = cfg.get("SSH_OPTIONS")
    try:
        return tuple(shlex.split(raw))
    except ValueError as exc:
        raise v.bad("SSH_OPTIONS", raw, f"cannot be split into arguments ({exc})", "balance the quotes in it") from None


def ssh_mux(cfg: Config) -> Multiplex | None:
    """Connection sharing as configured (SSH_CONTROL_PERSIST; 0 = none), sockets under SPARK_STATE_DIR."""
    from sparkhelpers.config import state_dir

    persist = v.setting(cfg, "SSH_CONTROL_PERSIST", 30)
    return Multiplex(control_dir(state_dir(cfg)), persist) if persist else None


def host_for(cfg: Config, address: str, key: str = "WORKER_HOST") -> Host:
    """A node reached over SSH with the configured user, key, options, timeout, sharing and bulk cipher."""
    user = v.setting(cfg, "WORKER_USER", "")
    timeout = v.setting(cfg, "SSH_CONNECT_TIMEOUT", 5)
    return Host(v.ssh_host(address, key), user=user, key=cfg.get("SSH_KEY"), options=ssh_options(cfg),
                connect_timeout=timeout, mux=ssh_mux(cfg), bulk_cipher=v.setting(cfg, "SSH_BULK_CIPHER", ""))


def head_host(cfg: Config) -> Host:
    """Rank 0: this machine, or HEAD_HOST reached over SSH (this machine is then a control machine)."""
    address = cfg.get("HEAD_HOST")
    if address in ("", "local", "localhost"):
        return LOCAL
    return host_for(cfg, address, "HEAD_HOST")


def topology(cfg: Config) -> Topology:
    """The nodes as configured, validated once: hosts, duplicates, one WORKER_IB_IP per worker."""
    workers = cfg.get_list("WORKER_HOST")
    ib_ips = cfg.get_list("WORKER_IB_IP")
    ib2_ips = cfg.get_list("WORKER_IB_IP2")
    for key, ips in (("WORKER_IB_IP", ib_ips), ("WORKER_IB_IP2", ib2_ips)):
        if ips and len(ips) != len(workers):
            raise SparkError(f"{key} has {len(ips)} entries but WORKER_HOST has {len(workers)}",
                             fix=f"list one fabric IP per worker, in the order of WORKER_HOST (or leave {key} "
                                 "empty" + (" to discover them)" if key == "WORKER_IB_IP" else ")"))
    if len(set(workers)) != len(workers):
        twice = sorted({w for w in workers if workers.count(w) > 1})
        raise SparkError(f"WORKER_HOST lists {', '.join(twice)} twice",
                         fix="sparkhelpers config set WORKER_HOST 'HOST1 HOST2' (each worker once)")
    head = head_host(cfg)
    if not head.is_local and head.address in workers:
        raise SparkError(f"HEAD_HOST {head.address} is also listed in WORKER_HOST",
                         fix="list only the workers in WORKER_HOST; the head is rank 0")
    for key, ips in (("WORKER_IB_IP", ib_ips), ("WORKER_IB_IP2", ib2_ips)):
        for i, ip in enumerate(ips):
            v.ip(ip, f"{key} (entry {i + 1})")
    nodes = [Node(0, "head", head, v.setting(cfg, "HEAD_IP", ""), v.setting(cfg, "HEAD_IP2", ""))]
    nodes += [Node(i + 1, address, host_for(cfg, address), ib_ips[i] if ib_ips else "",
                   ib2_ips[i] if ib2_ips else "")
              for i, address in enumerate(workers)]
    return Topology(tuple(nodes), v.setting(cfg, "VLLM_HOST", "0.0.0.0"), v.setting(cfg, "VLLM_PORT", 8000))


def node_set(cfg: Config, names: Sequence[str]) -> Topology:
    """The configured nodes narrowed and ordered to ``names`` (e.g. a recipe's or the gateway's placement):
    the first becomes rank 0, the head whose address is the endpoint. A name is a rank, "head", a
    WORKER_HOST entry or a fabric IP; each node keeps its SSH settings and configured fabric IP."""
    topo = topology(cfg)
    if not names:
        return topo
    picked: list[Node] = []
    for name in names:
        node = topo.pick(name)
        if node in picked:
            raise UsageError(f"node {name} is listed twice in the node set", fix="name each node once")
        picked.append(node)
    return replace(topo, nodes=tuple(replace(n, rank=i) for i, n in enumerate(picked)))


def endpoint_url(listen: str, port: int, head: Host = LOCAL) -> str:
    """The URL clients use for an engine listening on ``listen``:``port`` on ``head``."""
    if listen in WILDCARDS:
        host = "127.0.0.1" if head.is_local else head.address
    elif listen.startswith("127.") and not head.is_local:
        raise SparkError(f"VLLM_HOST={listen} listens on the head's loopback only, which this control machine "
                         "cannot reach", fix="sparkhelpers config set VLLM_HOST 0.0.0.0 (or the head's address)")
    else:
        host = listen
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def endpoint(cfg: Config) -> str:
    """The URL every client of the configured cluster uses (no /v1)."""
    return topology(cfg).endpoint()


# ---- layout -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LayoutAsk:
    """What a model asks of the layout, before the flags and the nodes are known."""

    pipeline_parallel: int = 1
    tensor_parallel: int | None = None  # the user's TENSOR_PARALLEL: always wins
    preset_tensor_parallel: int | None = None  # the preset's: yields to --nodes / --solo

    @property
    def fixed_nodes(self) -> int | None:
        tp = self.tensor_parallel or self.preset_tensor_parallel
        return tp * self.pipeline_parallel if tp else None


@dataclass(frozen=True)
class Layout:
    nodes: int
    tensor_parallel: int
    pipeline_parallel: int
    why: str  # where the node count came from, for messages


class LayoutMismatch(SparkError):
    """nodes != TP x PP: the numbers travel with the error, so a caller (a recipe) can say it in its own terms."""

    def __init__(self, message: str, fix: str, *, tensor_parallel: int, pipeline_parallel: int, nodes: int) -> None:
        super().__init__(message, fix)
        self.tensor_parallel, self.pipeline_parallel, self.nodes = tensor_parallel, pipeline_parallel, nodes


def _plural(n: int, word: str = "node") -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def choose_layout(ask: LayoutAsk, *, available: int, nodes: int | None = None, solo: bool = False,
                  runtime: str = "vllm", check: bool = True, name: str = "") -> Layout:
    """The one layout rule (see the module docstring). ``check=False`` skips the available-node check
    (``models show`` describes a preset on any machine). ``name`` names the model in messages."""
    pp = v.check("PIPELINE_PARALLEL", ask.pipeline_parallel)
    if nodes is not None and nodes < 1:
        raise SparkError("--nodes must be at least 1", fix="use --nodes 1 or more, or --solo")
    if runtime in SINGLE_NODE_RUNTIMES:
        count = 1 if solo or nodes is None else nodes
        if count > 1:
            raise SparkError(f"RUNTIME={runtime} serves from one node, but {_plural(count)} were asked for",
                             fix="start with --solo, or use RUNTIME=vllm for a multi-node cluster")
        return Layout(1, 1, 1, "--solo" if solo else f"RUNTIME={runtime}")
    if solo:
        count, why = 1, "--solo"
    elif nodes is not None:
        count, why = nodes, f"--nodes {nodes}"
    elif ask.fixed_nodes:
        count = ask.fixed_nodes
        why = "TENSOR_PARALLEL x PIPELINE_PARALLEL" if ask.tensor_parallel else "the preset"
    else:
        count, why = available, "every configured node"
    if ask.tensor_parallel:
        tp = ask.tensor_parallel
    elif ask.preset_tensor_parallel and not (solo or nodes is not None):
        tp = ask.preset_tensor_parallel
    else:
        tp = max(count // pp, 1)
    v.check("TENSOR_PARALLEL", tp)
    if not check:  # a description (models show): the sizes say how many nodes
        count = tp * pp
    if tp * pp != count:
        raise LayoutMismatch(f"TENSOR_PARALLEL={tp} x PIPELINE_PARALLEL={pp} needs {tp * pp} GPUs, but "
                             f"{_plural(count)} (one GB10 GPU each) {'were' if count != 1 else 'was'} asked for "
                             f"({why})", fix=f"use --nodes {tp * pp}, or set TENSOR_PARALLEL to {count // pp or 1} "
                                             "(empty = one per node)",
                             tensor_parallel=tp, pipeline_parallel=pp, nodes=count)
    if check and count > available:
        have = f"this cluster has {available} (head + WORKER_HOST)"
        raise SparkError(f"--nodes {count} asks for more nodes than {have}" if nodes is not None else
                         f"{name or 'the model'} needs {_plural(count)}; {have}; the count comes from {why}",
                         fix="add workers to WORKER_HOST (sparkhelpers config set WORKER_HOST 'host2 host3') "
                             "or ask for fewer nodes (a model for fewer nodes: switch_model.sh --list)")
    return Layout(count, tp, pp, why)


def layout_for(cfg: Config, spec: ModelSpec, *, nodes: int | None = None, solo: bool = False,
               check: bool = True, topo: Topology | None = None) -> Layout:
    """The layout of ``spec`` (a ModelSpec) on the configured nodes (or ``topo``, a node set) with the
    start flags."""
    return choose_layout(spec.ask, available=len((topo or topology(cfg)).nodes), nodes=nodes, solo=solo,
                         runtime=cfg.get("RUNTIME", "vllm"), check=check, name=spec.name)


def available_nodes(cfg: Config) -> int:
    """Head + workers as configured (without validating the hosts)."""
    return 1 + len(cfg.get_list("WORKER_HOST"))
