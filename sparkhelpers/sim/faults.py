"""Faults on demand for the reliability tests: each one does to an emulated node what the real event
does to a Spark (a pulled cable is a switch port going down, a dead box stops answering at all)."""

from __future__ import annotations

import json
import os
import time

from sparkhelpers.errors import SparkError, UsageError
from sparkhelpers.runner import Runner
from sparkhelpers.sim import cluster as cl
from sparkhelpers.sim import netplan
from sparkhelpers.sim.cluster import Cluster
from sparkhelpers.sim.facts import MGMT_IF, TWIN1_IF, TWIN2_IF, set_port_state

KINDS = ("stop-node", "start-node", "kill-sshd", "link-down", "link-up", "fill-disk", "free-disk",
         "engine-crash-load", "engine-crash-after", "engine-hang-load", "engine-ok", "slow-fabric", "clear",
         "limit-disk")
TWINS = {"twin1": [TWIN1_IF], "twin2": [TWIN2_IF], "both": [TWIN1_IF, TWIN2_IF], "mgmt": [MGMT_IF],
         "all": [TWIN1_IF, TWIN2_IF, MGMT_IF]}
FAULT_FILE = "hf-cache/.sparksim-fault"  # read by the engine image (sparksim_engine.common.fault)
FULL_DISK_MIB = 1


def _record(cluster: Cluster, node: str, add: str = "", remove_prefix: str = "", reset: bool = False) -> None:
    path = cluster.node_dir(node) / "faults.json"
    try:
        active = [] if reset else json.loads(path.read_text())
    except (OSError, ValueError):
        active = []
    if remove_prefix:
        active = [f for f in active if not f.startswith(remove_prefix)]
    if add and add not in active:
        active.append(add)
    path.write_text(json.dumps(active))


def active_faults(cluster: Cluster, node: str) -> list[str]:
    try:
        return json.loads((cluster.node_dir(node) / "faults.json").read_text())
    except (OSError, ValueError):
        return []


def _switch_ports(cluster: Cluster, node: str, ifaces: list[str], up: bool, runner: Runner) -> None:
    n = cluster.node(node)
    for iface in ifaces:
        runner.run(["ip", "-n", netplan.switch_ns(cluster.name), "link", "set", netplan.switch_side(iface, n.index),
                    "up" if up else "down"]).check(f"setting the {iface} link of {node} {'up' if up else 'down'}")
        if iface in (TWIN1_IF, TWIN2_IF):
            set_port_state(cluster.node_dir(node), iface, up)


def _in_netns(cluster: Cluster, node: str, argv: list[str], runner: Runner):  # noqa: ANN202
    return runner.run(["ip", "netns", "exec", netplan.node_ns(cluster.name, cluster.node(node).index), *argv])


def inject(cluster: Cluster, node: str, kind: str, arg: str = "", runner: Runner | None = None) -> str:
    """Apply one fault; returns a one-line description of what was done."""
    runner = runner or Runner()
    n = cluster.node(node)
    if kind not in KINDS:
        raise UsageError(f"unknown fault {kind!r}", fix=f"use one of: {', '.join(KINDS)}")
    running = cl.alive(n.pid)
    if not running and kind not in ("start-node", "clear", "stop-node"):
        raise SparkError(f"{n.name} is stopped", fix=f"sparkhelpers sim fault {n.name} start-node")
    raid = cluster.node_dir(n.name) / "raid"
    if kind == "stop-node":
        if running:
            os.kill(n.pid, 9)  # the node's PID 1: every process of the node (containers too) dies
        _switch_ports(cluster, n.name, TWINS["all"], False, runner)  # a dead box answers nothing, not even ARP
        _record(cluster, n.name, "stop-node")
        return f"{n.name} stopped (all processes killed, links dark)"
    if kind == "start-node":
        return _start_node(cluster, n.name, runner)
    if kind == "kill-sshd":
        cluster.exec(n.name, "pkill -x sshd; for i in $(seq 50); do pgrep -x sshd >/dev/null || exit 0; "
                             "sleep 0.1; done; exit 1", runner=runner).check(f"killing sshd on {n.name}")
        _record(cluster, n.name, "kill-sshd")
        return f"sshd on {n.name} killed"
    if kind in ("link-down", "link-up"):
        which = arg or "both"
        if which not in TWINS:
            raise UsageError(f"unknown link {which!r}", fix=f"use one of: {', '.join(TWINS)}")
        up = kind == "link-up"
        _switch_ports(cluster, n.name, TWINS[which], up, runner)
        if up:
            _record(cluster, n.name, remove_prefix="link-down")
        else:
            _record(cluster, n.name, f"link-down {which}")
        return f"{n.name}: {', '.join(TWINS[which])} {'up' if up else 'down (cable pulled)'}"
    if kind == "fill-disk":
        # /raid becomes an overlay whose writable layer is a full 1 MiB tmpfs: reads work, writes ENOSPC.
        # On a disk limited by limit-disk, the rest of its room is taken (a copy in flight hits ENOSPC).
        filler = "(dd if=/dev/zero of=/run/sparksim-full/u/.sparksim-filler bs=64k 2>/dev/null || true)"
        script = (f"mountpoint -q /run/sparksim-full && {{ {filler}; exit 0; }}; " + _small_raid(FULL_DISK_MIB) +
                  f" && {filler} && " + _RAID_OVERLAY)
        cluster.exec(n.name, script, runner=runner).check(f"filling the disk of {n.name}")
        _record(cluster, n.name, "fill-disk")
        return f"{n.name}: /raid is full (writes fail with ENOSPC)"
    if kind == "limit-disk":
        if not arg.isdigit() or int(arg) < 1:
            raise UsageError("limit-disk needs a size in MiB", fix=f"sparkhelpers sim fault {n.name} limit-disk 64")
        script = "mountpoint -q /run/sparksim-full && exit 0; " + _small_raid(int(arg)) + " && " + _RAID_OVERLAY
        cluster.exec(n.name, script, runner=runner).check(f"limiting the disk of {n.name}")
        _record(cluster, n.name, f"limit-disk {arg}")
        return f"{n.name}: /raid has {arg} MiB of room left (then writes fail with ENOSPC; fill-disk takes the rest)"
    if kind == "free-disk":
        _free_disk(cluster, n.name, runner)
        return f"{n.name}: /raid writable again"
    if kind.startswith("engine-"):
        fault_file = raid / FAULT_FILE
        fault_file.parent.mkdir(parents=True, exist_ok=True)
        if kind == "engine-ok":
            fault_file.unlink(missing_ok=True)
            _record(cluster, n.name, remove_prefix="engine-")
            return f"{n.name}: engine faults cleared"
        text = {"engine-crash-load": "crash-load", "engine-hang-load": "hang-load"}.get(kind, "")
        if kind == "engine-crash-after":
            if not arg.isdigit() or int(arg) < 1:
                raise UsageError("engine-crash-after needs a request count",
                                 fix=f"sparkhelpers sim fault {n.name} engine-crash-after 3")
            text = f"crash-after {arg}"
        fault_file.write_text(text + "\n")
        _record(cluster, n.name, remove_prefix="engine-")
        _record(cluster, n.name, f"engine-{text}")
        return f"{n.name}: engines started from now on will {text.replace('-', ' ')} (file {FAULT_FILE} in /raid)"
    if kind == "slow-fabric":
        rate = arg or "1gbit"
        for iface in (TWIN1_IF, TWIN2_IF):
            _in_netns(cluster, n.name, ["tc", "qdisc", "replace", "dev", iface, "root", "tbf", "rate", rate,
                                        "burst", "256kb", "latency", "100ms"], runner).check(
                f"slowing {iface} of {n.name} to {rate}", fix="apt-get install -y iproute2 (tc)")
        _record(cluster, n.name, remove_prefix="slow-fabric")
        _record(cluster, n.name, f"slow-fabric {rate}")
        return f"{n.name}: fabric twins limited to {rate} (tc tbf)"
    return clear(cluster, n.name, runner)


