"""Pure builders for the emulated cluster's namespaces and links (``ip -batch`` text), and names.

Every kernel object carries the cluster name so clusters never collide: network namespaces
``sparksim-<name>-sw`` and ``sparksim-<name>-spark<i>``, cgroups ``sparksim-<name>-spark<i>``. Links are
created directly inside the cluster's own namespaces, so their short names (15-char limit) need
no prefix: in the switch namespace ``f1-<i>``, ``f2-<i>``, ``mg-<i>``, ``p0-<i>``, ``q0-<i>``.
"""

from __future__ import annotations

import re
from typing import Any

from sparkhelpers.errors import UsageError
from sparkhelpers.sim.facts import DOWN_IFS, MGMT_IF, TWIN1_IF, TWIN2_IF, mac_for, node_addrs

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,23}$")
PREFIX = "sparksim"
MAX_NODES = 8  # as many as a Spark cluster has (topology.MAX_NODES); each node costs ~1 s to bring up
SWITCH_MTU = 9000
# bridge in the switch namespace -> (node interface, switch-side link prefix)
FABRIC = {"br-f1": (TWIN1_IF, "f1"), "br-f2": (TWIN2_IF, "f2"), "br-mg": (MGMT_IF, "mg")}
UNCABLED = {DOWN_IFS[0]: "p0", DOWN_IFS[1]: "q0"}


def check_name(name: str) -> str:
    if not NAME_RE.match(name or ""):
        raise UsageError(f"bad sim cluster name {name!r}",
                         fix="use 1-24 characters: lower-case letters, digits and '-', starting with a letter or digit")
    return name


def check_nodes(nodes: int) -> int:
    if not 1 <= nodes <= MAX_NODES:
        raise UsageError(f"--nodes {nodes} is out of range", fix=f"use 1 to {MAX_NODES} nodes")
    return nodes


def node_name(index: int) -> str:
    return f"spark{index}"


def switch_ns(name: str) -> str:
    return f"{PREFIX}-{name}-sw"


def node_ns(name: str, index: int) -> str:
    return f"{PREFIX}-{name}-{node_name(index)}"


def cgroup_name(name: str, index: int) -> str:
    return f"{PREFIX}-{name}-{node_name(index)}"


def owns_netns(name: str, netns: str) -> bool:
    """True for exactly this cluster's namespaces (cluster ``a`` never matches those of ``a-b``)."""
    return re.fullmatch(rf"{PREFIX}-{re.escape(name)}-(sw|ctl|spark\d+)", netns) is not None  # ctl: sim/control.py


def switch_side(iface: str, index: int) -> str:
    prefix = {**{v[0]: v[1] for v in FABRIC.values()}, **UNCABLED}[iface]
    return f"{prefix}-{index}"


def root_batch(name: str, nodes: int) -> str:
    """``ip -batch`` run in the root namespace: one veth pair per node interface, created straight
    into the switch and node namespaces (nothing ever appears in the root namespace)."""
    lines = []
    for i in range(1, nodes + 1):
        for iface in (TWIN1_IF, TWIN2_IF, MGMT_IF, *DOWN_IFS):
            lines.append(f"link add {switch_side(iface, i)} netns {switch_ns(name)} type veth "
                         f"peer name {iface} netns {node_ns(name, i)} address {mac_for(i, iface)}")
    return "\n".join(lines) + "\n"


def switch_batch(nodes: int, facts: dict[str, dict[str, Any]]) -> str:
    """The "switch": one bridge per network; a twin that is down has its switch port down
    (a pulled cable: the node side loses carrier). Port 0 twins are left unplugged."""
    lines = ["link set lo up"]
    for br in FABRIC:
        lines += [f"link add {br} type bridge", f"link set {br} mtu {SWITCH_MTU} up"]
    for i in range(1, nodes + 1):
        f = facts[node_name(i)]
        for br, (iface, _) in FABRIC.items():
            up = {TWIN1_IF: f["twin1_up"], TWIN2_IF: f["twin2_up"]}.get(iface, True)
            port = switch_side(iface, i)
            lines.append(f"link set {port} mtu {SWITCH_MTU} master {br}" + (" up" if up else ""))
    return "\n".join(lines) + "\n"


def node_batch(index: int, facts: dict[str, Any]) -> str:
    a = node_addrs(index, facts)
    return "\n".join([
        "link set lo up",
        f"addr add {a.mgmt}/{a.prefix} dev {MGMT_IF}",
        f"link set {MGMT_IF} up",
        f"addr add {a.twin1}/{a.prefix} dev {TWIN1_IF}",
        f"link set {TWIN1_IF} mtu {facts['mtu']} up",
        f"addr add {a.twin2}/{a.prefix} dev {TWIN2_IF}",
        f"link set {TWIN2_IF} mtu {facts['mtu']} up",
        *[f"link set {iface} mtu 1500 down" for iface in DOWN_IFS],
    ]) + "\n"


def hosts_file(nodes: int, facts: dict[str, dict[str, Any]]) -> str:
    """Node names resolve to management addresses (as on a real lab LAN); -f1/-f2 name the twins."""
    lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback"]
    for i in range(1, nodes + 1):
        a = node_addrs(i, facts[node_name(i)])
        lines += [f"{a.mgmt} {node_name(i)}", f"{a.twin1} {node_name(i)}-f1", f"{a.twin2} {node_name(i)}-f2"]
    return "\n".join(lines) + "\n"
