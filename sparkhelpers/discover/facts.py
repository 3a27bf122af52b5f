"""HostFacts: everything we know about one host, parsed from a snapshot (pure, no I/O beyond reading it)."""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import asdict, dataclass, field

from sparkhelpers.discover.probe import Probe, Snapshot

# Interfaces that are never the fabric, by name: loopback, Wi-Fi, bridges and container plumbing.
_VIRTUAL = re.compile(r"^(lo|docker\d*|br-.*|veth.*|virbr.*|cni.*|flannel.*|cali.*|vxlan.*|tun.*|tap.*|ifb\d*"
                      r"|tailscale.*|wg\d*|zt.*|bond\d+|dummy.*)$")
_WIFI = re.compile(r"^wl")
# DGX Spark's 10GbE RJ45 port: the management interface.
SPARK_MANAGEMENT = "enP7s7"
# ConnectX-7 netdev names carry the cage in "f<N>np<N>": enp1s0f1np1 / enP2p1s0f1np1 are port 1's twins.
_CX_NETDEV = re.compile(r"f(\d+)np(\d+)$")
_CX_HCA = re.compile(r"f(\d+)$")
_ZERO_GID = "0000:0000:0000:0000:0000:0000:0000:0000"


@dataclass
class Address:
    ip: str
    prefix: int

    @property
    def network(self) -> str:
        return str(ipaddress.ip_interface(f"{self.ip}/{self.prefix}").network)


@dataclass
class Netdev:
    name: str
    operstate: str = "unknown"
    mtu: int | None = None
    speed_mbps: int | None = None
    mac: str = ""
    ipv4: list[Address] = field(default_factory=list)
    kind: str = "other"  # fabric | management | wifi | virtual | loopback | ethernet | other

    @property
    def up(self) -> bool:
        return self.operstate == "up"


@dataclass
class Gid:
    index: int
    gid: str
    type: str  # "RoCE v2" or "IB/RoCE v1"
    netdev: str

    @property
    def ipv4(self) -> str | None:
        """The IPv4 a ``::ffff:a.b.c.d`` GID stands for."""
        try:
            addr = ipaddress.IPv6Address(self.gid)
        except ValueError:
            return None
        return str(addr.ipv4_mapped) if addr.ipv4_mapped else None


@dataclass
class Port:
    hca: str
    port: int
    state: str = "UNKNOWN"  # ACTIVE, DOWN, INIT, ...
    phys_state: str = ""
    link_layer: str = ""
    rate: str = ""
    netdev: str = ""
    gids: list[Gid] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.state == "ACTIVE"

    @property
    def roce_v2_ipv4_gids(self) -> list[Gid]:
        return [g for g in self.gids if g.type.strip().lower() == "roce v2" and g.ipv4]


@dataclass
class Hca:
    name: str
    netdevs: list[str] = field(default_factory=list)
    ports: list[Port] = field(default_factory=list)
    cage: int | None = None  # physical QSFP port (0 inner, 1 outer) when the name tells

    @property
    def active(self) -> bool:
        return any(p.active for p in self.ports)


@dataclass
class Twin:
    """One PCIe half of a cabled QSFP port: an HCA and the netdev that carries its RoCE traffic."""

    hca: str
    netdev: str
    cage: int | None
    active: bool
    operstate: str
    ipv4: list[Address]
    mtu: int | None
    speed_mbps: int | None
    gid_index: int | None  # RoCE v2 GID that maps this twin's IPv4
    primary: bool  # the non-capital-P twin (enp1s0f1np1), preferred for sockets

    @property
    def usable(self) -> bool:
        return self.active and self.operstate == "up" and bool(self.ipv4)


@dataclass
class Gpu:
    name: str
    driver: str
    memory: str


