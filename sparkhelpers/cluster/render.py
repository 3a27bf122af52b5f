"""ClusterPlan -> the exact shell each node runs, in launch order. Pure: ``--dry-run`` prints these,
``lifecycle`` runs these, so what is shown is what runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from sparkhelpers.cluster.plan import PER_NODE_VARS, ClusterPlan, NodePlan
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

    def show(self) -> str:
        text = f"# [{self.node.label}] {self.title}\n{self.script.rstrip()}\n"
        if self.stdin is not None:
            body = "# (secret values: not shown)\n" if self.secret else self.stdin
            text += f"# stdin:\n{_comment(body)}"
        return text


@dataclass(frozen=True)
class Phase:
    """Steps that may run in parallel (one per node), then an optional wait described for --dry-run."""

    name: str
    steps: tuple[Step, ...] = ()
    wait: str = ""
    extra: dict[str, str] = field(default_factory=dict)


def _comment(text: str) -> str:
    return "".join(f"#   {line}\n" for line in text.rstrip("\n").splitlines())


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


def write_file(node: NodePlan, path: str, content: str, mode: str = "0644", secret: bool = False) -> Step:
    tmp = f"{path}.tmp"
    script = f"umask 077 && cat >{shell_quote(tmp)} && chmod {mode} {shell_quote(tmp)} && mv -f {shell_quote(tmp)} " \
             f"{shell_quote(path)}"
    return Step(node, f"write {path}", script, stdin=content, secret=secret)


def prepare(plan: ClusterPlan, node: NodePlan) -> Step:
    """Directories on the node, and last run's logs kept as *.log.1 (logs live on the host)."""
    run_dir = plan.node_run_dir(node)
    dirs = [run_dir, plan.log_dir, f"{plan.cache_dir}/vllm", f"{plan.cache_dir}/flashinfer", f"{plan.cache_dir}/triton"]
    script = (f"mkdir -p {' '.join(shell_quote(d) for d in dirs)} && chmod 700 {shell_quote(plan.run_dir)} "
              f"{shell_quote(run_dir)}\n"
              f"for f in {shell_quote(plan.log_dir)}/*-{node.rank}.log; do if [ -f \"$f\" ]; then "
              "mv -f \"$f\" \"$f.1\"; fi; done\n"
              f"rm -f {shell_quote(run_dir)}/*.pid")
    return Step(node, "prepare run and log directories", script)


def secrets_file(secrets: dict[str, str]) -> str:
    return "".join(f"{k}={shell_quote(val)}\n" for k, val in secrets.items())


def start_phases(plan: ClusterPlan, config_hash: str, secrets: dict[str, str]) -> list[Phase]:
    """Everything start does to the nodes, in order. ``secrets`` values go only into the head's 0600 file."""
    files: list[Step] = []
    for node in plan.nodes:
        for name, text in entry_scripts(plan, node).items():
            files.append(write_file(node, f"{plan.node_run_dir(node)}/{name}", text))
    head_dir = plan.node_run_dir(plan.head)
    if plan.mode == "ray":
        non_carry = json.dumps(sorted(PER_NODE_VARS)) + "\n"
        files.append(write_file(plan.head, f"{head_dir}/vllm-config/ray_non_carry_over_env_vars.json",
                                non_carry))
        files.insert(0, Step(plan.head, "vLLM config dir", f"mkdir -p {shell_quote(head_dir + '/vllm-config')}"))
    if secrets:
        files.append(write_file(plan.head, f"{head_dir}/secrets.env", secrets_file(secrets), "0600", secret=True))
    phases = [Phase("prepare", tuple(prepare(plan, n) for n in plan.nodes)), Phase("files", tuple(files))]
    run = {n.rank: Step(n, f"start container {n.container}", docker_run(plan, n, config_hash)) for n in plan.nodes}
    n = len(plan.nodes)
    if plan.mode == "ray":
        phases.append(Phase("ray-head", (run[0],), wait="the Ray head answers `ray status`"))
        if plan.workers:
            phases.append(Phase("ray-workers", tuple(run[w.rank] for w in plan.workers)))
        phases.append(Phase("ray-join", wait=f"`ray status` shows exactly {n} nodes and {n} GPUs"))
        engine = f"touch {shell_quote(head_dir + '/start-engine')}"
        phases.append(Phase("engine", (Step(plan.head, "signal the head container to start vllm serve", engine),)))
    elif plan.mode == "native":
        phases.append(Phase("workers", tuple(run[w.rank] for w in plan.workers),
                            wait="every worker container is running"))
        phases.append(Phase("engine", (run[0],)))
    else:
        phases.append(Phase("engine", (run[0],)))
    phases.append(Phase("health", wait=f"{plan.endpoint}/health answers 200 while every engine process is alive "
                                       f"(at most {plan.timeout_s}s)"))
    return phases


def describe(plan: ClusterPlan, phases: list[Phase], config_hash: str) -> str:
    """The --dry-run listing: every command per node, in order."""
    nodes = ", ".join(f"{n.label}={n.fabric_ip or n.host.address}" for n in plan.nodes)
    out = [f"# sparkhelpers start plan: cluster {plan.cluster}, mode {plan.mode}, {len(plan.nodes)} node(s) "
           f"({nodes}), model {plan.model} as {plan.served_name}, config {config_hash}"]
    for phase in phases:
        out.append(f"\n## phase {phase.name}")
        out += [step.show() for step in phase.steps]
        if phase.wait:
            out.append(f"# wait until {phase.wait}")
    return "\n".join(out) + "\n"
