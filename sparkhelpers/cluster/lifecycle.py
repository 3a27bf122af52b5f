"""Start, stop and inspect the cluster: the plan's phases run through the Runner, with every wait
watching the processes it waits for. On failure: the node, the last log lines, cleanup, exit 1.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from sparkhelpers.cluster import nodes as nd
from sparkhelpers.cluster import render as rd
from sparkhelpers.cluster.plan import ClusterPlan, NodePlan
from sparkhelpers.errors import SparkError
from sparkhelpers.models.catalog import ModelSpec
from sparkhelpers.runner import Host, Runner, shell_quote
from sparkhelpers.secrets import exposure_warning

POLL_S = 0.5
LOG_TAIL = 25
PEER_CHECK_S = 10.0  # while waiting for health: a live fabric re-check and the ranks' logs this often


class Interrupted(SparkError):
    exit_code = 130


class Terminated(KeyboardInterrupt):
    """Raised by the CLI's SIGTERM handler: cleaned up like Ctrl-C, reported as SIGTERM (exit 143)."""


@dataclass
class StartReport:
    plan: ClusterPlan
    config_hash: str
    phases: dict[str, float] = field(default_factory=dict)
    answer: str = ""
    already_running: bool = False
    ready_at: float = 0.0  # epoch seconds when /health first answered 200
    warnings: list[str] = field(default_factory=list)  # repeated in the start's summary

    def as_dict(self) -> dict:
        return {"cluster": self.plan.cluster, "endpoint": self.plan.endpoint, "model": self.plan.served_name,
                "mode": self.plan.mode, "config": self.config_hash, "recipe_id": self.plan.recipe_id,
                "already_running": self.already_running,
                "nodes": [{"rank": n.rank, "host": n.host.label, "fabric_ip": n.fabric_ip} for n in self.plan.nodes],
                "phases_s": {k: round(v, 2) for k, v in self.phases.items()}, "answer": self.answer,
                "ready_at": self.report_ready_at(), "warnings": self.warnings}

    def report_ready_at(self) -> float:
        return round(self.ready_at, 3)


