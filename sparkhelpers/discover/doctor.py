"""The doctor: snapshot every node in parallel, run the pure checks, then the few live probes.

Live probes (only without --snapshot): SSH in batch mode head -> worker (the capture itself) and
worker -> head, no-fragment pings at the MTU over each twin, and on request RDMA / NCCL bandwidth
and the engine log's NCCL transport.
"""

from __future__ import annotations

import json
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from sparkhelpers.config import Config, results_dir, state_dir
from sparkhelpers.discover import checks as ck
from sparkhelpers.discover.fabric import RECOMMENDED_MTU, nccl_env
from sparkhelpers.discover.facts import HostFacts, Twin, discover_snapshot
from sparkhelpers.discover.nodes import Node, cluster_nodes
from sparkhelpers.discover.probe import capture, redact_tree
from sparkhelpers.errors import SparkError, UsageError
from sparkhelpers.runner import LOCAL, Host, Runner, shell_quote

LEVELS = ("quick", "ib", "nccl", "full")
HEAD = Node(0, "head", LOCAL)
_PRESENT = "__spark_log_present__"


@dataclass
class Report:
    checks: list[ck.Check] = field(default_factory=list)
    snapshots: dict[str, Path] = field(default_factory=dict)
    bundle: Path | None = None

    @property
    def failed(self) -> bool:
        return any(c.status == "fail" for c in self.checks)

    def to_dict(self) -> dict:
        return {"summary": ck.summarize(self.checks), "checks": [c.to_dict() for c in self.checks],
                "bundle": str(self.bundle) if self.bundle else None}


def plan_from_config(cfg: Config) -> ck.Plan:
    ports = tuple((k, cfg.get_int(k)) for k in ("VLLM_PORT", "RAY_PORT", "RAY_DASHBOARD_PORT") if cfg.get(k))
    model = cfg.get("MODEL")
    return ck.Plan(image=cfg.get("VLLM_IMAGE"), ports=ports, gpu_memory_util=cfg.get_float("GPU_MEMORY_UTIL", 0.85),
                   model=model, model_bytes=model_size_bytes(cfg), mtu=cfg.get_int("FABRIC_MTU", RECOMMENDED_MTU))


def model_size_bytes(cfg: Config) -> int | None:
    """The checkpoint size from the models helper's catalog when it knows the model, else None."""
    try:
        from sparkhelpers.models import catalog
        from sparkhelpers.models.fit import dtype_bytes

        arch = catalog.resolve_model(cfg).arch
        if arch.checkpoint_gib:
            return int(arch.checkpoint_gib * 1024**3)
        per_param = arch.bytes_per_param or dtype_bytes(arch.weight_dtype)
        return int(arch.params * per_param) if arch.params and per_param else None
    except (ImportError, AttributeError, SparkError, TypeError, ValueError):
        return None


def parse_snapshot_args(values: list[str]) -> list[tuple[str, Path]]:
    out = []
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"--snapshot {value!r} is not NAME=DIR", fix="e.g. --snapshot head=./spark1 "
                             "--snapshot spark-02=./spark2 (the first one is the head)")
        out.append((name, Path(path)))
    if len({n for n, _ in out}) != len(out):
        raise UsageError("two --snapshot options use the same NAME", fix="give every node its own name")
    return out


def _capture_node(runner: Runner, cfg: Config, node: Node, dest: Path) -> tuple[Path | None, str]:
    try:
        path = capture(runner, dest / node.name, node.host, hf_cache=_hf_cache(cfg, node), image=cfg.get("VLLM_IMAGE"))
        return path, ""
    except SparkError as exc:
        return None, exc.message


def _hf_cache(cfg: Config, node: Node) -> str:
    return cfg.get("HF_CACHE") if node.is_head else (cfg.get("WORKER_HF_CACHE") or cfg.get("HF_CACHE"))


