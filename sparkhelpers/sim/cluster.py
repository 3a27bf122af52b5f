"""Bring an emulated cluster up, run commands on its nodes, tear it down (crash-safe, idempotent).

A node is a process tree in its own net/mount/pid/uts/ipc namespaces with a copy-on-write root,
its own sshd and dockerd (see node-init.sh). The nodes of one cluster share a "switch" namespace
with three bridges: management, fabric twin 1, fabric twin 2. Everything we create is found again
through its name (netns, cgroup) or the cluster's state directory, so ``down`` works after a crash.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import struct
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sparkhelpers.errors import SparkError
from sparkhelpers.runner import Runner, RunResult
from sparkhelpers.sim import facts as factmod
from sparkhelpers.sim import netplan

HERE = Path(__file__).resolve().parent
NODE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
READY_TIMEOUT_S = 90.0
NODE_SSH_KEY = "/root/.ssh/id_ed25519"


@dataclass
class Node:
    name: str
    index: int
    mgmt_ip: str
    fabric_ip: str  # twin 1 (enp1s0f1np1)
    fabric2_ip: str  # twin 2 (enP2p1s0f1np1)
    pid: int = 0


@dataclass
class Cluster:
    """A running (or recorded) emulated cluster. ``exec`` runs argv on a node as root, with a clean
    login-like environment (like ssh to a real box: nothing leaks in from the caller's shell)."""

    name: str
    dir: str
    nodes: list[Node]
    image: str = ""
    image_on: str = "head"
    created: float = 0.0
    facts: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def profile(self) -> str:
        return str(Path(self.dir) / "profile.env")

    @property
    def head(self) -> Node:
        return self.nodes[0]

    @property
    def workers(self) -> list[Node]:
        return self.nodes[1:]

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if name in (n.name, str(n.index)):
                return n
        raise SparkError(f"no node {name!r} in sim cluster {self.name}",
                         fix=f"use one of: {', '.join(n.name for n in self.nodes)}")

    def node_dir(self, name: str) -> Path:
        return Path(self.dir) / self.node(name).name

    def exec(self, node: str, argv: list[str] | str, *, input: str | bytes | None = None,
             timeout: float | None = 120, env: dict[str, str] | None = None,
             runner: Runner | None = None, interactive: bool = False) -> RunResult:
        """Run argv (or a bash snippet) on ``node``; returns the RunResult (check it yourself)."""
        n = self.node(node)
        if not alive(n.pid):
            raise SparkError(f"{n.name} of sim cluster {self.name} is stopped",
                             fix=f"sparkhelpers sim fault --name {self.name} {n.name} start-node")
        cmd = ["bash", "-c", argv] if isinstance(argv, str) else list(argv)
        return (runner or Runner()).run(exec_argv(n, cmd, env), input=input, timeout=timeout,
                                        host=n.name, interactive=interactive)

    def seed_model(self, node: str, model: str, *, gguf: bool = False, hf_cache: str = "/raid/hf-cache",
                   real: bool = False) -> str:
        """Put a placeholder snapshot of ``model`` (org/name) in a node's HF cache, laid out like a real
        download (refs/main -> snapshots/<commit> with config.json, tokenizer.json and a valid tiny
        model.safetensors), so engines and the lifecycle find it complete offline (the sim cannot
        download). The sim's engine always generates with SmolLM2; with ``gguf`` the real SmolLM2 GGUF
        goes in too, for llama-server. With ``real`` the snapshot holds the real-engine track's tiny
        Hugging Face model (sim.realvllm), which real vLLM loads. Returns the snapshot path as the node sees it."""
        from sparkhelpers.sim.image import MODEL_NAME, sources

        if "/" not in model or model.startswith("/") or not hf_cache.startswith("/raid/"):
            raise SparkError(f"cannot seed {model!r} in {hf_cache}", fix="give an org/name repo id, e.g. "
                             "Qwen/Qwen3-0.6B, and a cache under /raid")
        commit = hashlib.sha1(f"sparksim {model}".encode()).hexdigest()
        repo_rel = f"{hf_cache[len('/raid/'):]}/hub/models--{model.replace('/', '--')}"
        repo = self.node_dir(node) / "raid" / repo_rel
        snap = repo / "snapshots" / commit
        snap.mkdir(parents=True, exist_ok=True)
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
        note = "placeholder written by sparkhelpers sim: the emulated engine serves SmolLM2-135M under this name"
        (snap / "config.json").write_text(json.dumps({"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
                                                      "_sparksim": note}))
        (snap / "tokenizer.json").write_text(json.dumps({"version": "1.0", "_sparksim": note}))
        header = json.dumps({"__metadata__": {"sparksim": note},
                             "placeholder": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
        (snap / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
        if gguf:
            shutil.copy2(sources()["model"], snap / MODEL_NAME)
        if real:
            from sparkhelpers.sim.realvllm import tiny_model_dir

            for f in tiny_model_dir().iterdir():
                shutil.copy2(f, snap / f.name)
        return f"/raid/{repo_rel}/snapshots/{commit}"

    def down(self, runner: Runner | None = None) -> None:
        down(self.name, Path(self.dir).parent.parent, runner=runner)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "profile": self.profile}


def exec_argv(node: Node, cmd: list[str], env: dict[str, str] | None = None) -> list[str]:
    base = {"PATH": NODE_PATH, "HOME": "/root", "USER": "root", "LOGNAME": "root", "SHELL": "/bin/bash",
            "LANG": "C.UTF-8", "TERM": os.environ.get("TERM", "dumb"), **(env or {})}
    return ["nsenter", "-t", str(node.pid), "-a", "env", "-i", *[f"{k}={v}" for k, v in base.items()], *cmd]


def sim_root(state_dir: Path) -> Path:
    return state_dir / "sim"


def cluster_dir(state_dir: Path, name: str) -> Path:
    return sim_root(state_dir) / name


def load(state_dir: Path, name: str) -> Cluster:
    path = cluster_dir(state_dir, netplan.check_name(name)) / "cluster.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        raise SparkError(f"no sim cluster named {name!r} under {sim_root(state_dir)}",
                         fix=f"start it: sparkhelpers sim up --name {name}") from None
    data.pop("profile", None)
    data["nodes"] = [Node(**n) for n in data["nodes"]]
    return Cluster(**data)


def recorded(state_dir: Path) -> list[str]:
    root = sim_root(state_dir)
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def alive(pid: int) -> bool:
    return pid > 0 and Path(f"/proc/{pid}").exists()


def check_host(runner: Runner) -> None:
    """Root, the tools and the kernel features a node needs; one clear line if something is missing."""
    if os.geteuid() != 0:
        raise SparkError("the emulated cluster needs root (network namespaces, mounts)",
                         fix="run as root, e.g. sudo .venv/bin/sparkhelpers sim up")
    need = {"ip": "iproute2", "unshare": "util-linux", "nsenter": "util-linux", "sshd": "openssh-server",
            "ssh": "openssh-client", "dockerd": "docker.io", "runc": "runc", "tini": "tini", "rsync": "rsync",
            "ssh-keygen": "openssh-client"}
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    missing = sorted({pkg for cmd, pkg in need.items() if not shutil.which(cmd, path=path)})
    if missing:
        raise SparkError(f"missing packages for the emulated cluster: {' '.join(missing)}",
                         fix=f"apt-get install -y --no-install-recommends {' '.join(missing)} (or: make deps)")


def up(name: str = "sim", nodes: int = 2, *, state_dir: Path, facts: dict[str, dict[str, Any]] | None = None,
       image_on: str = "head", runner: Runner | None = None, progress=None) -> Cluster:
    """Start ``nodes`` emulated Sparks named spark1..N. Replaces leftovers of a crashed cluster of the
    same name; refuses when one is running. On any failure everything is torn down again."""
    runner = runner or Runner()
    say = progress or (lambda _msg: None)
    netplan.check_name(name)
    netplan.check_nodes(nodes)
    if image_on not in ("head", "all", "none"):
        raise SparkError(f"--image-on {image_on!r} is not head, all or none", fix="use --image-on head")
    node_facts = {netplan.node_name(i): factmod.merge_facts((facts or {}).get(netplan.node_name(i)))
                  for i in range(1, nodes + 1)}
    unknown = set(facts or {}) - set(node_facts)
    if unknown:
        raise SparkError(f"facts given for unknown node(s) {', '.join(sorted(unknown))}",
                         fix=f"this cluster has spark1..spark{nodes}")
    check_host(runner)
    cdir = cluster_dir(state_dir, name)
    if is_running(name, state_dir, runner):
        raise SparkError(f"sim cluster {name!r} is already up", fix=f"sparkhelpers sim down --name {name}")
    down(name, state_dir, runner=runner)  # leftovers of a crash
    t0 = time.monotonic()
    try:
        cluster = _start(name, nodes, cdir, node_facts, image_on, runner, say)
    except BaseException:
        down(name, state_dir, runner=runner, keep_logs=True)
        raise
    say(f"{nodes} node(s) up in {time.monotonic() - t0:.1f} s")
    return cluster


def _start(name: str, nodes: int, cdir: Path, node_facts: dict[str, dict[str, Any]], image_on: str,
           runner: Runner, say) -> Cluster:
    cdir.mkdir(parents=True, exist_ok=True)
    os.chmod(cdir, 0o700)
    (cdir / "bin").mkdir(exist_ok=True)
    for fake in (HERE / "fakes").iterdir():
        shutil.copy2(fake, cdir / "bin" / fake.name)
    key = cdir / "id_ed25519"
    if not key.exists():
        runner.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"sparksim-{name}", "-f", str(key)]
                   ).check("creating the cluster's SSH key")
    (cdir / "hosts").write_text(netplan.hosts_file(nodes, node_facts))
    cluster = Cluster(name=name, dir=str(cdir), nodes=[], image_on=image_on, created=time.time(), facts=node_facts)
    for i in range(1, nodes + 1):
        nf = node_facts[netplan.node_name(i)]
        factmod.write_node_files(cdir / netplan.node_name(i), i, nf)
        a = factmod.node_addrs(i, nf)
        cluster.nodes.append(Node(netplan.node_name(i), i, a.mgmt, a.twin1, a.twin2))
    _save(cluster)  # recorded before anything exists, so down() always finds it
    say("creating namespaces and links")
    namespaces = [netplan.switch_ns(name)] + [netplan.node_ns(name, i) for i in range(1, nodes + 1)]
    for ns in namespaces:
        runner.run(["ip", "netns", "add", ns]).check(f"creating network namespace {ns}")
    _batch(runner, [], netplan.root_batch(name, nodes), cdir / "links.batch")
    _batch(runner, ["-n", namespaces[0]], netplan.switch_batch(nodes, node_facts), cdir / "switch.batch")
    for i in range(1, nodes + 1):
        _batch(runner, ["-n", netplan.node_ns(name, i)], netplan.node_batch(i, node_facts[netplan.node_name(i)]),
               cdir / netplan.node_name(i) / "net.batch")
    say("starting nodes (sshd, dockerd)")
    spawned = {}
    for n in cluster.nodes:
        ndir = cdir / n.name
        for stale in ("ready", "failed"):
            (ndir / stale).unlink(missing_ok=True)
        env = {"SIM_NODE": n.name, "SIM_DIR": str(cdir), "SIM_CGROUP": netplan.cgroup_name(name, n.index)}
        spawned[n.name] = runner.spawn(node_command(name, n.index), log_path=str(ndir / "init.log"), env=env)
    for n in cluster.nodes:
        n.pid = wait_ready(cdir / n.name, spawned[n.name])
    _save(cluster)
    write_profile(cluster)
    return cluster