class Starter:
    """One start attempt. ``say`` prints progress; ``started`` tracks nodes we put containers on."""

    def __init__(self, plan: ClusterPlan, runner: Runner, *, spec: ModelSpec, secrets: dict[str, str],
                 replace: bool = False, keep_on_failure: bool = False, drop_caches: bool = False, api_key: str = "",
                 say: Callable[[str], None] = print, stop_all: Callable[[], None] | None = None,
                 fabric_mtu: int = 9000, looks: dict[int, object] | None = None) -> None:
        self.plan, self.runner, self.secrets, self.spec = plan, runner, secrets, spec
        self.fabric_mtu, self.gate, self.looks = fabric_mtu, None, looks or {}  # fabric.NodeLook by rank
        self.next_peer_check, self.peer_watch = 0.0, None
        self.replace, self.keep_on_failure, self.drop_caches = replace, keep_on_failure, drop_caches
        self.api_key, self.say, self.stop_all = api_key, say, stop_all
        self.config_hash = config_id(plan, secrets)
        self.report = StartReport(plan, self.config_hash)
        self.started: set[int] = set()
        self.executed: list[str] = []
        self.deadline = time.monotonic() + plan.timeout_s

    # ---- running steps -------------------------------------------------------------------------
    def run_step(self, step: rd.Step, timeout: float = 120) -> None:
        self.executed.append(step.show())
        r = self.runner.on(step.node.host, step.script, input=step.stdin, timeout=timeout)
        if not r.ok:
            raise SparkError(f"{step.title} failed on {step.node.label} (exit {r.returncode}): "
                             f"{r.last_line or 'no output'}", fix=_fix_for(r.last_line, step.node))

    def run_phase(self, phase: rd.Phase) -> None:
        if phase.name in ("ray-head", "ray-workers", "containers", "engine"):
            self.started.update(s.node.rank for s in phase.steps)
        # Steps on different nodes run in parallel; steps on one node keep their order.
        by_node: dict[int, list[rd.Step]] = {}
        for step in phase.steps:
            by_node.setdefault(step.node.rank, []).append(step)
        self.runner.parallel(lambda steps: [self.run_step(s) for s in steps], list(by_node.values()))

    def on(self, node: NodePlan, script: str, timeout: float = 30):  # noqa: ANN201
        return self.runner.on(node.host, script, timeout=timeout, mutating=False)

    # ---- phases ----------------------------------------------------------------------------------
    def timed(self, name: str, func: Callable[[], object]) -> object:
        t0 = time.monotonic()
        self.say(f"[{name}] ...")
        result = func()
        self.report.phases[name] = time.monotonic() - t0
        return result

    def start(self) -> StartReport:
        try:
            probes = self.timed("preflight", self.preflight)
            if self.report.already_running:
                return self.report
            self.timed("image", lambda: self.ensure_image(probes))
            self.timed("model", lambda: self.ensure_model(probes))
            if self.drop_caches:
                self.timed("drop-caches", self.drop_page_cache)
            phases = rd.start_phases(self.plan, self.config_hash, self.secrets)
            # --timeout counts from here: copying images and models has its own timeouts
            self.deadline = time.monotonic() + self.plan.timeout_s
            self.timed("containers", lambda: self.launch(phases))
            self.timed("health", self.wait_healthy)
            self.report.answer = str(self.timed("chat", self.smoke_chat))
            self.save_state()
            return self.report
        except KeyboardInterrupt as exc:
            how, code = ("SIGTERM", 143) if isinstance(exc, Terminated) else ("Ctrl-C", 130)
            self.say(f"{how}: stopping what this start put up")
            self.cleanup(force=True)
            err = Interrupted(f"start interrupted ({how}); the containers it started were removed",
                              fix="run start_cluster.sh again when ready")
            err.exit_code = code
            raise err from None
        except SparkError:
            self.cleanup()
            raise
        finally:
            self.write_executed()

    def warn(self, message: str) -> None:
        self.report.warnings.append(message)
        self.say(f"warning: {message}")

    def preflight(self) -> dict[int, nd.NodeProbe]:
        plan = self.plan
        exposed = exposure_warning(plan.listen, self.api_key)
        if exposed:
            self.warn(exposed)

        def probe(node: NodePlan) -> nd.NodeProbe:
            script = preflight_script(plan, node)
            seen = self.looks.get(node.rank)
            if seen is not None and seen.probe_script == script and "probe=ok" in seen.probe_out:
                return nd.parse_probe(node.label, seen.probe_out)  # asked moments ago, with the fabric look
            r = self.runner.on(node.host, script, timeout=node.host.connect_timeout + 30, mutating=False)
            if "probe=ok" not in r.stdout:
                p = nd.NodeProbe(node.label, reachable=False, error=r.last_line or f"exit {r.returncode}")
                return p
            return nd.parse_probe(node.label, r.stdout)

        probes = dict(zip([n.rank for n in plan.nodes], self.runner.parallel(probe, list(plan.nodes)), strict=True))
        for node in plan.nodes:
            p = probes[node.rank]
            if not p.reachable:
                raise SparkError(f"node {node.label} is unreachable over SSH: {p.error}",
                                 fix=f"check that {node.host.address} is up and `ssh -o BatchMode=yes "
                                     f"{node.host.target} true` works, or start fewer nodes with --nodes")
            if not p.docker:
                raise SparkError(f"Docker does not answer on {node.label}: {p.docker_error}",
                                 fix="start it (sudo systemctl start docker) and add the user to the docker group")
            if plan.mode in ("ray", "native"):
                if node.fabric_ip not in p.ips:
                    have = ", ".join(f"{a} ({d})" for a, d in p.ips.items() if not a.startswith("127.")) or "none"
                    raise SparkError(f"fabric address {node.fabric_ip} is not configured on {node.label} "
                                     f"(its IPv4 addresses: {have})",
                                     fix="fix HEAD_IP / WORKER_IB_IP (same order as WORKER_HOST), or the node's "
                                         "netplan; `sparkhelpers discover` shows the right value")
                if not p.infiniband and not plan.privileged:
                    raise SparkError(f"{node.label} has no /dev/infiniband, so NCCL would fall back to TCP sockets",
                                     fix="load the RDMA drivers (modprobe mlx5_ib rdma_ucm) or check the "
                                         "ConnectX-7 firmware; `checkout_setup.sh --ib` explains")
        self.check_running(probes)
        self.check_port()
        if plan.mode in ("ray", "native") and not self.report.already_running:
            self.check_fabric()
        return probes

    def check_fabric(self) -> None:
        """The doctor's fabric and parity rules plus pings over each twin, before any container starts."""
        from sparkhelpers.discover import gate
        from sparkhelpers.discover.nodes import Node

        nodes = [Node(n.rank, n.label, n.host, n.fabric_ip) for n in self.plan.nodes]
        known = {rank: seen.facts for rank, seen in self.looks.items()}
        self.gate = gate.start_gate(self.runner, nodes, mtu=self.fabric_mtu, known=known)
        for check in self.gate.warnings:
            self.warn(gate.one_line(check))
        self.gate.raise_on_failure()
        self.next_peer_check = time.monotonic() + PEER_CHECK_S  # the gate pinged every twin just now

    def check_running(self, probes: dict[int, nd.NodeProbe]) -> None:
        ours = {rank: p.containers for rank, p in probes.items() if p.containers}
        running = {rank: [c for c in cs if c.running] for rank, cs in ours.items()}
        running = {rank: cs for rank, cs in running.items() if cs}
        if running:
            configs = sorted({c.config for cs in running.values() for c in cs})
            everywhere = set(running) == {n.rank for n in self.plan.nodes}
            if everywhere and configs == [self.config_hash] and self.healthy() and self.answers():
                self.report.already_running = True
                self.say(f"cluster {self.plan.cluster} is already running this configuration "
                         f"(config {self.config_hash}) and healthy at {self.plan.endpoint}")
                return
            plan_part = self.config_hash.split(".")[0]
            if everywhere and configs != [self.config_hash] and {c.split(".")[0] for c in configs} == {plan_part}:
                self.say("the API key or HF token changed (the rest of the configuration is the same): "
                         "restarting the engine to apply it (no --replace needed)")
            elif not self.replace:
                same = everywhere and configs == [self.config_hash]
                raise SparkError(f"cluster {self.plan.cluster} is already running "
                                 f"{'a different configuration' if not same else 'but is not healthy'} "
                                 f"(config {', '.join(configs)} on {len(running)} node(s); this start is "
                                 f"{self.config_hash})",
                                 fix="stop it with ./stop_cluster.sh, or start with --replace")
            else:
                self.say(f"--replace: stopping the running cluster (config {', '.join(configs)})")
        if ours:
            # Left-overs (exited containers, or a running one being replaced) would clash by name.
            if self.stop_all and running:
                self.stop_all()
            else:
                for rank in ours:
                    node = self.plan.nodes[rank]
                    self.runner.on(node.host, nd.stop_script(self.plan.cluster, self.plan.run_dir, True, 0),
                                   timeout=60).check(f"removing old containers on {node.label}")

    def check_port(self) -> None:
        if self.report.already_running:
            return
        host = self.plan.endpoint.split("//")[1].rsplit(":", 1)[0]
        with socket.socket() as s:
            s.settimeout(1)
            if s.connect_ex((host, self.plan.port)) == 0:
                raise SparkError(f"port {self.plan.port} on the head is already in use by another program",
                                 fix=f"free it (ss -ltnp 'sport = :{self.plan.port}') or set VLLM_PORT")

    def ensure_image(self, probes: dict[int, nd.NodeProbe]) -> None:
        plan = self.plan
        head_id = probes[0].image_id
        if not head_id:
            raise SparkError(f"image {plan.image} is not on the head",
                             fix=f"docker pull {plan.image} (or build it), then start again")
        missing = [n for n in plan.workers if not probes[n.rank].image_id]
        differ = [n for n in plan.workers if probes[n.rank].image_id not in ("", head_id)]
        if differ:
            names = ", ".join(f"{n.label} has {probes[n.rank].image_id[:19]}" for n in differ)
            raise SparkError(f"image {plan.image} differs between nodes (head has {head_id[:19]}; {names})",
                             fix=f"make every node run the head's image: on each of them `docker rmi {plan.image}`, "
                                 "then start again (it is copied from the head)")
        if missing:
            self.copy_image(missing, head_id)

    def copy_image(self, missing: list[NodePlan], head_id: str) -> None:
        """Relay the head's image to ``missing`` (sparkhelpers.relay.image); every failed node named."""
        from sparkhelpers.relay.image import distribute_image

        plan = self.plan
        self.say(f"copying image {plan.image} from the head to {', '.join(n.label for n in missing)} by relay "
                 "(docker save once; each worker forwards, then docker load)")
        failed = distribute_image(self.runner, plan.image, head_id, plan.head.host, plan.hf_cache,
                                  image_nodes(plan, missing), say=self.say, warn=self.warn,
                                  record=self.executed.append)
        if failed:
            why = "; ".join(f"{name}: {reason}" for name, reason in failed.items())
            raise SparkError(f"copying image {plan.image} failed on {why}",
                             fix="check free disk space on that node (df -h /var/lib/docker and its HF cache) and "
                                 "SSH between the nodes, then start again (what arrived is kept)")

    def ensure_model(self, probes: dict[int, nd.NodeProbe]) -> None:
        plan = self.plan
        if not probes[0].model_present:
            raise SparkError(f"model {plan.model} is not in the head's cache ({plan.hf_cache})",
                             fix="download it first: ./switch_model.sh --download-only, or "
                                 "`sparkhelpers models download` (HF_HUB_OFFLINE=1 is set in the containers)")
        # Every worker's copy is checked against the head's file list and sizes (one read-only round
        # trip each; an unchanged model is not copied): config.json alone does not make a model.
        if plan.workers:
            ensure_model_on(self.runner, self.spec, plan, list(plan.workers))

    def drop_page_cache(self) -> None:
        script = "sync; if [ \"$(id -u)\" = 0 ]; then echo 3 >/proc/sys/vm/drop_caches; " \
                 "else echo 3 | sudo -n tee /proc/sys/vm/drop_caches >/dev/null; fi"
        results = self.runner.parallel(lambda n: (n, self.runner.on(n.host, script, timeout=120)),
                                       list(self.plan.nodes))
        for node, r in results:
            if not r.ok:
                self.say(f"warning: could not drop the page cache on {node.label}: {r.last_line}")

    def launch(self, phases: list[rd.Phase]) -> None:
        for phase in phases:
            if phase.steps:
                self.run_phase(phase)
            if phase.name == "ray-head":
                self.wait_ray(1, "the Ray head")
            elif phase.name == "ray-join":
                self.wait_ray(len(self.plan.nodes), f"{len(self.plan.nodes)} Ray nodes")
            elif phase.name == "containers" and self.plan.workers:
                self.check_alive()

    # ---- waits -----------------------------------------------------------------------------------
    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def container_states(self) -> dict[int, str]:
        def state(node: NodePlan) -> tuple[int, str]:
            r = self.on(node, f"docker inspect --format '{{{{.State.Status}}}}' {shell_quote(node.container)} "
                              "2>/dev/null || echo missing", timeout=node.host.connect_timeout + 15)
            if not r.ok:
                return node.rank, f"unreachable ({r.last_line})"
            return node.rank, r.stdout.strip() or f"unknown ({r.last_line})"
        nodes = [n for n in self.plan.nodes if n.rank in self.started]
        return dict(self.runner.parallel(state, nodes))

    def check_alive(self) -> None:
        for rank, state in self.container_states().items():
            node = self.plan.nodes[rank]
            if state.startswith("unreachable"):
                raise SparkError(f"lost contact with {node.label} over SSH while starting: {state[13:-1]}",
                                 fix=f"check that {node.host.address} is up and its sshd runs; then "
                                     "./stop_cluster.sh and start again")
            if state != "running":
                raise SparkError(f"the container on {node.label} stopped ({state}):\n{self.log_tail(node)}",
                                 fix=f"read the full log with `sparkhelpers logs --node {rank}`")
        # Every engine process is its container's main process, so "container running" is "engine alive".

    def wait_ray(self, want: int, what: str) -> None:
        last = ""
        while True:
            self.check_alive()
            self.check_peers()
            status = f"{self.plan.node_run_dir(self.plan.head)}/ray-status.txt"
            r = self.on(self.plan.head, f"cat {shell_quote(status)} 2>/dev/null || true")
            nodes, gpus = nd.parse_ray_status(r.stdout)
            last = f"{nodes} node(s), {gpus} GPU(s)"
            if nodes == want and (gpus == want or want == 1 and gpus >= 1):
                self.say(f"Ray: {last}")
                return
            if nodes > want:
                raise SparkError(f"Ray shows {nodes} nodes, expected exactly {want}",
                                 fix="another Ray node joined this head: stop stray Ray processes on the fabric")
            if self.remaining() <= 0:
                raise SparkError(f"timed out waiting for {what} (Ray shows {last})",
                                 fix="check the worker's ray log (`sparkhelpers logs --node N`) and that the fabric "
                                     "addresses reach each other")
            time.sleep(POLL_S)

    def healthy(self) -> bool:
        return engine_healthy(self.plan.endpoint)

    def answers(self) -> bool:
        """A multi-node engine must also answer a real request: /health stays 200 after a rank died."""
        from sparkhelpers.cluster.status import request_problem

        return len(self.plan.nodes) == 1 or not request_problem(self.plan.endpoint, self.api_key,
                                                                 self.plan.served_name)

    def wait_healthy(self) -> None:
        checks = 0
        while not self.healthy():
            if checks % 2 == 0:
                self.check_alive()
            self.check_peers()
            checks += 1
            if self.remaining() <= 0:
                raise SparkError(f"the engine was not healthy after {self.plan.timeout_s}s "
                                 f"({self.plan.endpoint}/health):\n{self.log_tail(self.plan.head, 'engine')}",
                                 fix="a large model can take longer: raise --timeout (START_TIMEOUT); otherwise "
                                     "read `sparkhelpers logs --node 0`")
            time.sleep(POLL_S)
        self.report.ready_at = time.time()

    def check_peers(self) -> None:
        """Bounded diagnosis while waiting for health: a rank whose log still shows rendezvous/NCCL
        errors long after they began, or a twin the head can no longer ping, ends the start now."""
        from sparkhelpers.discover import gate

        now = time.monotonic()
        if self.gate is None or not self.gate.facts or now < self.next_peer_check:
            return
        self.next_peer_check = now + PEER_CHECK_S
        self.peer_watch = self.peer_watch or gate.PeerWatch()
        broken = self.gate.recheck(self.runner)
        logs = dict(self.runner.parallel(lambda n: (n.label, self.on(n, nd.tail_cmd(
            self.plan.log_dir, n.rank, LOG_TAIL), timeout=n.host.connect_timeout + 15).stdout), list(self.plan.nodes)))
        stuck = {label: lines for label, text in logs.items() if (lines := self.peer_watch.observe(label, text, now))}
        if not broken and not stuck:
            return
        node = broken[0].node if broken else next(iter(stuck))
        raise SparkError(gate.stuck_message(node, gate.peer_error_lines(logs.get(node, "")), broken),
                         fix=broken[0].fix if broken else "check the fabric between the nodes "
                         "(./checkout_setup.sh --quick) and that no firewall blocks MASTER_PORT/RAY_PORT")

    def smoke_chat(self) -> str:
        return chat_once(self.plan, self.api_key)

    def log_tail(self, node: NodePlan, kind: str = "") -> str:
        r = self.on(node, nd.tail_cmd(self.plan.log_dir, node.rank, LOG_TAIL, kind=kind), timeout=30)
        text = (r.stdout or r.stderr).rstrip() or "(no log output)"
        return f"--- last log lines on {node.label} ---\n{text}\n---"

    # ---- after -----------------------------------------------------------------------------------
    def cleanup(self, force: bool = False) -> None:
        if self.runner.dry_run or not self.started:
            return
        if self.keep_on_failure and not force:
            self.say("--keep-on-failure: containers left as they are; remove them with ./stop_cluster.sh")
            return
        self.say("cleaning up: removing the containers this start created")

        def rm(node: NodePlan) -> str:
            r = self.runner.on(node.host, nd.stop_script(self.plan.cluster, self.plan.run_dir, True, 0),
                               timeout=node.host.connect_timeout + 60)
            return "" if r.ok else node.label
        left = [x for x in self.runner.parallel(rm, [n for n in self.plan.nodes if n.rank in self.started]) if x]
        if left:
            self.say(f"warning: could not remove the containers on {', '.join(left)} (unreachable); run "
                     "./stop_cluster.sh once it is back")

    def save_state(self) -> None:
        path = Path(self.plan.run_dir) / "state.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**self.report.as_dict(), "started_at": time.time()}, indent=2) + "\n")

    def write_executed(self) -> None:
        if self.runner.dry_run or not self.executed:
            return
        path = Path(self.plan.run_dir) / "last-start.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(self.executed))


