"""The emulated hardware of one node: defaults of a DGX Spark, per-node overrides, and the files
(fake sysfs HCAs, /proc/meminfo, facts.json for nvidia-smi) rendered from them. Pure functions."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparkhelpers.errors import UsageError

# Interface names of a real DGX Spark (see shared reference spark-cluster-facts.md).
MGMT_IF = "enP7s7"
TWIN1_IF, TWIN2_IF = "enp1s0f1np1", "enP2p1s0f1np1"  # port 1 (cabled): the two PCIe x4 halves
DOWN_IFS = ("enp1s0f0np0", "enP2p1s0f0np0")  # port 0: present, no cable
HCAS = {  # HCA -> netdev
    "rocep1s0f1": TWIN1_IF, "roceP2p1s0f1": TWIN2_IF,
    "rocep1s0f0": DOWN_IFS[0], "roceP2p1s0f0": DOWN_IFS[1],
}

DEFAULTS: dict[str, Any] = {
    "gpu_present": True,
    "gpu_name": "NVIDIA GB10",
    "driver_version": "580.95.05",
    "cuda_version": "13.0",
    "mem_total_kib": 127_601_452,  # ~121.7 GiB usable of the 128 GB unified LPDDR5X
    "mem_available_kib": 119_862_340,
    "mtu": 9000,  # of both fabric twins on this node (the switch side is always 9000)
    "twin1_up": True,
    "twin2_up": True,
    "twin1_subnet": "169.254.101.0/24",
    "twin2_subnet": "169.254.102.0/24",
    "mgmt_subnet": "169.254.200.0/24",
    "gid_v2_index": 3,  # index of the RoCE v2 ::ffff:IPv4 GID (real nodes: usually 3, sometimes 4)
}
_TYPES = {k: type(v) for k, v in DEFAULTS.items()}


@dataclass(frozen=True)
class NodeAddrs:
    mgmt: str
    twin1: str
    twin2: str
    prefix: int = 24


def merge_facts(overrides: dict[str, Any] | None) -> dict[str, Any]:
    """Defaults + overrides, each override checked against the default's type."""
    facts = dict(DEFAULTS)
    for key, value in (overrides or {}).items():
        if key not in DEFAULTS:
            raise UsageError(f"unknown node fact {key!r}", fix=f"use one of: {', '.join(sorted(DEFAULTS))}")
        facts[key] = coerce(key, value)
    for key in ("twin1_subnet", "twin2_subnet", "mgmt_subnet"):
        net = ipaddress.ip_network(facts[key], strict=False)
        if net.prefixlen > 26:
            raise UsageError(f"fact {key}={facts[key]} is too small for the nodes", fix="use a /24")
    return facts


def coerce(key: str, value: Any) -> Any:
    kind = _TYPES[key]
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    text = str(value).strip()
    try:
        if kind is bool:
            if text.lower() in ("1", "true", "yes", "up", "on"):
                return True
            if text.lower() in ("0", "false", "no", "down", "off"):
                return False
            raise ValueError(text)
        if kind is int:
            return int(text)
        if key.endswith("_subnet"):
            return str(ipaddress.ip_network(text, strict=False))
        return text
    except ValueError:
        raise UsageError(f"bad value {value!r} for node fact {key} (expected {kind.__name__})",
                         fix=f"for example {key}={DEFAULTS[key]}") from None