def dry_run_plan(name: str, nodes: int, facts: dict[str, dict[str, Any]] | None = None) -> str:
    """What ``up`` would run, as text (``sim up --dry-run``): namespaces, link batches, node commands."""
    netplan.check_name(name)
    netplan.check_nodes(nodes)
    node_facts = {netplan.node_name(i): factmod.merge_facts((facts or {}).get(netplan.node_name(i)))
                  for i in range(1, nodes + 1)}
    out = [f"ip netns add {ns}" for ns in [netplan.switch_ns(name)] +
           [netplan.node_ns(name, i) for i in range(1, nodes + 1)]]
    out += ["# ip -batch (root namespace)", netplan.root_batch(name, nodes).rstrip(),
            f"# ip -n {netplan.switch_ns(name)} -batch", netplan.switch_batch(nodes, node_facts).rstrip()]
    for i in range(1, nodes + 1):
        batch = netplan.node_batch(i, node_facts[netplan.node_name(i)]).rstrip()
        out += [f"# ip -n {netplan.node_ns(name, i)} -batch", batch,
                " ".join(node_command(name, i)) + f"   # SIM_NODE={netplan.node_name(i)}"]
    return "\n".join(out)


def node_command(name: str, index: int) -> list[str]:
    """The node's PID 1 (node-init.sh) in fresh mount/uts/ipc/pid namespaces inside its netns."""
    return ["nsenter", f"--net=/run/netns/{netplan.node_ns(name, index)}", "unshare", "--mount", "--uts", "--ipc",
            "--pid", "--fork", "--kill-child", str(HERE / "node-init.sh")]