def preflight_script(plan: ClusterPlan, node: NodePlan) -> str:
    """What the preflight asks ``node`` (read-only; nodes.probe_script with this plan's values)."""
    runtime = "llama-cpp" if plan.mode == "llama-cpp" else "vllm"
    return nd.probe_script(plan.cluster, plan.image, plan.model, plan.hf_cache_on(node), runtime, plan.log_dir)


def engine_healthy(endpoint: str, timeout: float = 3) -> bool:
    """GET {endpoint}/health answers 200 (the start's wait and the foreground mode's watch)."""
    import requests

    try:
        return requests.get(f"{endpoint}/health", timeout=timeout).status_code == 200
    except requests.RequestException:
        return False


def _fix_for(line: str, node: NodePlan) -> str:
    low = line.lower()
    if "no such image" in low or "unable to find image" in low:
        return "the image is missing on that node: start again (it is copied from the head)"
    if "permission denied" in low and "docker" in low:
        return "add the SSH user to the docker group on that node (sudo usermod -aG docker $USER)"
    if "connection" in low or "timed out" in low:
        return f"check that {node.host.address} is up and reachable over SSH"
    return f"see the output above; `sparkhelpers logs --node {node.rank}` has the engine log"


def image_nodes(plan: ClusterPlan, nodes: list[NodePlan]):  # noqa: ANN201
    """Relay targets for the image: bytes over the fabric twins (WORKER_IB_IP2 from the topology),
    docker commands over each node's own address."""
    from sparkhelpers.config import load_config
    from sparkhelpers.relay.image import ImageNode
    from sparkhelpers.topology import topology

    twin2: dict[str, str] = {}
    with contextlib.suppress(SparkError):  # the plan is validated; without the topology: one twin
        twin2 = {n.host.address: n.fabric2_ip for n in topology(load_config()).workers if n.fabric2_ip}
    out = []
    for n in nodes:
        lanes = (replace(n.host, address=n.fabric_ip),) if n.fabric_ip else (n.host,)
        if n.fabric_ip and twin2.get(n.host.address):
            lanes += (replace(n.host, address=twin2[n.host.address]),)
        out.append(ImageNode(n.label, n.host, lanes, plan.worker_hf_cache))
    return out