@dataclass
class HostFacts:
    hostname: str = ""
    kernel: str = ""
    user: str = ""
    uid: int | None = None
    gpus: list[Gpu] = field(default_factory=list)
    mem_total_kib: int | None = None
    mem_available_kib: int | None = None
    netdevs: dict[str, Netdev] = field(default_factory=dict)
    hcas: list[Hca] = field(default_factory=list)
    twins: list[Twin] = field(default_factory=list)  # every twin of every cabled cage
    cabled_cages: list[int] = field(default_factory=list)
    default_route_iface: str = ""
    management_iface: str = ""
    docker_ok: bool = False
    docker_error: str = ""
    docker_installed: bool = False
    image_id: str = ""
    image_error: str = ""
    dev_infiniband: list[str] | None = None
    memlock: str = ""
    hf_cache: str = ""
    hf_cache_existing: str = ""
    hf_cache_owner: str = ""
    hf_cache_owner_uid: int | None = None
    hf_cache_foreign: list[str] = field(default_factory=list)
    disk_free_bytes: int | None = None
    disk_total_bytes: int | None = None
    listening_ports: list[int] = field(default_factory=list)
    ibdev2netdev: str = ""

    @property
    def gpu_name(self) -> str:
        return self.gpus[0].name if self.gpus else ""

    @property
    def gpu_driver(self) -> str:
        return self.gpus[0].driver if self.gpus else ""

    @property
    def active_twins(self) -> list[Twin]:
        return [t for t in self.twins if t.usable]

    @property
    def socket_twin(self) -> Twin | None:
        """The twin NCCL/Gloo bootstrap uses: usable, with an IP, the non-capital-P one first."""
        usable = self.active_twins
        return next((t for t in usable if t.primary), usable[0] if usable else None)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["gpu_name"], data["gpu_driver"] = self.gpu_name, self.gpu_driver
        return data


def _int(text: str | None) -> int | None:
    try:
        return int(str(text).strip())
    except (TypeError, ValueError):
        return None


def _state(text: str | None) -> str:
    """'4: ACTIVE' -> 'ACTIVE'."""
    if not text:
        return "UNKNOWN"
    return text.split(":", 1)[-1].strip().upper()


def _json(text: str | None) -> list | dict | None:
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def parse_meminfo(text: str | None) -> dict[str, int]:
    out = {}
    for line in (text or "").splitlines():
        m = re.match(r"^(\w+):\s+(\d+)", line)
        if m:
            out[m.group(1)] = int(m.group(2))
    return out


def parse_listening_ports(*tables: str | None) -> list[int]:
    """TCP ports in LISTEN state (0A) from /proc/net/tcp and tcp6."""
    ports = set()
    for table in tables:
        for line in (table or "").splitlines()[1:]:
            parts = line.split()
            if len(parts) > 3 and parts[3] == "0A":
                ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return sorted(ports)


def parse_ibdev2netdev(text: str | None) -> dict[tuple[str, int], tuple[str, bool]]:
    """'rocep1s0f1 port 1 ==> enp1s0f1np1 (Up)' -> {(hca, port): (netdev, up)}."""
    out = {}
    for line in (text or "").splitlines():
        m = re.match(r"^\s*(\S+)\s+port\s+(\d+)\s+==>\s+(\S+)\s+\((\w+)\)", line)
        if m:
            out[(m.group(1), int(m.group(2)))] = (m.group(3), m.group(4).lower() == "up")
    return out


def _cage(name: str, pattern: re.Pattern[str]) -> int | None:
    m = pattern.search(name)
    return int(m.group(1)) if m else None


def _classify(nd: Netdev, probe: Probe, fabric_netdevs: set[str]) -> str:
    base = f"/sys/class/net/{nd.name}"
    if nd.name == "lo":
        return "loopback"
    if nd.name in fabric_netdevs:
        return "fabric"
    if _WIFI.match(nd.name) or probe.listdir(f"{base}/wireless") or _exists(probe, f"{base}/wireless"):
        return "wifi"
    if _VIRTUAL.match(nd.name) or _exists(probe, f"{base}/bridge"):
        return "virtual"
    if nd.name == SPARK_MANAGEMENT:
        return "management"
    if nd.name.startswith(("en", "eth")):
        return "ethernet"
    return "other"


def _exists(probe: Probe, path: str) -> bool:
    exists = getattr(probe, "exists", None)
    return bool(exists(path)) if exists else False


