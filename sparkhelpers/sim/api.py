"""The Python API other tests use: ``up(name, nodes, facts=...) -> Cluster``, ``get``, ``down``, ``status``.

Example::

    from sparkhelpers import sim
    c = sim.up("mytest", 2, facts={"spark2": {"mtu": 1500}}, state_dir=tmp)
    c.exec("spark1", ["ssh", c.workers[0].fabric_ip, "hostname"]).check("ssh")
    c.down()
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sparkhelpers.runner import Runner
from sparkhelpers.sim import cluster as cl
from sparkhelpers.sim import faults, netplan
from sparkhelpers.sim.cluster import Cluster


def _state(state_dir: Path | str | None) -> Path:
    if state_dir:
        return Path(state_dir)
    from sparkhelpers.config import load_config
    from sparkhelpers.config import state_dir as cfg_state

    return cfg_state(load_config())


def up(name: str = "sim", nodes: int = 2, *, facts: dict[str, dict[str, Any]] | None = None,
       image_on: str = "head", state_dir: Path | str | None = None, progress=None,
       runner: Runner | None = None) -> Cluster:
    """Start a cluster; with image_on head/all the engine image is built (cached) and loaded."""
    runner = runner or Runner()
    state = _state(state_dir)
    built = None
    if image_on != "none":
        from sparkhelpers.sim import image

        built = image.build(progress=progress)  # before the nodes: a failed build leaves nothing running
    cluster = cl.up(name, nodes, state_dir=state, facts=facts, image_on=image_on, runner=runner,
                    progress=progress)
    if built is not None:
        try:
            targets = cluster.nodes if image_on == "all" else [cluster.head]
            image.load(cluster, built, [n.name for n in targets], runner=runner, progress=progress)
            cluster.image = built.tag
            cl.save(cluster)
            cl.write_profile(cluster)
        except BaseException:
            cl.down(name, state, runner=runner, keep_logs=True)
            raise
    return cluster


def get(name: str = "sim", state_dir: Path | str | None = None) -> Cluster:
    """The recorded cluster ``name`` (SparkError when it was never started or is gone entirely)."""
    from sparkhelpers.errors import SparkError

    state = _state(state_dir)
    cluster = cl.load(state, name)
    if not any(cl.alive(n.pid) for n in cluster.nodes):
        raise SparkError(f"sim cluster {name!r} is not running",
                         fix=f"sparkhelpers sim down --name {name} && sparkhelpers sim up --name {name}")
    return cluster


def down(name: str = "sim", state_dir: Path | str | None = None, runner: Runner | None = None) -> bool:
    return cl.down(name, _state(state_dir), runner=runner)


def recorded_names(state_dir: Path | str | None = None) -> list[str]:
    return cl.recorded(_state(state_dir))


def status(state_dir: Path | str | None = None, name: str | None = None) -> list[dict[str, Any]]:
    state = _state(state_dir)
    runner = Runner()
    out = []
    for cname in [name] if name else cl.recorded(state):
        netplan.check_name(cname)
        try:
            cluster = cl.load(state, cname)
        except Exception:  # noqa: BLE001 - a damaged record is reported, not fatal
            out.append({"name": cname, "state": "broken (run sim down)", "profile": "", "image": "", "nodes": []})
            continue
        nodes = []
        for n in cluster.nodes:
            up_ = cl.alive(n.pid)
            probe = cluster.exec(n.name, "pgrep -x sshd >/dev/null && echo -n ok; echo -n ' '; "
                                         "docker info >/dev/null 2>&1 && echo -n ok", timeout=10,
                                 runner=runner) if up_ else None
            words = (probe.stdout.split(" ") + ["", ""])[:2] if probe else ["", ""]
            nodes.append({"name": n.name, "state": "up" if up_ else "down", "pid": n.pid,
                          "faults": faults.active_faults(cluster, n.name), "mgmt_ip": n.mgmt_ip,
                          "fabric_ip": n.fabric_ip, "fabric2_ip": n.fabric2_ip,
                          "sshd": "ok" if words[0] == "ok" else "down",
                          "dockerd": "ok" if words[1] == "ok" else "down"})
        whole = "up" if all(n["state"] == "up" for n in nodes) else "degraded"
        out.append({"name": cname, "state": whole, "profile": cluster.profile, "image": cluster.image,
                    "dir": cluster.dir, "nodes": nodes})
    return out
