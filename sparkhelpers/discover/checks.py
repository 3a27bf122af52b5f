"""Doctor checks as pure functions over every node's HostFacts (live probes live in doctor.py).

Each check yields ``Check(name, node, status, message, fix)`` with status pass | warn | fail.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from sparkhelpers.discover.fabric import RECOMMENDED_MTU, host_problems
from sparkhelpers.discover.facts import HostFacts
from sparkhelpers.units import human_bytes, human_pair

CLUSTER = "cluster"
GIB = 1024**3
# NVIDIA's pass mark for nccl-tests all_gather bus bandwidth between two Sparks (175 Gb/s).
NCCL_BUSBW_MIN_GBS = 21.875
# One ConnectX-7 twin with ib_write_bw measures ~90-110 Gb/s; below this something is wrong.
IB_WRITE_BW_MIN_GBITS = 80.0


@dataclass(frozen=True)
class Check:
    name: str
    node: str
    status: str  # pass | warn | fail
    message: str
    fix: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class NodeFacts:
    name: str
    facts: HostFacts
    is_head: bool = False


@dataclass(frozen=True)
class Plan:
    """What the cluster is about to run, as far as the checks need it."""

    image: str = ""
    ports: tuple[tuple[str, int], ...] = ()
    gpu_memory_util: float = 0.85
    model: str = ""
    model_bytes: int | None = None
    mtu: int = RECOMMENDED_MTU


# Host problem codes -> the check they belong to.
_PROBLEM_CHECK = {
    "no-rdma-device": "fabric", "no-cabled-port": "fabric", "twin-down": "twins", "twin-no-ip": "twins",
    "twins-same-subnet": "twin-subnets", "mtu": "mtu", "link-speed": "link-speed", "no-roce-v2-gid": "gid",
    "twin-many-ips": "unique-ips",
}
_SEVERITY_STATUS = {"error": "fail", "warning": "warn"}


def per_node_fabric(node: NodeFacts, *, single_node: bool, mtu: int) -> list[Check]:
    problems = host_problems(node.facts, single_node=single_node, mtu=mtu)
    out: list[Check] = []
    seen: set[str] = set()
    for p in problems:
        status = _SEVERITY_STATUS.get(p.severity)
        name = _PROBLEM_CHECK.get(p.code)
        if status is None or name is None:
            continue
        seen.add(name)
        out.append(Check(name, node.name, status, p.message, p.fix))
    if single_node and not node.facts.active_twins:
        return out
    if "fabric" not in seen and not node.facts.active_twins:
        out.insert(0, Check("fabric", node.name, "fail",
                            f"port {','.join(map(str, node.facts.cabled_cages))} is cabled but no twin is usable "
                            "(up, with an IPv4)", "check the cable at both ends; `ibdev2netdev` must say (Up) and "
                            "`ip -br addr` must show an IPv4 on both twins"))
    elif "fabric" not in seen:
        twins = node.facts.active_twins
        out.insert(0, Check("fabric", node.name, "pass",
                            f"port {','.join(map(str, node.facts.cabled_cages))} cabled; NCCL_IB_HCA="
                            + ",".join(t.hca for t in twins)))
        for name, ok in (("twins", "every twin of the cabled port is up with an IPv4"),
                         ("twin-subnets", "the twins are in different subnets"),
                         ("mtu", f"MTU {mtu} on every twin"), ("link-speed", "full link speed (or unknown)"),
                         ("gid", "a RoCE v2 IPv4 GID on every twin")):
            if name not in seen:
                out.append(Check(name, node.name, "pass", ok))
    return out


def gpu(node: NodeFacts) -> Check:
    f = node.facts
    if not f.gpus:
        return Check("gpu", node.name, "fail", "nvidia-smi reports no GPU (or is missing)",
                     "check the NVIDIA driver: `nvidia-smi`; after a kernel update reinstall the matching driver")
    if "GB10" not in f.gpu_name:
        return Check("gpu", node.name, "warn", f"GPU is {f.gpu_name}, not an NVIDIA GB10 (DGX Spark)",
                     "check this address is a DGX Spark")
    return Check("gpu", node.name, "pass", f"{f.gpu_name}, driver {f.gpu_driver}")


def docker(node: NodeFacts) -> Check:
    f = node.facts
    if f.docker_ok:
        return Check("docker", node.name, "pass", f"docker is running and usable by {f.user or 'this user'}")
    err = f.docker_error
    if not f.docker_installed:
        fix = "sudo apt-get install -y docker.io (DGX OS ships it; reinstall the DGX OS docker packages)"
    elif "permission denied" in err.lower():
        fix = f"sudo usermod -aG docker {f.user or '$USER'}, then log out and back in"
    else:
        fix = "sudo systemctl start docker (and `sudo systemctl enable docker`)"
    return Check("docker", node.name, "fail", f"docker is not usable: {err}", fix)


def dev_infiniband(node: NodeFacts, *, single_node: bool) -> Check | None:
    devs = node.facts.dev_infiniband
    if devs and any(d.startswith("uverbs") for d in devs):
        return Check("dev-infiniband", node.name, "pass", f"/dev/infiniband has {len(devs)} devices")
    if single_node:
        return None
    return Check("dev-infiniband", node.name, "fail",
                 "/dev/infiniband is missing or has no uverbs device: containers cannot use RDMA and NCCL "
                 "falls back to sockets", "load the RDMA modules (`sudo modprobe mlx5_ib ib_uverbs`) or reinstall "
                 "DOCA/OFED, then check `ls /dev/infiniband`")


def memlock(node: NodeFacts) -> Check:
    value = node.facts.memlock
    if value == "unlimited":
        return Check("memlock", node.name, "pass", "memlock ulimit is unlimited")
    return Check("memlock", node.name, "warn",
                 f"memlock ulimit is {value or 'unknown'} KiB: RDMA tools run on the host (perftest, nccl-tests) "
                 "may fail to register memory (containers get --ulimit memlock=-1)",
                 "add `* - memlock unlimited` to /etc/security/limits.d/rdma.conf and log in again")


def hf_cache_owner(node: NodeFacts) -> Check:
    f = node.facts
    if not f.hf_cache:
        return Check("hf-cache", node.name, "warn", "HF cache path unknown", "sparkhelpers config set HF_CACHE PATH")
    if f.hf_cache_existing != f.hf_cache:
        return Check("hf-cache", node.name, "warn", f"{f.hf_cache} does not exist yet (it will be created)",
                     f"sudo mkdir -p {f.hf_cache} && sudo chown {f.user or '$USER'} {f.hf_cache}")
    if f.hf_cache_owner_uid is not None and f.uid is not None and f.hf_cache_owner_uid != f.uid:
        return Check("hf-cache", node.name, "fail", f"{f.hf_cache} is owned by {f.hf_cache_owner}, not {f.user}",
                     f"sudo chown -R {f.user or '$USER'} {f.hf_cache}")
    if f.hf_cache_foreign:
        return Check("hf-cache", node.name, "fail",
                     f"{f.hf_cache} holds files not owned by {f.user} (e.g. {f.hf_cache_foreign[0]}): "
                     "downloads and rsync will fail", f"sudo chown -R {f.user or '$USER'} {f.hf_cache}")
    return Check("hf-cache", node.name, "pass", f"{f.hf_cache} is owned by {f.user}")


def disk(node: NodeFacts, plan: Plan) -> Check:
    free = node.facts.disk_free_bytes
    if free is None:
        return Check("disk", node.name, "warn", "free space of the HF cache is unknown", "check `df -h HF_CACHE`")
    if plan.model_bytes is None:
        return Check("disk", node.name, "warn", f"{human_bytes(free)} free for the HF cache; the size of "
                     f"{plan.model or 'the model'} is unknown, so it cannot be judged",
                     "pick a catalog model (`sparkhelpers models list`) to get a size")
    need = int(plan.model_bytes * 1.1)
    has, needs = human_pair(free, need)
    if free < need:
        return Check("disk", node.name, "fail", f"{has} free, {plan.model} needs about {needs}",
                     f"free space under {node.facts.hf_cache_existing or 'the HF cache'}")
    return Check("disk", node.name, "pass", f"{has} free, {plan.model} needs about {needs}")


def memory(node: NodeFacts, plan: Plan) -> Check:
    f = node.facts
    if not f.mem_total_kib or f.mem_available_kib is None:
        return Check("memory", node.name, "warn", "MemAvailable unknown", "check /proc/meminfo")
    want = plan.gpu_memory_util * f.mem_total_kib
    avail_g, want_g = f.mem_available_kib / 1024**2, want / 1024**2
    if f.mem_available_kib < want:
        return Check("memory", node.name, "fail",
                     f"MemAvailable {avail_g:.1f} GiB is below GPU_MEMORY_UTIL {plan.gpu_memory_util} x MemTotal "
                     f"= {want_g:.1f} GiB: vLLM will refuse to start",
                     "stop other GPU users, `sync; echo 3 | sudo tee /proc/sys/vm/drop_caches`, or lower "
                     "GPU_MEMORY_UTIL")
    return Check("memory", node.name, "pass", f"MemAvailable {avail_g:.1f} GiB >= planned {want_g:.1f} GiB")


def ports(node: NodeFacts, plan: Plan) -> list[Check]:
    out = []
    for key, port in plan.ports:
        if port in node.facts.listening_ports:
            out.append(Check(f"port-{port}", node.name, "warn",
                             f"{key} {port} is already in use (fine if this cluster's engine is running)",
                             f"stop what listens on {port} (`sudo ss -ltnp 'sport = :{port}'`) or "
                             f"`sparkhelpers config set {key} OTHER_PORT`"))
        else:
            out.append(Check(f"port-{port}", node.name, "pass", f"{key} {port} is free"))
    return out


def _differs(name: str, nodes: list[NodeFacts], value, what: str, fix: str) -> Check:  # noqa: ANN001
    values = {n.name: value(n.facts) for n in nodes}
    distinct = set(values.values())
    if len(distinct) == 1:
        return Check(name, CLUSTER, "pass", f"{what} {distinct.pop() or '(none)'} on every node")
    shown = ", ".join(f"{k}: {v or 'none'}" for k, v in values.items())
    return Check(name, CLUSTER, "fail", f"{what} differs between nodes ({shown})", fix)


def cross_node(nodes: list[NodeFacts], plan: Plan) -> list[Check]:
    """Checks that compare nodes: cabling, subnets, IPs, MTU, GPU/driver, kernel, image."""
    out = [
        _differs("gpu-match", nodes, lambda f: f.gpu_name, "GPU", "every node must be a DGX Spark (NVIDIA GB10)"),
        _differs("driver-match", nodes, lambda f: f.gpu_driver, "NVIDIA driver",
                 "install the same driver on every node (`sudo apt-get install nvidia-driver-<version>`), "
                 "then reboot"),
        _differs("kernel-match", nodes, lambda f: f.kernel, "kernel",
                 "update every node to the same DGX OS release (`sudo apt full-upgrade`), then reboot"),
    ]
    with_fabric = [n for n in nodes if n.facts.active_twins]
    if len(with_fabric) == len(nodes):
        out.append(_differs("same-port", nodes, lambda f: ",".join(map(str, f.cabled_cages)), "cabled QSFP port",
                            "cable the same physical port on every node (port 1, the outermost cage, is usual)"))
        out += _subnets_and_ips(nodes)
        out.append(_mtu_match(nodes, plan.mtu))
        out.append(_gid_match(nodes))
    if plan.image:
        out.append(_image(nodes, plan.image))
    return out


def _twin_role(netdev: str) -> str:
    """Twins are matched across nodes by name (same port, same PCIe half)."""
    return netdev


def _subnets_and_ips(nodes: list[NodeFacts]) -> list[Check]:
    out = []
    by_role: dict[str, dict[str, set[str]]] = {}
    for n in nodes:
        for t in n.facts.active_twins:
            by_role.setdefault(_twin_role(t.netdev), {})[n.name] = {a.network for a in t.ipv4}
    bad = []
    for role, per_node in sorted(by_role.items()):
        if len(per_node) != len(nodes):
            continue  # a twin missing on some node is the "twins" check's failure
        nets = {frozenset(v) for v in per_node.values()}
        if len(nets) > 1:
            shown = ", ".join(f"{k}: {'/'.join(sorted(v)) or 'none'}" for k, v in per_node.items())
            bad.append(f"{role} ({shown})")
    if bad:
        out.append(Check("subnet-match", CLUSTER, "fail", "a twin's subnet differs between nodes: " + "; ".join(bad),
                         "put the same twin in the same /24 on every node (e.g. enp1s0f1np1 192.168.100.N/24, "
                         "enP2p1s0f1np1 192.168.101.N/24) in /etc/netplan/40-cx7.yaml, then `sudo netplan apply`"))
    else:
        out.append(Check("subnet-match", CLUSTER, "pass", "each twin is in the same subnet on every node"))
    owners: dict[str, list[str]] = {}
    for n in nodes:
        for t in n.facts.active_twins:
            for a in t.ipv4:
                owners.setdefault(a.ip, []).append(f"{n.name}:{t.netdev}")
    dups = {ip: who for ip, who in owners.items() if len(who) > 1}
    if dups:
        shown = "; ".join(f"{ip} on {', '.join(who)}" for ip, who in dups.items())
        out.append(Check("unique-ips", CLUSTER, "fail", f"fabric IPs are not unique: {shown}",
                         "give every node its own host number in each twin subnet"))
    else:
        out.append(Check("unique-ips", CLUSTER, "pass", f"{len(owners)} fabric IPs, all unique"))
    return out


def _mtu_match(nodes: list[NodeFacts], mtu: int) -> Check:
    values = {f"{n.name}:{t.netdev}": t.mtu for n in nodes for t in n.facts.active_twins}
    distinct = set(values.values())
    if len(distinct) > 1:
        shown = ", ".join(f"{k}={v}" for k, v in values.items())
        return Check("mtu-match", CLUSTER, "fail", f"MTU differs across the link ({shown}): large packets are "
                     "dropped and RDMA stalls (IBV_WC_RETRY_EXC_ERR)",
                     f"set `mtu: {mtu}` on both twins of every node in the netplan, then `sudo netplan apply`")
    return Check("mtu-match", CLUSTER, "pass", f"MTU {distinct.pop() if distinct else '?'} on every twin")


def _gid_match(nodes: list[NodeFacts]) -> Check:
    """A GID index that differs between nodes must not be pinned: Ray copies the head's NCCL_* to workers."""
    values = {f"{n.name}:{t.hca}": t.gid_index for n in nodes for t in n.facts.active_twins}
    if len(set(values.values())) > 1:
        shown = ", ".join(f"{k}={'none' if v is None else v}" for k, v in values.items())
        return Check("gid-match", CLUSTER, "warn", f"the RoCE v2 GID index differs ({shown}); a pinned "
                     "NCCL_IB_GID_INDEX breaks NCCL init on the nodes where it is wrong",
                     "leave NCCL_IB_GID_INDEX empty (`sparkhelpers config unset NCCL_IB_GID_INDEX`) so NCCL picks "
                     "the RoCE v2 GID per device")
    return Check("gid-match", CLUSTER, "pass", f"RoCE v2 GID index {set(values.values()).pop()} on every twin")