def discover(probe: Probe) -> HostFacts:
    """Parse one host's facts. Pure over the probe: the same snapshot always gives the same facts."""
    f = HostFacts()
    f.hostname = probe.cmd("hostname.txt") or ""
    f.kernel = probe.cmd("uname-r.txt") or ""
    ident = probe.cmd("id.txt") or ""
    m = re.match(r"uid=(\d+)\(([^)]*)\)", ident)
    if m:
        f.uid, f.user = int(m.group(1)), m.group(2)
    for line in (probe.cmd("nvidia-smi.csv") or "").splitlines():
        cols = [c.strip() for c in line.split(",")]
        if len(cols) >= 2 and cols[0]:
            f.gpus.append(Gpu(cols[0], cols[1], cols[2] if len(cols) > 2 else ""))
    mem = parse_meminfo(probe.read("/proc/meminfo"))
    f.mem_total_kib, f.mem_available_kib = mem.get("MemTotal"), mem.get("MemAvailable")
    f.memlock = probe.cmd("ulimit-l.txt") or ""
    f.listening_ports = parse_listening_ports(probe.read("/proc/net/tcp"), probe.read("/proc/net/tcp6"))
    f.ibdev2netdev = probe.cmd("ibdev2netdev.txt") or ""
    _parse_docker(f, probe)
    _parse_storage(f, probe)
    devs = probe.cmd("dev-infiniband.txt")
    f.dev_infiniband = devs.split() if devs is not None else None

    # Netdevs: ip -j addr first (addresses), sysfs fills in speed and anything ip lacks.
    for entry in _json(probe.cmd("ip-addr.json")) or []:
        nd = Netdev(entry.get("ifname", ""), str(entry.get("operstate", "unknown")).lower(), entry.get("mtu"),
                    mac=entry.get("address", ""))
        nd.ipv4 = [Address(a["local"], int(a["prefixlen"])) for a in entry.get("addr_info", [])
                   if a.get("family") == "inet" and "local" in a]
        f.netdevs[nd.name] = nd
    for name in probe.listdir("/sys/class/net"):
        base = f"/sys/class/net/{name}"
        nd = f.netdevs.setdefault(name, Netdev(name))
        nd.operstate = (probe.read(f"{base}/operstate") or nd.operstate).lower()
        nd.mtu = _int(probe.read(f"{base}/mtu")) or nd.mtu
        nd.mac = nd.mac or probe.read(f"{base}/address") or ""
        speed = _int(probe.read(f"{base}/speed"))
        nd.speed_mbps = speed if speed and speed > 0 else None
        ethtool = probe.cmd(f"ethtool-{name}.txt") or ""
        m = re.search(r"Speed:\s*(\d+)Mb/s", ethtool)
        if m:
            nd.speed_mbps = int(m.group(1))

    _parse_hcas(f, probe)
    fabric_netdevs = {n for h in f.hcas for n in h.netdevs}
    for nd in f.netdevs.values():
        nd.kind = _classify(nd, probe, fabric_netdevs)

    for route in _json(probe.cmd("ip-route.json")) or []:
        if route.get("dst") == "default" and route.get("dev"):
            f.default_route_iface = route["dev"]
            break
    f.management_iface = _management(f)
    _pick_twins(f)
    return f


def _parse_docker(f: HostFacts, probe: Probe) -> None:
    rc = probe.exit_code("docker-info.json")
    f.docker_installed = rc is not None and rc != 127
    info = _json(probe.cmd("docker-info.json"))
    err = probe.cmd_err("docker-info.json") if hasattr(probe, "cmd_err") else ""
    server_errors = info.get("ServerErrors") if isinstance(info, dict) else None
    f.docker_ok = rc == 0 and isinstance(info, dict) and not server_errors and bool(info.get("ServerVersion"))
    if not f.docker_ok:
        if not f.docker_installed:
            f.docker_error = "docker is not installed"
        elif server_errors:
            f.docker_error = "; ".join(server_errors)
        elif err.strip():
            f.docker_error = err.strip().splitlines()[-1]
        else:
            f.docker_error = "docker info failed"
    f.image_id = probe.cmd("docker-image-id.txt") or ""
    if not f.image_id and probe.exit_code("docker-image-id.txt") not in (None, 0):
        err = probe.cmd_err("docker-image-id.txt") if hasattr(probe, "cmd_err") else ""
        f.image_error = err.strip().splitlines()[-1] if err.strip() else "image not found"


def _parse_storage(f: HostFacts, probe: Probe) -> None:
    f.hf_cache = probe.cmd("hf-cache-path.txt") or ""
    f.hf_cache_existing = probe.cmd("hf-cache-existing.txt") or ""
    lines = (probe.cmd("df-hf-cache.txt") or "").splitlines()
    if len(lines) >= 2:
        cols = lines[-1].split()
        if len(cols) >= 4:
            f.disk_total_bytes, f.disk_free_bytes = _int(cols[1]), _int(cols[3])
    stat = (probe.cmd("stat-hf-cache.txt") or "").split()
    if len(stat) >= 2:
        f.hf_cache_owner, f.hf_cache_owner_uid = stat[0], _int(stat[1])
    f.hf_cache_foreign = (probe.cmd("hf-cache-foreign.txt") or "").splitlines()