def run(cfg: Config, *, level: str = "quick", snapshots: list[tuple[str, Path]] | None = None,
        runner: Runner | None = None, progress=lambda msg: None) -> Report:  # noqa: ANN001
    if level not in LEVELS:
        raise UsageError(f"unknown level {level}", fix="use --quick, --ib, --nccl or --full")
    runner = runner or Runner()
    report = Report()
    work = Path(tempfile.mkdtemp(prefix="spark-doctor-"))
    try:
        if snapshots:
            names = [n for n, _ in snapshots]
            facts = [ck.NodeFacts(name, discover_snapshot(str(path)), i == 0) for i, (name, path) in
                     enumerate(snapshots)]
            report.snapshots = dict(snapshots)
            nodes: list[Node] = []
        else:
            nodes = cluster_nodes(cfg)
            names = [n.name for n in nodes]
            progress(f"probing {len(nodes)} node(s) in parallel: {', '.join(names)}")
            captured = runner.parallel(lambda n: _capture_node(runner, cfg, n, work), nodes)
            facts = []
            for node, (path, error) in zip(nodes, captured, strict=True):
                if not node.host.is_local:  # a worker, or the head seen from a control machine
                    report.checks.append(_ssh_check(node, error))
                if path is None:
                    if node.is_head:
                        where = "this host's" if node.host.is_local else f"the head's ({node.host.target})"
                        raise SparkError(f"could not read {where} facts: {error}",
                                         fix="check HEAD_HOST and `ssh -o BatchMode=yes HEAD true`"
                                         if not node.host.is_local else "")
                    continue
                report.snapshots[node.name] = path
                facts.append(ck.NodeFacts(node.name, discover_snapshot(str(path)), node.is_head))
        plan = plan_from_config(cfg)
        complete = len(facts) == len(names)
        report.checks += ck.static_checks(facts, plan) if complete else _partial_checks(facts, plan)
        if nodes:
            report.checks += live_checks(runner, cfg, nodes, facts, level, plan, progress)
        if level == "full":
            report.bundle = write_bundle(cfg, report)
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _partial_checks(facts: list[ck.NodeFacts], plan: ck.Plan) -> list[ck.Check]:
    """Some worker could not be probed: per-node checks for the rest; cross-node ones would mislead."""
    out = []
    for n in facts:
        out += [c for c in ck.static_checks([n], plan) if c.node != ck.CLUSTER]
    return out


def _ssh_check(node: Node, error: str) -> ck.Check:
    if not error:
        return ck.Check("ssh", node.name, "pass", f"SSH in batch mode to {node.host.target} works")
    key = f" -i {node.host.key}" if node.host.key else ""
    return ck.Check("ssh", node.name, "fail", f"cannot probe {node.name}: {error}",
                    f"`ssh -o BatchMode=yes{key} {node.host.target} true` must work: "
                    f"`ssh-copy-id{key} {node.host.target}`, check WORKER_USER and that sshd runs there")


def live_checks(runner: Runner, cfg: Config, nodes: list[Node], facts: list[ck.NodeFacts], level: str,
                plan: ck.Plan, progress) -> list[ck.Check]:  # noqa: ANN001
    by_name = {f.name: f for f in facts}
    head = by_name.get("head")
    head_node = nodes[0]  # this machine, or HEAD_HOST from a control machine
    workers = [n for n in nodes if not n.is_head and n.name in by_name]
    if head is None or not workers:
        return []
    out: list[ck.Check] = []
    head_ip = nccl_env(head.facts).get("VLLM_HOST_IP") or cfg.get("HEAD_IP")
    progress("checking SSH back to the head and no-fragment pings over the fabric")
    jobs = [("ssh-back", w) for w in workers] + [("ping", w) for w in workers]

    def job(item):  # noqa: ANN001, ANN202
        kind, w = item
        if kind == "ssh-back":
            return [ssh_back(runner, w, head.facts, head_ip)]
        return fabric_pings(runner, head.facts, w, by_name[w.name].facts, plan.mtu, head_node.host)

    for result in runner.parallel(job, jobs):
        out += result
    if level in ("ib", "full"):
        progress("measuring RDMA bandwidth with ib_write_bw")
        for w in workers:
            out += ib_bandwidth(runner, head.facts, w, by_name[w.name].facts, head_node.host)
    if level in ("nccl", "full"):
        progress("reading NCCL transport from the engine logs; nccl-tests when installed")
        out.append(nccl_tests(runner, [head, *(by_name[w.name] for w in workers)], head_node.host))
        log_dir = engine_log_dir(cfg)
        out += runner.parallel(lambda n: engine_transport(runner, n, log_dir), [head_node, *workers])
    return out