def _batch(runner: Runner, ns_args: list[str], text: str, path: Path) -> None:
    path.write_text(text)
    runner.run(["ip", *ns_args, "-batch", str(path)]).check(f"ip -batch {path.name}")


def wait_ready(ndir: Path, unshare_pid: int) -> int:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if (ndir / "failed").exists() or not alive(unshare_pid):
            break
        if (ndir / "ready").exists():
            children = Path(f"/proc/{unshare_pid}/task/{unshare_pid}/children").read_text().split()
            if children:
                pid = int(children[0])
                (ndir / "node.pid").write_text(f"{pid}\n")
                return pid
        time.sleep(0.05)
    log = (ndir / "init.log").read_text(errors="replace") if (ndir / "init.log").exists() else ""
    last = [ln for ln in log.splitlines() if ln.strip()][-3:]
    raise SparkError(f"node {ndir.name} did not start: {' | '.join(last) or 'no output'}",
                     fix=f"see {ndir}/init.log and {ndir}/dockerd.log")


def _save(cluster: Cluster) -> None:
    path = Path(cluster.dir) / "cluster.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(cluster.to_json(), indent=1))
    tmp.replace(path)


def save(cluster: Cluster) -> None:
    _save(cluster)


def profile_text(cluster: Cluster) -> str:
    head = cluster.head
    workers = cluster.workers
    lines = [
        f"# sparkhelpers config profile for the emulated cluster {cluster.name!r} (written by sim up).",
        "# Use it on the head node:",
        f"#   sparkhelpers sim exec --name {cluster.name} spark1 -- env SPARK_CONFIG={cluster.profile} <script>",
        f"CLUSTER_NAME=sim-{cluster.name}",
        f"WORKER_HOST='{' '.join(w.mgmt_ip for w in workers)}'",
        f"WORKER_IB_IP='{' '.join(w.fabric_ip for w in workers)}'",
        f"WORKER_IB_IP2='{' '.join(w.fabric2_ip for w in workers)}'",
        "WORKER_USER=root",
        f"SSH_KEY={NODE_SSH_KEY}",
        f"HEAD_IP={head.fabric_ip}",
        f"HEAD_IP2={head.fabric2_ip}",
        "HF_CACHE=/raid/hf-cache",
        f"VLLM_IMAGE={cluster.image}",
        f"SPARK_STATE_DIR={cluster.dir}/{head.name}/state",
        f"RESULTS_DIR={cluster.dir}/{head.name}/results",
    ]
    return "\n".join(lines) + "\n"