def _parse_hcas(f: HostFacts, probe: Probe) -> None:
    mapping = parse_ibdev2netdev(f.ibdev2netdev)
    names = probe.listdir("/sys/class/infiniband")
    for name in sorted(names, key=lambda n: (_cage(n, _CX_HCA) is None, _cage(n, _CX_HCA) or 0, _is_capital_p(n), n)):
        base = f"/sys/class/infiniband/{name}"
        hca = Hca(name, netdevs=probe.listdir(f"{base}/device/net"), cage=_cage(name, _CX_HCA))
        for port_name in probe.listdir(f"{base}/ports"):
            pbase = f"{base}/ports/{port_name}"
            port = Port(name, _int(port_name) or 0, _state(probe.read(f"{pbase}/state")),
                        _state(probe.read(f"{pbase}/phys_state")), probe.read(f"{pbase}/link_layer") or "",
                        probe.read(f"{pbase}/rate") or "")
            ndevs = [probe.read(f"{pbase}/gid_attrs/ndevs/{i}") for i in probe.listdir(f"{pbase}/gid_attrs/ndevs")]
            for idx in sorted(probe.listdir(f"{pbase}/gids"), key=lambda s: _int(s) or 0):
                gid = probe.read(f"{pbase}/gids/{idx}") or ""
                if not gid or gid == _ZERO_GID:
                    continue
                port.gids.append(Gid(_int(idx) or 0, gid, probe.read(f"{pbase}/gid_attrs/types/{idx}") or "",
                                     probe.read(f"{pbase}/gid_attrs/ndevs/{idx}") or ""))
            port.netdev = (hca.netdevs[0] if hca.netdevs else "") or next((n for n in ndevs if n), "") \
                or mapping.get((name, port.port), ("", False))[0]
            hca.ports.append(port)
        if not hca.netdevs:
            hca.netdevs = sorted({p.netdev for p in hca.ports if p.netdev})
        if hca.cage is None and hca.netdevs:
            hca.cage = _cage(hca.netdevs[0], _CX_NETDEV)
        f.hcas.append(hca)


def _management(f: HostFacts) -> str:
    """DGX Spark's enP7s7; elsewhere a wired non-fabric interface with an IPv4 (default route first)."""
    if SPARK_MANAGEMENT in f.netdevs:
        return SPARK_MANAGEMENT
    wired = [n for n in f.netdevs.values() if n.kind in ("ethernet", "management") and n.ipv4]
    default = f.netdevs.get(f.default_route_iface)
    if default is not None and default in wired:
        return default.name
    return wired[0].name if wired else ""


def _pick_twins(f: HostFacts) -> None:
    """Every twin of every cabled cage (a cage is cabled when one of its HCAs has an ACTIVE port)."""
    cages = sorted({h.cage for h in f.hcas if h.active}, key=lambda c: (c is None, c))
    f.cabled_cages = [c for c in cages if c is not None]
    for hca in sorted(f.hcas, key=lambda h: (h.cage is None, h.cage, _is_capital_p(h.name), h.name)):
        if hca.cage not in cages or (hca.cage is None and not hca.active):
            continue
        port = next((p for p in hca.ports if p.active), hca.ports[0] if hca.ports else None)
        netdev = (port.netdev if port else "") or (hca.netdevs[0] if hca.netdevs else "")
        nd = f.netdevs.get(netdev, Netdev(netdev))
        own_ips = {a.ip for a in nd.ipv4}
        gid = next((g.index for g in (port.roce_v2_ipv4_gids if port else []) if g.ipv4 in own_ips), None)
        f.twins.append(Twin(hca.name, netdev, hca.cage, bool(port and port.active), nd.operstate, nd.ipv4,
                            nd.mtu, nd.speed_mbps, gid, not _is_capital_p(netdev or hca.name)))


def _is_capital_p(name: str) -> bool:
    """enP2p1s0f1np1 / roceP2p1s0f1: the second PCIe half (domain 2), spelled with a capital P."""
    return bool(re.match(r"^[a-z]+P\d", name))


def discover_snapshot(path: str) -> HostFacts:
    return discover(Snapshot(path))
