"""Host discovery and cluster checks: probe -> HostFacts -> nccl_env / problems / doctor checks.

Public API (used by the cluster helper and the doctor):
    capture(runner, dest, host)         snapshot a host (local: one process; remote: one SSH round trip)
    capture_remote(runner, host, dest)  the same for a worker; returns the snapshot directory
    discover_snapshot(dir) -> HostFacts
    nccl_env(facts) -> dict             this node's NCCL/Gloo/vLLM variables ({} without a fabric)
    host_problems(facts, single_node=)  list of Problem(severity, code, message, fix)
"""

from sparkhelpers.discover.fabric import Problem, host_problems, nccl_env
from sparkhelpers.discover.facts import HostFacts, discover, discover_snapshot
from sparkhelpers.discover.probe import Snapshot, capture, capture_remote

__all__ = ["HostFacts", "Problem", "Snapshot", "capture", "capture_remote", "discover", "discover_snapshot",
           "host_problems", "nccl_env"]
