"""Is a ready engine still serving? The multi-node rule of ``sparkhelpers status`` (cluster/status.py, issue 12),
applied to one replica: every rank's container runs (``status.rank_problems`` over a read-only probe of each of
the replica's nodes) and a cheap real request is answered (``status.request_problem``, 1 token). ``/health``
alone cannot tell: a native multi-node vLLM keeps answering 200 for minutes after a rank died.

The rule itself lives in cluster/status.py; this module only says which nodes, which key and which model. The
calls block (SSH, HTTP), so the manager runs them in a thread.
"""

from __future__ import annotations

from dataclasses import dataclass

REQUEST_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Target:
    """What to check for one replica."""

    base_url: str
    api_key: str
    model: str  # the name the engine serves (the request check asks for 1 token of it)
    nodes: tuple[str, ...] = ()  # topology names (head, WORKER_HOST entries): the ranks' nodes; () = not a cluster
    cluster: str = ""  # CLUSTER_NAME override of the replica ("" = the configured one)


def request_problem(target: Target) -> str:
    """'' when a 1-token completion is answered with 200, else why not (one line)."""
    from sparkhelpers.cluster.status import request_problem as ask

    return ask(target.base_url, target.api_key, target.model, timeout=REQUEST_TIMEOUT_S)


def rank_problems(target: Target, spark_cfg=None) -> list[str]:  # noqa: ANN001
    """Why the replica's ranks are not all running ([] when they are): one probe per node, in parallel.
    A node that cannot be looked at is a problem too (its rank cannot be vouched for)."""
    if not target.nodes:
        return []
    from sparkhelpers.cluster.status import probe_node
    from sparkhelpers.cluster.status import rank_problems as judge
    from sparkhelpers.config import load_config
    from sparkhelpers.runner import Runner
    from sparkhelpers.topology import topology
    from sparkhelpers.validate import cluster_name

    cfg = spark_cfg or load_config()
    if target.cluster:
        cfg = cfg.with_overrides(CLUSTER_NAME=target.cluster)
    topo, runner = topology(cfg), Runner()
    nodes = [topo.pick("head" if n in ("local", "localhost") else n) for n in target.nodes]
    name = cluster_name(cfg.get("CLUSTER_NAME", "spark"))
    per_node = runner.parallel(lambda n: probe_node(cfg, runner, n, name), nodes)
    unreachable = [f"{n['node']}: {n['error']}" for n in per_node if n.get("error")]
    if not unreachable and not any(c["state"] == "running" for n in per_node for c in n.get("containers", [])):
        return [f"no container of cluster {name} runs on {', '.join(target.nodes)}"]  # status: "not running"
    return unreachable + judge(per_node)
