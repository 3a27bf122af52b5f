"""ClusterPlan -> the exact shell each node runs, in launch order. Pure: ``--dry-run`` prints these,
``lifecycle`` runs these, so what is shown is what runs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from sparkhelpers.cluster.plan import DISCOVER, PER_NODE_VARS, ClusterPlan, NodePlan
from sparkhelpers.runner import shell_quote
from sparkhelpers.templating import render

PKG = "sparkhelpers.cluster.templates"


def log_name(kind: str, rank: int) -> str:
    """engine-0.log, ray-1.log: the rank in the name keeps nodes apart on a shared state dir."""
    return f"{kind}-{rank}.log"


@dataclass(frozen=True)
class Step:
    """One shell snippet run with bash on one node (``stdin`` is piped in; secret stdin is never shown)."""

    node: NodePlan
    title: str
    script: str
    stdin: str | None = None
    secret: bool = False
    shown: str = ""  # what --dry-run prints for stdin (the stdin itself, minus secret values)

    def show(self) -> str:
        if self.stdin is None:
            return f"# [{self.node.label}] {self.title}\n{self.script.rstrip()}\n"
        body = self.shown or ("# (secret values: not shown)\n" if self.secret else self.stdin)
        return f"# [{self.node.label}] {self.title}: {self.script}, with this script on stdin:\n{body.rstrip()}\n"


@dataclass(frozen=True)
class Phase:
    """Steps that may run in parallel (one per node), then an optional wait described for --dry-run."""

    name: str
    steps: tuple[Step, ...] = ()
    wait: str = ""
    extra: dict[str, str] = field(default_factory=dict)


def labels_filter(plan_cluster: str) -> str:
    return f"label=sparkhelpers.cluster={plan_cluster}"


def arg_lines(args: tuple[str, ...]) -> list[list[str]]:
    """Group ``--flag value`` pairs onto one line each, for readable generated scripts."""
    lines: list[list[str]] = []
    for arg in args:
        if lines and not arg.startswith("-") and len(lines[-1]) == 1 and lines[-1][0].startswith("--"):
            lines[-1].append(arg)
        else:
            lines.append([arg])
    return lines


def entry_scripts(plan: ClusterPlan, node: NodePlan) -> dict[str, str]:
    """File name -> rendered entry script for this node (the container's command, and the engine)."""
    engine_log, ray_log = log_name("engine", node.rank), log_name("ray", node.rank)
    ctx = {"plan": plan, "node": node, "run_dir": plan.node_run_dir(node), "log_dir": plan.log_dir,
           "arg_lines": arg_lines(plan.engine_args)}
    if plan.mode == "ray":
        if node.rank == 0:  # the head runs Ray, then (on our signal) vllm serve in the same container
            return {"ray.sh": render(PKG, "ray_head.sh.j2", log_name=ray_log, engine_log=engine_log,
                                     secrets=False, **ctx)}
        return {"ray.sh": render(PKG, "ray_worker.sh.j2", log_name=ray_log, secrets=False, **ctx)}
    template = {"native": "vllm_native.sh.j2", "single": "vllm_single.sh.j2",
                "llama-cpp": "llama_server.sh.j2"}[plan.mode]
    return {"engine.sh": render(PKG, template, log_name=engine_log, secrets=node.rank == 0, **ctx)}


def container_entry(plan: ClusterPlan) -> str:
    return "ray.sh" if plan.mode == "ray" else "engine.sh"


def docker_run(plan: ClusterPlan, node: NodePlan, config_hash: str) -> str:
    return render(PKG, "container.sh.j2", plan=plan, node=node, config_hash=config_hash,
                  hf_cache=plan.hf_cache_on(node), run_dir=plan.node_run_dir(node), log_dir=plan.log_dir,
                  entry=container_entry(plan), fabric=plan.mode in ("ray", "native"))


def write_file(path: str, content: str, mode: str = "0644") -> str:
    """Shell that writes ``content`` to ``path`` atomically (a quoted here-document: nothing expands)."""
    tag = "SPARKHELPERS_EOF_" + hashlib.sha256(content.encode()).hexdigest()[:12]
    body = content if content.endswith("\n") else content + "\n"
    tmp = shell_quote(f"{path}.tmp")
    return (f"cat >{tmp} <<'{tag}'\n{body}{tag}\n"
            f"chmod {mode} {tmp} && mv -f {tmp} {shell_quote(path)}\n")


def prepare(plan: ClusterPlan, node: NodePlan) -> str:
    """Directories on the node, and last run's logs kept as *.log.1 (logs live on the host)."""
    run_dir = plan.node_run_dir(node)
    dirs = [run_dir, plan.log_dir, f"{plan.cache_dir}/vllm", f"{plan.cache_dir}/flashinfer", f"{plan.cache_dir}/triton"]
    return (f"mkdir -p {' '.join(shell_quote(d) for d in dirs)}\nchmod 700 {shell_quote(plan.run_dir)} "
            f"{shell_quote(run_dir)}\n"
            f"for f in {shell_quote(plan.log_dir)}/*-{node.rank}.log; do if [ -f \"$f\" ]; then "
            "mv -f \"$f\" \"$f.1\"; fi; done\n")


def secrets_file(secrets: dict[str, str]) -> str:
    return "".join(f"{k}={shell_quote(val)}\n" for k, val in secrets.items())


def node_step(plan: ClusterPlan, node: NodePlan, config_hash: str, secrets: dict[str, str]) -> Step:
    """Everything one node needs, in ONE round trip: directories, its entry scripts (and on the head the
    secrets file), then its container. Sent to ``bash -s`` on stdin, so no secret is ever in argv."""
    run_dir = plan.node_run_dir(node)
    parts = ["set -euo pipefail\numask 077\n", prepare(plan, node)]
    for name, text in entry_scripts(plan, node).items():
        parts.append(write_file(f"{run_dir}/{name}", text))
    if plan.mode == "ray" and node.rank == 0:
        parts.append(f"mkdir -p {shell_quote(run_dir + '/vllm-config')}\n")
        parts.append(write_file(f"{run_dir}/vllm-config/ray_non_carry_over_env_vars.json",
                                json.dumps(sorted(PER_NODE_VARS)) + "\n"))
    shown = list(parts)
    if node.rank == 0 and secrets:
        path = f"{run_dir}/secrets.env"
        parts.append(write_file(path, secrets_file(secrets), "0600"))
        shown.append(f"# write {path} (mode 0600) with {', '.join(secrets)}: values not shown\n")
    run = docker_run(plan, node, config_hash)
    parts.append(run)
    shown.append(run)
    return Step(node, f"prepare the node and start container {node.container}", "bash -s", stdin="".join(parts),
                secret=bool(node.rank == 0 and secrets), shown="".join(shown))


def start_phases(plan: ClusterPlan, config_hash: str, secrets: dict[str, str]) -> list[Phase]:
    """Everything start does to the nodes, in order. ``secrets`` values go only into the head's 0600 file."""
    run = {n.rank: node_step(plan, n, config_hash, secrets) for n in plan.nodes}
    n = len(plan.nodes)
    phases: list[Phase] = []
    if plan.mode == "ray":
        phases.append(Phase("ray-head", (run[0],), wait="the Ray head answers `ray status`"))
        if plan.workers:
            phases.append(Phase("ray-workers", tuple(run[w.rank] for w in plan.workers)))
        phases.append(Phase("ray-join", wait=f"`ray status` shows exactly {n} nodes and {n} GPUs"))
        engine = f"touch {shell_quote(plan.node_run_dir(plan.head) + '/start-engine')}"
        phases.append(Phase("engine", (Step(plan.head, "signal the head container to start vllm serve", engine),)))
    elif plan.mode == "native":
        # Every rank at once (the headless ranks wait for the master, the master for them): a worker
        # that does not come up is caught right after, and the cleanup removes the head's container too.
        phases.append(Phase("containers", tuple(run[w.rank] for w in plan.workers) + (run[0],),
                            wait="every container is running" if plan.workers else ""))
    else:
        phases.append(Phase("engine", (run[0],)))
    phases.append(Phase("health", wait=f"{plan.endpoint}/health answers 200 while every engine process is alive "
                                       f"(at most {plan.timeout_s}s)"))
    return phases


def describe_facts(plan: ClusterPlan) -> str:
    return " ".join(f"{n.fabric_ip} {' '.join(n.env.values())}" for n in plan.nodes)


def describe(plan: ClusterPlan, phases: list[Phase], config_hash: str) -> str:
    """The --dry-run listing: every command per node, in order."""
    nodes = ", ".join(f"{n.label}={n.fabric_ip or n.host.address}" for n in plan.nodes)
    probed = ", ".join("this machine" if n.host.is_local else f"ssh {n.host.target}" for n in plan.nodes)
    out = [f"# sparkhelpers start plan: cluster {plan.cluster}, mode {plan.mode}, {len(plan.nodes)} node(s) "
           f"({nodes}), model {plan.model} as {plan.served_name}, config {config_hash}",
           f"# a dry run opens no connection. At start, first: one read-only probe per node ({probed}: Docker, "
           "image, fabric addresses, model cache, our containers); the image and model are copied where missing."]
    if DISCOVER in describe_facts(plan):
        out.append(f"# {DISCOVER}: a fabric fact (address, interface, HCAs) that discovery reads on that node "
                   "over SSH at start; set HEAD_IP/WORKER_IB_IP, FABRIC_IF and NCCL_IB_HCA to fix it in advance")
    for phase in phases:
        out.append(f"\n## phase {phase.name}")
        out += [step.show() for step in phase.steps]
        if phase.wait:
            out.append(f"# wait until {phase.wait}")
    return "\n".join(out) + "\n"
