"""From HostFacts to decisions: the per-node NCCL environment and the host's own problems (pure)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from itertools import combinations

from sparkhelpers.discover.facts import HostFacts

RECOMMENDED_MTU = 9000
FULL_SPEED_MBPS = 200_000
NETPLAN_FIX = ("give each twin its own /24 in /etc/netplan/40-cx7.yaml (e.g. enp1s0f1np1 192.168.100.N/24, "
               "enP2p1s0f1np1 192.168.101.N/24, mtu: 9000), then `sudo netplan apply`")


@dataclass(frozen=True)
class Problem:
    severity: str  # error | warning | info
    code: str
    message: str
    fix: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def nccl_env(facts: HostFacts) -> dict[str, str]:
    """This node's NCCL/Gloo/vLLM variables, or {} when there is no usable fabric.

    Bootstrap sockets go over one twin (the non-capital-P one when usable); the RDMA data path
    uses every active twin. NCCL_IB_GID_INDEX is set only when every twin has a RoCE v2 IPv4 GID
    at the same index: an empty value would parse as 0 (the link-local GID), so never emit one.
    """
    socket = facts.socket_twin
    if socket is None:
        return {}
    twins = facts.active_twins
    env = {
        "NCCL_SOCKET_IFNAME": socket.netdev,
        "NCCL_IB_HCA": ",".join(t.hca for t in twins),
        "NCCL_IB_DISABLE": "0",
        "GLOO_SOCKET_IFNAME": socket.netdev,
        "TP_SOCKET_IFNAME": socket.netdev,
        "UCX_NET_DEVICES": socket.netdev,
        "VLLM_HOST_IP": socket.ipv4[0].ip,
    }
    gid_indexes = {t.gid_index for t in twins}
    if len(gid_indexes) == 1 and None not in gid_indexes:
        env["NCCL_IB_GID_INDEX"] = str(gid_indexes.pop())
    return env


def host_problems(facts: HostFacts, *, single_node: bool = False, mtu: int = RECOMMENDED_MTU) -> list[Problem]:
    """What is wrong with this host's fabric on its own (cross-node checks live in checks.py)."""
    problems: list[Problem] = []
    severity = "info" if single_node else "error"
    none_needed = (" (single node: no fabric is needed; on a worker check with `setup-env.sh --worker`)"
                   if single_node else "")
    if not facts.hcas:
        problems.append(Problem(severity, "no-rdma-device",
                                "no RoCE/RDMA device in /sys/class/infiniband" + none_needed,
                                "" if single_node else "check the ConnectX-7 driver (`lsmod | grep mlx5_ib`, "
                                "`ibdev2netdev`); on DGX OS reinstall the DOCA/OFED packages and reboot"))
        return problems
    if not facts.twins:
        problems.append(Problem(severity, "no-cabled-port", "no ConnectX-7 port is up" + none_needed,
                                "" if single_node else "plug the QSFP cable into the same port on every node "
                                "(port 1, the outermost cage, is the usual one) and check `ibdev2netdev` says (Up)"))
        return problems
    for twin in facts.twins:
        if not twin.active or twin.operstate != "up":
            problems.append(Problem(
                "error", "twin-down",
                f"{twin.netdev or twin.hca} ({twin.hca}) is down while its twin on the same port is up: "
                "NCCL gets half the bandwidth",
                f"`sudo ip link set {twin.netdev} up`; if it stays down after a warm reboot, cold-boot the node "
                "(a warm reboot can drop the f1 half)"))
        elif not twin.ipv4:
            problems.append(Problem("error", "twin-no-ip", f"{twin.netdev} is up but has no IPv4 address",
                                    NETPLAN_FIX))
    usable = facts.active_twins
    for twin in usable:
        if len(twin.ipv4) > 1:
            problems.append(Problem("warning", "twin-many-ips",
                                    f"{twin.netdev} has {len(twin.ipv4)} IPv4 addresses "
                                    f"({', '.join(a.ip for a in twin.ipv4)}); NCCL and Ray may pick the wrong one",
                                    "keep one address per twin: " + NETPLAN_FIX))
        if twin.mtu is not None and twin.mtu != mtu:
            problems.append(Problem("warning", "mtu", f"{twin.netdev} has MTU {twin.mtu}, not {mtu}",
                                    f"set `mtu: {mtu}` for {twin.netdev} in the netplan on every node "
                                    f"(or `sudo ip link set {twin.netdev} mtu {mtu}` until reboot)"))
        if twin.speed_mbps is not None and twin.speed_mbps < FULL_SPEED_MBPS:
            problems.append(Problem("warning", "link-speed", f"{twin.netdev} links at {twin.speed_mbps} Mb/s, "
                                    f"not {FULL_SPEED_MBPS}",
                                    "check the cable; on a switch force 200G with autonegotiation off"))
        if twin.gid_index is None:
            problems.append(Problem("warning", "no-roce-v2-gid", f"{twin.hca} has no RoCE v2 GID for "
                                    f"{twin.netdev}'s IPv4",
                                    f"check `show_gids` or /sys/class/infiniband/{twin.hca}/ports/1/gid_attrs; "
                                    "the GID appears once the netdev has an IPv4 address"))
    for a, b in combinations(usable, 2):
        shared = {x.network for x in a.ipv4} & {y.network for y in b.ipv4}
        if shared:
            problems.append(Problem("error", "twins-same-subnet",
                                    f"{a.netdev} and {b.netdev} share subnet {sorted(shared)[0]}: routing is "
                                    "ambiguous and NCCL fails", NETPLAN_FIX))
    indexes = {t.gid_index for t in usable if t.gid_index is not None}
    if len(indexes) > 1:
        problems.append(Problem("info", "gid-index-differs",
                                "the RoCE v2 GID index differs between twins "
                                f"({', '.join(f'{t.hca}={t.gid_index}' for t in usable)}); NCCL_IB_GID_INDEX "
                                "is left unset so NCCL picks per device"))
    if len(facts.cabled_cages) > 1:
        problems.append(Problem("info", "both-ports-cabled",
                                "both QSFP ports are up: right for a 3-node mesh; for 2 nodes one cable is enough"))
    if usable and single_node:
        problems.append(Problem("info", "single-node-fabric", "a fabric is up but no workers are configured"))
    return problems


def summary(facts: HostFacts, *, single_node: bool = False, mtu: int = RECOMMENDED_MTU) -> dict:
    """The JSON `sparkhelpers discover --json` prints."""
    return {
        **facts.to_dict(),
        "nccl_env": nccl_env(facts),
        "problems": [p.to_dict() for p in host_problems(facts, single_node=single_node, mtu=mtu)],
    }