def _image(nodes: list[NodeFacts], image: str) -> Check:
    missing = [n.name for n in nodes if not n.facts.image_id]
    if missing:
        return Check("image", CLUSTER, "fail", f"image {image} is missing on {', '.join(missing)}",
                     f"docker pull {image} on the head, then copy it: `docker save {image} | ssh WORKER docker load`")
    ids = {n.name: n.facts.image_id for n in nodes}
    if len(set(ids.values())) > 1:
        shown = ", ".join(f"{k}: {v[:19]}" for k, v in ids.items())
        return Check("image", CLUSTER, "fail", f"image {image} has different IDs ({shown})",
                     f"copy the head's image to every worker: `docker save {image} | ssh WORKER docker load`")
    return Check("image", CLUSTER, "pass", f"{image} present with the same ID on every node")


def static_checks(nodes: list[NodeFacts], plan: Plan) -> list[Check]:
    """Every check that needs only the snapshots."""
    single = len(nodes) == 1
    out: list[Check] = []
    for n in nodes:
        out += per_node_fabric(n, single_node=single, mtu=plan.mtu)
        out.append(gpu(n))
        out.append(docker(n))
        dev = dev_infiniband(n, single_node=single)
        if dev is not None:
            out.append(dev)
        out += [memlock(n), hf_cache_owner(n), disk(n, plan), memory(n, plan)]
        if n.is_head:
            out += ports(n, plan)
    if not single:
        out += cross_node(nodes, plan)
    return out


