"""What start, stop and status ask each node, in one SSH round trip per node, and the parsers.

Probe snippets are read-only. Their output is ``key=value`` lines so one connection answers every
question (SSH costs 0.3-0.9 s per command on the sim, more on a loaded head).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sparkhelpers.runner import shell_quote

CONTAINER_FORMAT = ('{{.Names}}|{{.State}}|{{.Label "sparkhelpers.rank"}}|{{.Label "sparkhelpers.config"}}|'
                    '{{.Label "sparkhelpers.mode"}}|{{.Label "sparkhelpers.nodes"}}|{{.Status}}')


@dataclass(frozen=True)
class Container:
    name: str
    state: str  # running, exited, created, ...
    rank: str
    config: str
    mode: str
    nodes: str
    status: str

    @property
    def running(self) -> bool:
        return self.state == "running"


@dataclass
class NodeProbe:
    label: str
    reachable: bool = True
    error: str = ""
    docker: bool = False
    docker_error: str = ""
    image_id: str = ""
    ips: dict[str, str] = field(default_factory=dict)  # address -> interface
    infiniband: bool = False
    mem_available_kib: int = 0
    model_present: bool = False
    containers: list[Container] = field(default_factory=list)
    transport: str = ""  # "IB", "Socket" or "" (from the engine/ray logs)

    @property
    def mem_available_gib(self) -> float:
        return self.mem_available_kib / 1024 / 1024


def containers_cmd(cluster: str) -> str:
    return (f"docker ps -a --filter {shell_quote('label=sparkhelpers.cluster=' + cluster)} "
            f"--format {shell_quote(CONTAINER_FORMAT)}")


def model_check(model: str, hf_cache: str, runtime: str) -> str:
    """A test that succeeds when the model's files are in this node's cache."""
    if model.startswith("/"):
        return f"test -e {shell_quote(model)}"
    repo_dir = f"{hf_cache}/hub/models--{model.replace('/', '--')}/snapshots"
    pattern = "*.gguf" if runtime == "llama-cpp" else "config.json"
    return f"compgen -G {shell_quote(repo_dir)}/'*/{pattern}' >/dev/null"


def probe_script(cluster: str, image: str, model: str, hf_cache: str, runtime: str, log_dir: str) -> str:
    """Everything start and status want to know about one node (read-only)."""
    return "\n".join([
        "echo probe=ok",
        "if out=$(docker info --format '{{.ServerVersion}}' 2>&1); then echo docker=ok; "
        "else echo \"docker=${out//$'\\n'/ }\"; fi",
        f"echo \"image=$(docker image inspect --format '{{{{.Id}}}}' {shell_quote(image)} 2>/dev/null)\"",
        "ip -o -4 addr show 2>/dev/null | awk '{split($4, a, \"/\"); print \"ip=\" a[1] \"=\" $2}'",
        "if [ -e /dev/infiniband ]; then echo infiniband=yes; fi",
        "awk '/^MemAvailable:/ {print \"mem=\" $2}' /proc/meminfo",
        f"if {model_check(model, hf_cache, runtime)}; then echo model=yes; fi",
        f"{containers_cmd(cluster)} 2>/dev/null | sed 's/^/container=/'",
        f"cat {shell_quote(log_dir)}/engine-*.log {shell_quote(log_dir)}/ray-*.log 2>/dev/null "
        "| grep -oE 'NET/(IB|Socket)|Using network (IB|Socket)' | sed -E 's/.*(IB|Socket)$/transport=\\1/' | sort -u",
    ]) + "\n"


def parse_probe(label: str, text: str) -> NodeProbe:
    probe = NodeProbe(label)
    transports: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key == "docker":
            probe.docker = value == "ok"
            probe.docker_error = "" if probe.docker else value.strip()
        elif key == "image":
            probe.image_id = value.strip()
        elif key == "ip":
            addr, _, dev = value.partition("=")
            probe.ips[addr] = dev
        elif key == "infiniband":
            probe.infiniband = True
        elif key == "mem" and value.strip().isdigit():
            probe.mem_available_kib = int(value)
        elif key == "model":
            probe.model_present = True
        elif key == "container":
            parts = (value.split("|") + [""] * 7)[:7]
            probe.containers.append(Container(*parts))
        elif key == "transport":
            transports.add(value.strip())
    # NET/Socket anywhere means some rank fell back to TCP: report the bad news first.
    probe.transport = "Socket" if "Socket" in transports else ("IB" if "IB" in transports else "")
    return probe


_NODE_LINE = re.compile(r"^\s*\d+\s+node_[0-9a-fA-F]+", re.MULTILINE)
_GPU = re.compile(r"([0-9.]+)/([0-9.]+)\s+GPU\b")


def parse_ray_status(text: str) -> tuple[int, int]:
    """(active nodes, total GPUs) from `ray status` output; (0, 0) when it is not there."""
    active = text.split("Pending:", 1)[0]
    nodes = len(_NODE_LINE.findall(active))
    gpu = _GPU.search(text)
    return nodes, int(float(gpu.group(2))) if gpu else 0


def stop_script(cluster: str, run_dir: str, force: bool, grace_s: int) -> str:
    """Stop and remove this cluster's containers on one node (only ours: selected by label)."""
    stop = "" if force else f"docker stop --time {int(grace_s)} $ids >/dev/null 2>&1 || true\n  "
    return ("# shellcheck disable=SC2086 # $ids is a list of container IDs, split on purpose\n"
            f"ids=$(docker ps -aq --filter {shell_quote('label=sparkhelpers.cluster=' + cluster)})\n"
            "t0=$(date +%s.%N)\n"
            "if [ -n \"$ids\" ]; then\n"
            f"  {stop}docker rm --force $ids >/dev/null\n"
            "fi\n"
            "echo \"window=$t0 $(date +%s.%N)\"\n"
            f"rm -f {shell_quote(run_dir)}/*/secrets.env\n"
            "echo \"removed=$(echo $ids | wc -w)\"\n")


def tail_cmd(log_dir: str, rank: int, lines: int, follow: bool = False, kind: str = "") -> str:
    """Tail a node's log: ``kind`` engine or ray; by default the engine log, else the Ray log."""
    logs = shell_quote(log_dir)
    pick = (f"f={logs}/{kind}-{rank}.log" if kind else
            f"f={logs}/engine-{rank}.log; if [ ! -s \"$f\" ] && [ -f {logs}/ray-{rank}.log ]; then "
            f"f={logs}/ray-{rank}.log; fi")
    return (f"{pick}\nif [ ! -f \"$f\" ]; then echo \"no log at $f\" >&2; exit 1; fi\n"
            f"exec tail -n {int(lines)} {'-F ' if follow else ''}\"$f\"\n")
