"""A control machine for an emulated cluster: the host itself, plugged into the cluster's management LAN.

Only its network is its own (a namespace ``sparksim-<name>-ctl`` with one veth on the management bridge,
no route to the fabric twins); files, processes and tools are the host's. So a command run with
``Control.argv`` is the checkout on this machine driving the cluster from outside every node, as an
operator's laptop or a bastion does, over SSH only. ``down`` (and a cluster's ``down``) removes it.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from sparkhelpers.runner import Runner
from sparkhelpers.sim import netplan
from sparkhelpers.sim.cluster import NODE_PATH, Cluster

HOST_NUMBER = 250  # the control machine's address in the management subnet (nodes are .11, .12, ...)
MGMT_BRIDGE = "br-mg"


@dataclass(frozen=True)
class Control:
    cluster: Cluster
    netns: str
    address: str

    @property
    def dir(self) -> Path:
        return Path(self.cluster.dir) / "control"

    @property
    def profile(self) -> str:
        return str(self.dir / "profile.env")

    def argv(self, cmd: list[str], env: dict[str, str] | None = None) -> list[str]:
        """``cmd`` on the control machine, with a clean environment (like a login on a laptop)."""
        base = {"PATH": NODE_PATH, "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8",
                "SPARK_CONFIG": self.profile, **(env or {})}
        return ["ip", "netns", "exec", self.netns, "env", "-i", *[f"{k}={v}" for k, v in base.items()], *cmd]

    def run(self, cmd: list[str], *, env: dict[str, str] | None = None, timeout: float | None = 120,
            runner: Runner | None = None):  # noqa: ANN201
        return (runner or Runner()).run(self.argv(cmd, env), timeout=timeout, host="control")


def netns_name(name: str) -> str:
    return f"{netplan.PREFIX}-{name}-ctl"


def control_address(cluster: Cluster) -> tuple[str, int]:
    subnet = ipaddress.ip_network(cluster.facts[cluster.head.name]["mgmt_subnet"], strict=False)
    return str(subnet.network_address + HOST_NUMBER), subnet.prefixlen


def profile_text(cluster: Cluster, control_dir: Path) -> str:
    """The cluster's profile as a control machine uses it: the head is HEAD_HOST, reached over SSH with the
    cluster's key (its path is the same on the nodes, so the head uses it for its workers too)."""
    head, workers = cluster.head, cluster.workers
    return "\n".join([
        f"# sparkhelpers profile for a control machine of the emulated cluster {cluster.name!r} (sim control up).",
        f"CLUSTER_NAME=sim-{cluster.name}",
        f"HEAD_HOST={head.mgmt_ip}",
        f"WORKER_HOST='{' '.join(w.mgmt_ip for w in workers)}'",
        f"WORKER_IB_IP='{' '.join(w.fabric_ip for w in workers)}'",
        "WORKER_USER=root",
        f"SSH_KEY={cluster.dir}/id_ed25519",
        "SSH_OPTIONS='-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR'",  # host keys change every bring-up
        f"HEAD_IP={head.fabric_ip}",
        "HF_CACHE=/raid/hf-cache",
        f"VLLM_IMAGE={cluster.image}",
        f"SPARK_STATE_DIR={cluster.dir}/{head.name}/state",  # a path on the nodes (the head's run dirs)
        f"RESULTS_DIR={control_dir}/results",
    ]) + "\n"


def up(cluster: Cluster, runner: Runner | None = None) -> Control:
    """Attach the control machine to ``cluster``'s management LAN (idempotent: replaces an old one)."""
    runner = runner or Runner()
    ns = netns_name(cluster.name)
    down(cluster, runner)
    address, prefix = control_address(cluster)
    switch = netplan.switch_ns(cluster.name)
    runner.run(["ip", "netns", "add", ns]).check(f"creating network namespace {ns}")
    steps = [
        ["ip", "link", "add", "mg-ctl", "netns", switch, "type", "veth", "peer", "name", "mgmt0", "netns", ns],
        ["ip", "-n", switch, "link", "set", "mg-ctl", "master", MGMT_BRIDGE, "up"],
        ["ip", "-n", ns, "link", "set", "lo", "up"],
        ["ip", "-n", ns, "addr", "add", f"{address}/{prefix}", "dev", "mgmt0"],
        ["ip", "-n", ns, "link", "set", "mgmt0", "up"],
    ]
    try:
        for step in steps:
            runner.run(step).check("wiring the control machine")
    except BaseException:
        down(cluster, runner)
        raise
    control = Control(cluster, ns, address)
    control.dir.mkdir(parents=True, exist_ok=True)
    os.chmod(control.dir, 0o700)
    Path(control.profile).write_text(profile_text(cluster, control.dir))
    os.chmod(control.profile, 0o600)
    return control


def down(cluster: Cluster, runner: Runner | None = None) -> None:
    """Remove the control machine's namespace (its veth goes with it); idempotent."""
    runner = runner or Runner()
    ns = netns_name(cluster.name)
    if ns in [ln.split()[0] for ln in runner.run(["ip", "netns", "list"], mutating=False).stdout.splitlines()
              if ln.strip()]:
        runner.run(["ip", "netns", "del", ns])