def judge_nccl_busbw(output: str) -> Check:
    """nccl-tests prints '# Avg bus bandwidth    : 22.91'; NVIDIA's pass mark is 21.875 GB/s."""
    m = re.search(r"Avg bus bandwidth\s*:\s*([0-9.]+)", output)
    if not m:
        return Check("nccl-bandwidth", CLUSTER, "fail", "all_gather_perf printed no bus bandwidth",
                     "run it by hand with NCCL_DEBUG=INFO and read the error")
    value = float(m.group(1))
    transport = "NET/Socket" if re.search(r"NET/Socket|Using network Socket", output) else ""
    if value < NCCL_BUSBW_MIN_GBS:
        return Check("nccl-bandwidth", CLUSTER, "fail",
                     f"all_gather bus bandwidth {value:.2f} GB/s < {NCCL_BUSBW_MIN_GBS} GB/s"
                     + (f" (NCCL used {transport})" if transport else ""),
                     "use both twins in NCCL_IB_HCA, MTU 9000 at both ends, the release NCCL; pass /dev/infiniband")
    return Check("nccl-bandwidth", CLUSTER, "pass", f"all_gather bus bandwidth {value:.2f} GB/s "
                 f">= {NCCL_BUSBW_MIN_GBS} GB/s")


def judge_ib_write_bw(output: str, node: str, hca: str) -> Check:
    """ib_write_bw --report_gbits: the data row is '#bytes #iterations BW-peak BW-average MsgRate'."""
    rows = [ln.split() for ln in output.splitlines() if re.match(r"^\s*\d+\s+\d+\s+[0-9.]+\s+[0-9.]+", ln)]
    if not rows:
        return Check(f"ib-bandwidth-{hca}", node, "fail", f"ib_write_bw on {hca} printed no result",
                     f"run `ib_write_bw -d {hca} --report_gbits` on both nodes by hand and read the error")
    avg = float(rows[-1][3])
    if avg < IB_WRITE_BW_MIN_GBITS:
        return Check(f"ib-bandwidth-{hca}", node, "fail", f"{hca}: {avg:.1f} Gb/s < {IB_WRITE_BW_MIN_GBITS:.0f} Gb/s",
                     "check MTU 9000 at both ends, the cable and `ethtool` speed (200000Mb/s)")
    return Check(f"ib-bandwidth-{hca}", node, "pass", f"{hca}: {avg:.1f} Gb/s")


def judge_engine_log(text: str | None, node: str) -> Check:
    """NCCL's transport as an engine logged it with NCCL_DEBUG=INFO: NET/IB good, NET/Socket bad."""
    if text is None:
        return Check("nccl-transport", node, "warn", "no engine log found (no running engine?)",
                     "start the cluster with NCCL_DEBUG=INFO, then run checkout_setup.sh --nccl")
    if re.search(r"NET/Socket|Using network Socket|NET/IB : No device found", text):
        return Check("nccl-transport", node, "fail", "NCCL is using sockets (NET/Socket), not RDMA",
                     "pass /dev/infiniband to the container (or --privileged), set NCCL_IB_HCA to the active twins")
    if re.search(r"NET/IB|IBext", text):
        return Check("nccl-transport", node, "pass", "NCCL uses RDMA (NET/IB)")
    return Check("nccl-transport", node, "warn", "the engine log does not say which NCCL transport is used",
                 "sparkhelpers config set NCCL_DEBUG INFO, restart the cluster, run checkout_setup.sh --nccl")


def summarize(checks: Iterable[Check]) -> dict[str, int]:
    counts = {"pass": 0, "warn": 0, "fail": 0}
    for c in checks:
        counts[c.status] += 1
    return counts