def parse_fact_args(items: list[str], nodes: int) -> dict[str, dict[str, Any]]:
    """``--fact spark2:driver_version=570.1`` (or ``all:mtu=1500``) -> {"spark2": {...}}."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        target, sep, assignment = item.partition(":")
        key, eq, value = assignment.partition("=")
        if not sep or not eq or not key:
            raise UsageError(f"bad --fact {item!r}", fix="write NODE:KEY=VALUE, e.g. spark2:mtu=1500 or all:mtu=1500")
        names = [f"spark{i}" for i in range(1, nodes + 1)] if target == "all" else [target]
        for name in names:
            if name not in {f"spark{i}" for i in range(1, nodes + 1)}:
                raise UsageError(f"--fact names node {name!r}, not in this {nodes}-node cluster",
                                 fix=f"use spark1..spark{nodes} or all")
            out.setdefault(name, {})[key.strip()] = value
    return out


def load_facts_file(path: str) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read facts file {path}: {exc}",
                         fix='write JSON like {"spark2": {"driver_version": "570.86.10"}}') from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise UsageError(f"facts file {path} must map node names to objects",
                         fix='write JSON like {"spark2": {"mtu": 1500}}')
    return data


def host_in(subnet: str, index: int) -> str:
    """Node ``index`` (1-based) gets host number 10+index in each subnet: .11, .12, ..."""
    net = ipaddress.ip_network(subnet, strict=False)
    return str(net.network_address + 10 + index)


def node_addrs(index: int, facts: dict[str, Any]) -> NodeAddrs:
    return NodeAddrs(host_in(facts["mgmt_subnet"], index), host_in(facts["twin1_subnet"], index),
                     host_in(facts["twin2_subnet"], index))


def mac_for(index: int, iface: str) -> str:
    """Stable, distinct MAC per node and interface (NVIDIA's OUI, as a real CX7 has)."""
    order = [MGMT_IF, TWIN1_IF, TWIN2_IF, *DOWN_IFS].index(iface)
    return f"4c:bb:47:5e:{index:02x}:{order:02x}"


def link_local_gid(mac: str) -> str:
    b = [int(x, 16) for x in mac.split(":")]
    eui = [b[0] ^ 0x02, b[1], b[2], 0xFF, 0xFE, b[3], b[4], b[5]]
    words = ["fe80", "0000", "0000", "0000"] + [f"{eui[i]:02x}{eui[i + 1]:02x}" for i in range(0, 8, 2)]
    return ":".join(words)


def ipv4_gid(ip: str) -> str:
    packed = ipaddress.IPv4Address(ip).packed
    return "0000:0000:0000:0000:0000:ffff:" + f"{packed[0]:02x}{packed[1]:02x}:{packed[2]:02x}{packed[3]:02x}"


ZERO_GID = ":".join(["0000"] * 8)


def port_state_text(active: bool) -> tuple[str, str]:
    return ("4: ACTIVE", "5: LinkUp") if active else ("1: DOWN", "3: Disabled")


def sysfs_files(index: int, facts: dict[str, Any]) -> dict[str, str]:
    """Relative path (under the fake /sys/class) -> content, for the four HCAs of one node.
    Symlinks are returned with a leading '->' in the content."""
    addrs = node_addrs(index, facts)
    ips = {TWIN1_IF: addrs.twin1, TWIN2_IF: addrs.twin2}
    up = {TWIN1_IF: facts["twin1_up"], TWIN2_IF: facts["twin2_up"]}
    files: dict[str, str] = {}
    for n, (hca, netdev) in enumerate(HCAS.items()):
        base = f"infiniband/{hca}"
        files[f"{base}/node_type"] = "1: CA"
        files[f"{base}/hca_type"] = "MT4129"
        files[f"{base}/fw_ver"] = "28.45.1200"
        files[f"{base}/node_guid"] = f"4cbb:4703:005e:{index:02x}{n:02x}"
        files[f"{base}/device/net/{netdev}"] = f"->/sys/class/net/{netdev}"
        port = f"{base}/ports/1"
        active = up.get(netdev, False)
        files[f"{port}/state"], files[f"{port}/phys_state"] = port_state_text(active)
        files[f"{port}/link_layer"] = "Ethernet"
        files[f"{port}/rate"] = "200 Gb/sec (4X HDR)" if active else "10 Gb/sec (4X SDR)"
        ll = link_local_gid(mac_for(index, netdev))
        gids: list[tuple[str, str]] = [(ll, "IB/RoCE v1"), (ll, "RoCE v2")]
        if netdev in ips:
            v2 = facts["gid_v2_index"]
            while len(gids) < v2 - 1:
                gids.append((ZERO_GID, ""))
            gids += [(ipv4_gid(ips[netdev]), "IB/RoCE v1"), (ipv4_gid(ips[netdev]), "RoCE v2")]
        while len(gids) < 8:
            gids.append((ZERO_GID, ""))
        for i, (gid, kind) in enumerate(gids):
            files[f"{port}/gids/{i}"] = gid
            if kind:
                files[f"{port}/gid_attrs/types/{i}"] = kind
                files[f"{port}/gid_attrs/ndevs/{i}"] = netdev
    return files


def meminfo_text(facts: dict[str, Any]) -> str:
    total, avail = facts["mem_total_kib"], facts["mem_available_kib"]
    free = max(avail - 4_000_000, 0)
    rows = [("MemTotal", total), ("MemFree", free), ("MemAvailable", avail), ("Buffers", 10_240),
            ("Cached", 3_800_000), ("SwapCached", 0), ("Active", 2_100_000), ("Inactive", 2_900_000),
            ("SwapTotal", 0), ("SwapFree", 0), ("Shmem", 40_000), ("HugePages_Total", 0),
            ("CmaTotal", 0), ("CmaFree", 0)]
    return "".join(f"{k + ':':<16}{v:>8} kB\n" if not k.startswith("HugePages") else f"{k + ':':<16}{v:>8}\n"
                   for k, v in rows)


def write_node_files(node_dir: Path, index: int, facts: dict[str, Any]) -> None:
    """Write facts.json, meminfo and the fake sysfs tree of one node (before it starts)."""
    node_dir.mkdir(parents=True, exist_ok=True)
    gpu_uuid = f"GPU-5e{index:02x}a1c3-9b0d-4f2e-8c71-0d1b2c3d4e{index:02x}"
    (node_dir / "facts.json").write_text(json.dumps({"node": f"spark{index}", "gpu_uuid": gpu_uuid, **facts}, indent=1))
    (node_dir / "meminfo").write_text(meminfo_text(facts))
    for rel, content in sysfs_files(index, facts).items():
        path = node_dir / "fakesys" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if content.startswith("->"):
            if not path.is_symlink():
                path.symlink_to(content[2:])
        else:
            path.write_text(content + "\n")


def set_port_state(node_dir: Path, netdev: str, active: bool) -> None:
    """Flip a running node's HCA port state in place (same inode, so the node's overlay sees it)."""
    hca = next(h for h, nd in HCAS.items() if nd == netdev)
    state, phys = port_state_text(active)
    for name, text in (("state", state), ("phys_state", phys)):
        with open(node_dir / "fakesys" / "infiniband" / hca / "ports" / "1" / name, "r+") as f:
            f.truncate(0)
            f.write(text + "\n")