def ssh_back(runner: Runner, worker: Node, head: HostFacts, head_ip: str) -> ck.Check:
    if not head_ip:
        return ck.Check("ssh-back", worker.name, "warn", "the head has no fabric IP to SSH back to",
                        "fix the head's fabric first")
    target = f"{head.user}@{head_ip}" if head.user else head_ip
    r = runner.on(worker.host, ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
                                "-o", "StrictHostKeyChecking=accept-new", target, "true"], timeout=30, mutating=False)
    if r.ok:
        return ck.Check("ssh-back", worker.name, "pass", f"SSH in batch mode from {worker.name} to {target} works")
    return ck.Check("ssh-back", worker.name, "warn",
                    f"{worker.name} cannot SSH to the head at {target} ({r.last_line or f'exit {r.returncode}'}): "
                    "sparkhelpers does not need it, mpirun/nccl-tests do",
                    f"on {worker.name}: `ssh-keygen -t ed25519` (if no key) and `ssh-copy-id {target}`")


def _peer_twin(head: HostFacts, twin: Twin) -> Twin | None:
    nets = {a.network for a in twin.ipv4}
    return next((h for h in head.active_twins if nets & {a.network for a in h.ipv4}), None)


def fabric_pings(runner: Runner, head: HostFacts, worker: Node, wfacts: HostFacts, mtu: int,
                 head_host: Host = LOCAL) -> list[ck.Check]:
    out = []
    configured = worker.fabric_ip
    ips = {a.ip for t in wfacts.active_twins for a in t.ipv4}
    if configured and configured not in ips:
        out.append(ck.Check("worker-ib-ip", worker.name, "fail",
                            f"WORKER_IB_IP {configured} is not an address of {worker.name}'s active fabric twins "
                            f"({', '.join(sorted(ips)) or 'none'})",
                            "sparkhelpers config set WORKER_IB_IP '<fabric IPs in WORKER_HOST order>' "
                            "(or leave it empty to discover)"))
    pairs = [(twin, local) for twin in wfacts.active_twins
             if (local := _peer_twin(head, twin)) is not None and twin.ipv4]
    # the twins are independent links: pinged at once (each ping takes its 0.2 s interval)
    return out + runner.parallel(lambda p: _ping_twin(runner, head_host, worker, *p), pairs)


def _ping_twin(runner: Runner, head_host: Host, worker: Node, twin: Twin, local: Twin) -> ck.Check:
    size = (min(local.mtu or 1500, twin.mtu or 1500)) - 28
    want = (local.mtu or 1500) - 28
    ip = twin.ipv4[0].ip
    r = runner.on(head_host, ["ping", "-c", "2", "-W", "2", "-i", "0.2", "-M", "do", "-s", str(want),
                              "-I", local.netdev, ip], timeout=20, mutating=False)
    name = f"ping-{twin.netdev}"
    if r.ok:
        return ck.Check(name, worker.name, "pass", f"{ip} answers {want}-byte no-fragment pings over "
                        f"{local.netdev} (MTU {local.mtu})")
    hint = f" (path MTU is {size + 28})" if size != want else ""
    return ck.Check(name, worker.name, "fail",
                    f"{ip} does not answer {want}-byte no-fragment pings over {local.netdev}{hint}: "
                    f"{r.last_line or 'no reply'}",
                    "check the cable and that both ends have the same MTU and subnet "
                    f"(`ping -M do -s {want} -I {local.netdev} {ip}`)")


def _has(runner: Runner, host: Host, tool: str) -> bool:
    return runner.on(host, f"command -v {tool} >/dev/null", timeout=20, mutating=False).ok


