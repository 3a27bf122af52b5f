"""The cluster's nodes for discovery and the doctor: exactly the topology's (sparkhelpers.topology)."""

from __future__ import annotations

from sparkhelpers.config import Config
from sparkhelpers.runner import Host
from sparkhelpers.topology import Node, host_for, topology

__all__ = ["Node", "cluster_nodes", "worker_host"]


def worker_host(cfg: Config, address: str) -> Host:
    """A worker (or any node) reached with the configured SSH settings."""
    return host_for(cfg, address)


def cluster_nodes(cfg: Config) -> list[Node]:
    """Head first (this machine or HEAD_HOST), then WORKER_HOST in order, each with its WORKER_IB_IP."""
    return list(topology(cfg).nodes)
