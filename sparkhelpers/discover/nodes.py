"""The cluster's nodes as the config describes them: the head (this machine) and the workers."""

from __future__ import annotations

from dataclasses import dataclass

from sparkhelpers.config import Config
from sparkhelpers.errors import SparkError
from sparkhelpers.runner import LOCAL, Host


@dataclass(frozen=True)
class Node:
    name: str  # "head", or the worker's address
    host: Host
    fabric_ip: str = ""  # WORKER_IB_IP / HEAD_IP when configured

    @property
    def is_head(self) -> bool:
        return self.host.is_local


def worker_host(cfg: Config, address: str) -> Host:
    return Host(address, user=cfg.get("WORKER_USER"), key=cfg.get("SSH_KEY"),
                options=tuple(cfg.get_list("SSH_OPTIONS")), connect_timeout=cfg.get_int("SSH_CONNECT_TIMEOUT", 5))


def cluster_nodes(cfg: Config) -> list[Node]:
    """Head first, then WORKER_HOST in order, each with its WORKER_IB_IP (matched by position)."""
    workers = cfg.get_list("WORKER_HOST")
    ib_ips = cfg.get_list("WORKER_IB_IP")
    if ib_ips and len(ib_ips) != len(workers):
        raise SparkError(f"WORKER_IB_IP has {len(ib_ips)} entries but WORKER_HOST has {len(workers)}",
                         fix="list one fabric IP per worker, in the order of WORKER_HOST (or leave WORKER_IB_IP empty)")
    if len(set(workers)) != len(workers):
        raise SparkError("WORKER_HOST lists a worker twice", fix="sparkhelpers config set WORKER_HOST 'HOST1 HOST2'")
    nodes = [Node("head", LOCAL, cfg.get("HEAD_IP"))]
    for i, address in enumerate(workers):
        nodes.append(Node(address, worker_host(cfg, address), ib_ips[i] if ib_ips else ""))
    return nodes