def ensure_model_on(runner: Runner, spec: ModelSpec, plan: ClusterPlan, workers: list[NodePlan]) -> None:
    """The models helper's sync + verify, over each worker's fabric address (the plan's, discovered or
    configured), falling back to management when the fabric does not answer SSH."""
    from sparkhelpers.models import Worker, ensure_on_nodes

    copies = [Worker(n.host.address, replace(n.host, address=n.fabric_ip) if n.fabric_ip else n.host, n.host,
                     plan.worker_hf_cache) for n in workers]
    ensure_on_nodes(runner, spec, copies, head_cache=plan.hf_cache, head=plan.head.host)


def chat_once(plan: ClusterPlan, api_key: str, prompt: str = "Say hello in five words.",
              max_tokens: int = 24) -> str:
    """One real chat completion; returns the answer text (raises when the engine gives none)."""
    import requests

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    body = {"model": plan.served_name, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens, "temperature": 0}
    try:
        r = requests.post(f"{plan.endpoint}/v1/chat/completions", json=body, headers=headers, timeout=120)
    except requests.RequestException as exc:
        raise SparkError(f"the engine is healthy but the test chat request failed: {exc}",
                         fix="read `sparkhelpers logs --node 0`") from None
    if r.status_code != 200:
        raise SparkError(f"the engine is healthy but the test chat request got HTTP {r.status_code}: "
                         f"{r.text.strip()[:200]}", fix="read `sparkhelpers logs --node 0`")
    try:
        message = r.json()["choices"][0]["message"]
        text = (message.get("content") or message.get("reasoning_content") or "").strip()
    except (ValueError, KeyError, IndexError, TypeError):
        text = ""
    if not text:
        raise SparkError("the engine answered the test chat request with no text",
                         fix="check the model's chat template; read `sparkhelpers logs --node 0`")
    return text


