"""Emulated DGX Spark cluster (test infrastructure): nodes in namespaces with real sshd, dockerd,
rsync, fake GB10/ConnectX-7 facts and a locally built engine image. See README "Emulated cluster"."""

from sparkhelpers.sim.api import down, get, recorded_names, status, up
from sparkhelpers.sim.cluster import Cluster, Node

__all__ = ["Cluster", "Node", "down", "get", "recorded_names", "status", "up"]