def write_profile(cluster: Cluster) -> None:
    Path(cluster.profile).write_text(profile_text(cluster))
    os.chmod(cluster.profile, 0o600)


def netns_list(runner: Runner) -> list[str]:
    res = runner.run(["ip", "netns", "list"], mutating=False)
    return [ln.split()[0] for ln in res.stdout.splitlines() if ln.strip()]


def is_running(name: str, state_dir: Path, runner: Runner) -> bool:
    if not any(netplan.owns_netns(name, ns) for ns in netns_list(runner)):
        return False
    try:
        cluster = load(state_dir, name)
    except SparkError:
        return True  # namespaces without state: a crashed or foreign run; down() cleans them
    return all(alive(n.pid) for n in cluster.nodes)


def down(name: str, state_dir: Path, *, runner: Runner | None = None, keep_logs: bool = False) -> bool:
    """Kill every process of the cluster, delete its namespaces, cgroups and state (keys included).
    Finds everything by name, so it works when the state directory is damaged. Idempotent.
    Returns True when something was there."""
    runner = runner or Runner()
    netplan.check_name(name)
    cdir = cluster_dir(state_dir, name)
    found = cdir.exists()
    for pid_file in cdir.glob("spark*/node.pid"):
        try:
            pid = int(pid_file.read_text())
        except (OSError, ValueError):
            continue
        if alive(pid):
            _kill([pid])  # the node's PID 1: its whole pid namespace (containers too) dies with it
    namespaces = [ns for ns in netns_list(runner) if netplan.owns_netns(name, ns)]
    found = found or bool(namespaces)
    for ns in namespaces:
        for _ in range(100):
            pids = [int(p) for p in runner.run(["ip", "netns", "pids", ns]).stdout.split()]
            if not pids:
                break
            _kill(pids)
            time.sleep(0.05)
        runner.run(["ip", "netns", "del", ns])
    _remove_cgroups(name)
    if cdir.exists():
        if keep_logs:
            for sub in cdir.glob("spark*"):
                for heavy in ("docker", "raid", "root", "cow"):
                    shutil.rmtree(sub / heavy, ignore_errors=True)
            for secret in cdir.glob("id_ed25519*"):
                secret.unlink(missing_ok=True)
        else:
            shutil.rmtree(cdir, ignore_errors=True)
    return found


def _kill(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)  # unshare blocks SIGTERM; SIGKILL of the node's init ends its namespace


def _remove_cgroups(name: str) -> None:
    roots = [p for p in Path("/sys/fs/cgroup").iterdir() if p.is_dir()] if Path("/sys/fs/cgroup").is_dir() else []
    for _ in range(50):
        left = False
        for root in roots:
            for cg in root.glob(f"{netplan.PREFIX}-{name}-spark*"):
                if not netplan.owns_netns(name, cg.name):
                    continue
                for sub in sorted((p for p in cg.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                    _rmdir(sub)
                left = not _rmdir(cg) or left
        if not left:
            return
        time.sleep(0.1)


def _rmdir(path: Path) -> bool:
    try:
        path.rmdir()
        return True
    except FileNotFoundError:
        return True
    except OSError:
        return False