# ---- stop, status, logs -------------------------------------------------------------------------

@dataclass
class StopResult:
    node: str
    ok: bool
    removed: int = 0
    error: str = ""
    docker_s: float = 0.0  # time docker itself took to stop and remove on that node


def stop_nodes(runner: Runner, cluster: str, run_dir: str, hosts: list[tuple[str, Host]], *, force: bool,
               grace_s: int = 20) -> list[StopResult]:
    """Remove this cluster's containers on every node in parallel; each node has its own timeout."""
    script = nd.stop_script(cluster, run_dir, force, grace_s)

    def stop(item: tuple[str, Host]) -> StopResult:
        label, host = item
        r = runner.on(host, script, timeout=grace_s + host.connect_timeout + 30)
        if r.dry_run:
            return StopResult(label, True)
        if not r.ok or "removed=" not in r.stdout:
            return StopResult(label, False, error=r.last_line or f"exit {r.returncode}")
        count = r.stdout.rsplit("removed=", 1)[1].strip()
        docker_s = 0.0
        for line in r.stdout.splitlines():
            if line.startswith("window="):
                try:
                    t0, t1 = (float(x) for x in line[7:].split())
                    docker_s = t1 - t0
                except ValueError:
                    pass
        return StopResult(label, True, removed=int(count) if count.isdigit() else 0, docker_s=docker_s)

    return runner.parallel(stop, hosts)


def config_id(plan: ClusterPlan, secrets: dict[str, str]) -> str:
    """``PLANHASH`` or ``PLANHASH.SECRETDIGEST``: the container label that says what is running."""
    from sparkhelpers.secrets import secrets_digest

    digest = secrets_digest(secrets, plan.cluster)
    return f"{plan.config_hash()}.{digest}" if digest else plan.config_hash()