_RAID_OVERLAY = ("mount -t overlay -o lowerdir=/raid,upperdir=/run/sparksim-full/u,workdir=/run/sparksim-full/w "
                 "sparksim-full /raid")


def _small_raid(mib: int) -> str:
    """Shell: the tmpfs (``mib`` MiB) that becomes /raid's writable layer (what is written there is lost
    by free-disk, as on a scratch disk)."""
    return ("mkdir -p /run/sparksim-full && "
            f"mount -t tmpfs -o size={mib}m sparksim-full /run/sparksim-full && "
            "mkdir /run/sparksim-full/u /run/sparksim-full/w")


def _free_disk(cluster: Cluster, node: str, runner: Runner) -> None:
    cluster.exec(node, "if mountpoint -q /run/sparksim-full; then umount /raid; umount /run/sparksim-full; fi",
                 runner=runner).check(f"freeing the disk of {node}")
    _record(cluster, node, remove_prefix="fill-disk")
    _record(cluster, node, remove_prefix="limit-disk")


def clear(cluster: Cluster, node: str, runner: Runner | None = None) -> str:
    """Undo every fault on ``node`` (a stopped node is started again: a reboot, docker data kept)."""
    runner = runner or Runner()
    n = cluster.node(node)
    if not cl.alive(n.pid):
        msg = _start_node(cluster, n.name, runner)
    else:
        msg = f"{n.name}: faults cleared"
        _switch_ports(cluster, n.name, TWINS["all"], True, runner)
        cluster.exec(n.name, f"pgrep -x sshd >/dev/null || /usr/sbin/sshd -E {cluster.node_dir(n.name)}/sshd.log",
                     runner=runner).check(f"restarting sshd on {n.name}")
        _free_disk(cluster, n.name, runner)
    for iface in (TWIN1_IF, TWIN2_IF):
        _in_netns(cluster, n.name, ["tc", "qdisc", "del", "dev", iface, "root"], runner)  # absent: fine
    (cluster.node_dir(n.name) / "raid" / FAULT_FILE).unlink(missing_ok=True)
    _record(cluster, n.name, reset=True)
    return msg


def _start_node(cluster: Cluster, node: str, runner: Runner) -> str:
    """Boot a stopped node again in its existing network namespace (fresh root, disks kept)."""
    n = cluster.node(node)
    if cl.alive(n.pid):
        return f"{n.name} is already running"
    ndir = cluster.node_dir(n.name)
    for stale in ("ready", "failed", "node.pid"):
        (ndir / stale).unlink(missing_ok=True)
    t0 = time.monotonic()
    env = {"SIM_NODE": n.name, "SIM_DIR": cluster.dir, "SIM_CGROUP": netplan.cgroup_name(cluster.name, n.index)}
    pid = runner.spawn(cl.node_command(cluster.name, n.index), log_path=str(ndir / "init.log"), env=env)
    n.pid = cl.wait_ready(ndir, pid)
    _switch_ports(cluster, n.name, TWINS["all"], True, runner)
    if cluster.facts:
        f = cluster.facts.get(n.name, {})
        for key, iface in (("twin1_up", TWIN1_IF), ("twin2_up", TWIN2_IF)):
            if f.get(key) is False:
                _switch_ports(cluster, n.name, [iface], False, runner)
    cl.save(cluster)
    _record(cluster, n.name, reset=True)
    return f"{n.name} started again in {time.monotonic() - t0:.1f} s (docker images and /raid kept)"