def ib_bandwidth(runner: Runner, head: HostFacts, worker: Node, wfacts: HostFacts,
                 head_host: Host = LOCAL) -> list[ck.Check]:
    if not (_has(runner, head_host, "ib_write_bw") and _has(runner, worker.host, "ib_write_bw")):
        return [ck.Check("ib-bandwidth", worker.name, "warn", "ib_write_bw is not installed on every node: "
                         "RDMA bandwidth not measured", "sudo apt-get install -y perftest (on every node)")]
    out = []
    for twin in wfacts.active_twins:
        local = _peer_twin(head, twin)
        if local is None:
            continue
        server = ["timeout", "40", "ib_write_bw", "-d", twin.hca, "--report_gbits", "-D", "5", "-F"]
        client = ["timeout", "40", "ib_write_bw", "-d", local.hca, "--report_gbits", "-D", "5", "-F",
                  twin.ipv4[0].ip]

        def side(item, server=server, client=client):  # noqa: ANN001, ANN202
            if item == "server":
                return runner.on(worker.host, server, timeout=60)
            time.sleep(2)  # the server must listen first
            return runner.on(head_host, client, timeout=60)

        _, res = runner.parallel(side, ["server", "client"])
        out.append(ck.judge_ib_write_bw(res.stdout, worker.name, local.hca))
    return out


def nccl_tests(runner: Runner, facts: list[ck.NodeFacts], head_host: Host = LOCAL) -> ck.Check:
    if not (_has(runner, head_host, "all_gather_perf") and _has(runner, head_host, "mpirun")):
        return ck.Check("nccl-bandwidth", ck.CLUSTER, "warn", "nccl-tests (all_gather_perf) or mpirun is not "
                        "installed on the head: NCCL bandwidth not measured",
                        "build nccl-tests with MPI=1 on every node (NVIDIA playbook 'nccl'), same path everywhere")
    env = nccl_env(facts[0].facts)
    ips = [nccl_env(f.facts).get("VLLM_HOST_IP", "") for f in facts]
    if not env or not all(ips):
        return ck.Check("nccl-bandwidth", ck.CLUSTER, "fail", "no usable fabric on every node: NCCL not tested",
                        "fix the fabric checks above first")
    argv = ["mpirun", "-np", str(len(ips)), "-H", ",".join(f"{ip}:1" for ip in ips),
            "--mca", "btl_tcp_if_include", env["NCCL_SOCKET_IFNAME"]]
    for key in ("NCCL_SOCKET_IFNAME", "NCCL_IB_HCA", "NCCL_IB_DISABLE"):
        argv += ["-x", f"{key}={env[key]}"]
    argv += ["all_gather_perf", "-b", "1G", "-e", "4G", "-f", "2"]
    r = runner.on(head_host, argv, timeout=600)
    return ck.judge_nccl_busbw(r.stdout + r.stderr)


def engine_log_dir(cfg: Config) -> str:
    """Where the cluster commands keep engine-<rank>.log / ray-<rank>.log on every node."""
    return f"{state_dir(cfg)}/logs/{cfg.get('CLUSTER_NAME') or 'spark'}"


def engine_transport(runner: Runner, node: Node, log_dir: str) -> ck.Check:
    """grep NCCL's transport lines out of every engine/ray log on the node (NCCL_DEBUG=INFO prints them)."""
    q = shell_quote(log_dir)
    r = runner.on(node.host, f"for f in {q}/engine-*.log {q}/ray-*.log; do if [ -f \"$f\" ]; then "
                  f"grep -hE 'NET/|Using network|IBext' \"$f\" | tail -n 20; echo {_PRESENT}; fi; done",
                  timeout=30, mutating=False)
    text = r.stdout.replace(_PRESENT, "") if _PRESENT in r.stdout else None
    return ck.judge_engine_log(text, node.name)


def write_bundle(cfg: Config, report: Report) -> Path:
    """A redacted tar.gz of every node's snapshot plus the results, mode 0600, under RESULTS_DIR."""
    out_dir = results_dir(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    staging = Path(tempfile.mkdtemp(prefix="spark-bundle-"))
    try:
        root = staging / f"doctor-{stamp}"
        for name, path in report.snapshots.items():
            shutil.copytree(path, root / "snapshots" / name)
        (root / "results.json").write_text(json.dumps(report.to_dict() | {"bundle": None}, indent=2) + "\n")
        redact_tree(root)
        bundle = out_dir / f"doctor-{stamp}.tar.gz"
        bundle.touch(mode=0o600)
        bundle.chmod(0o600)
        with tarfile.open(bundle, "w:gz") as tar:
            tar.add(root, arcname=root.name)
        return bundle
    finally:
        shutil.rmtree(staging, ignore_errors=True)
