"""setup-env.sh's logic: discover the head, ask (or take flags) for workers, user and model, validate
each worker (SSH in batch mode, its fabric IP, a no-fragment ping over the fabric), write config.local.env.

Interactive prompts go to stderr and read stdin (stdout carries only export lines when sourced);
the HF token is read without echo and written with the config API (never in argv or on screen).
"""

from __future__ import annotations

import getpass
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from sparkhelpers.config import Config, is_secret, load_config, set_local
from sparkhelpers.discover import doctor
from sparkhelpers.discover.checks import Check
from sparkhelpers.discover.fabric import host_problems, nccl_env
from sparkhelpers.discover.facts import HostFacts, discover_snapshot
from sparkhelpers.discover.nodes import Node, worker_host
from sparkhelpers.discover.probe import capture
from sparkhelpers.errors import SparkError
from sparkhelpers.runner import LOCAL, Runner, shell_quote


@dataclass
class Console:
    """Prompts on stderr, answers from stdin; ``interactive=False`` never asks and takes defaults."""

    interactive: bool = True
    out: Callable[[str], None] = field(default=lambda m: print(m, file=sys.stderr, flush=True))
    read: Callable[[], str] = field(default=lambda: sys.stdin.readline())
    secret: Callable[[str], str] = field(default=lambda p: getpass.getpass(p, stream=sys.stderr))
    prompt: Callable[[str], None] = field(default=lambda m: (sys.stderr.write(m), sys.stderr.flush()))

    def ask(self, question: str, default: str = "") -> str:
        if not self.interactive:
            return default
        shown = f" [{default}]" if default else ""
        self.prompt(f"{question}{shown}: ")
        line = self.read()
        if line == "":  # EOF: nobody is there to answer
            raise SparkError(f"no answer to {question!r} (standard input closed)",
                             fix="run setup-env.sh in a terminal, or use --non-interactive with flags")
        return line.strip() or default


def split_list(value: str) -> list[str]:
    return [w for w in re.split(r"[\s,]+", value.strip()) if w]


def _facts(runner: Runner, cfg: Config, host_address: str | None, tmp: str) -> HostFacts:
    host = worker_host(cfg, host_address) if host_address else LOCAL
    path = capture(runner, f"{tmp}/{host_address or 'head'}", host, hf_cache=cfg.get("HF_CACHE"))
    return discover_snapshot(str(path))


def validate_worker(runner: Runner, cfg: Config, address: str, head: HostFacts, tmp: str) -> tuple[str, list[Check]]:
    """SSH to the worker (one round trip), find its fabric IP, ping it over the fabric. (ib_ip, checks)."""
    try:
        facts = _facts(runner, cfg, address, tmp)
    except SparkError as exc:
        node = Node(1, address, worker_host(cfg, address))
        return "", [doctor._ssh_check(node, exc.message)]
    checks = [Check("ssh", address, "pass", f"SSH in batch mode to {worker_host(cfg, address).target} works")]
    ib_ip = nccl_env(facts).get("VLLM_HOST_IP", "")
    if not ib_ip:
        problems = [p for p in host_problems(facts) if p.severity == "error"]
        first = problems[0] if problems else None
        checks.append(Check("fabric", address, "fail", f"{address} has no usable fabric"
                            + (f": {first.message}" if first else ""), first.fix if first else ""))
        return "", checks
    node = Node(1, address, worker_host(cfg, address), ib_ip)
    checks += doctor.fabric_pings(runner, head, node, facts, cfg.get_int("FABRIC_MTU", 9000))
    return ib_ip, checks


@dataclass
class Result:
    written: dict[str, str]  # every answer (for the export lines), secrets excluded
    checks: list[Check]
    changed: list[str] = field(default_factory=list)  # keys actually written to config.local.env

    @property
    def failed(self) -> bool:
        return any(c.status == "fail" for c in self.checks)


def run_setup(console: Console, *, workers: str | None = None, user: str | None = None, model: str | None = None,
              token_from_stdin: bool = False, runner: Runner | None = None, dry_run: bool = False) -> Result:
    """Ask, validate, write. Values given as flags win; otherwise the existing config is the default."""
    import tempfile

    runner = runner or Runner()
    cfg = saved = load_config()
    say = console.out
    with tempfile.TemporaryDirectory(prefix="spark-setup-") as tmp:
        head = _facts(runner, cfg, None, tmp)
        env = nccl_env(head)
        if env:
            say(f"head fabric: {env['NCCL_SOCKET_IFNAME']} {env['VLLM_HOST_IP']} (NCCL_IB_HCA={env['NCCL_IB_HCA']})")
        else:
            say("head fabric: none found (fine for a single node; workers need the ConnectX-7 link)")
        answers: dict[str, str] = {}
        answers["WORKER_USER"] = user if user is not None else console.ask(
            "SSH user on the workers", cfg.get("WORKER_USER") or head.user)
        answers["MODEL"] = _ask_model(console, cfg, model)
        cfg = cfg.with_overrides(WORKER_USER=answers["WORKER_USER"])
        checks: list[Check] = []
        while True:
            given = workers if workers is not None else console.ask(
                "Worker SSH addresses, space-separated (empty = single node)", cfg.get("WORKER_HOST"))
            addresses = split_list(given)
            checks, ib_ips = [], []
            for address in addresses:
                say(f"checking {address}: SSH, fabric IP, no-fragment ping ...")
                ib_ip, found = validate_worker(runner, cfg, address, head, tmp)
                ib_ips.append(ib_ip)
                checks += found
                for c in found:
                    say(f"  {c.status.upper():<5} {c.name}: {c.message}" + (f"\n        fix: {c.fix}" if
                                                                             c.status != "pass" and c.fix else ""))
            if addresses and not env:
                checks.append(Check("fabric", "head", "fail", "this head has no usable fabric for workers",
                                    "run `sparkhelpers discover` and fix what it reports"))
            bad = [c for c in checks if c.status == "fail"]
            if not bad or not console.interactive or workers is not None:
                break
            say("some checks failed; fix them and answer again (or press Enter to keep the same list)")
        answers["WORKER_HOST"] = " ".join(addresses)
        answers["WORKER_IB_IP"] = " ".join(ib_ips) if all(ib_ips) else ""
        answers["HEAD_IP"] = env.get("VLLM_HOST_IP", "") if addresses else cfg.get("HEAD_IP")
        token = _read_token(console, cfg, token_from_stdin)
        result = Result({}, checks)
        if result.failed:
            return result
        for key, value in answers.items():
            if value != saved.get(key):
                if not dry_run:
                    set_local(key, value)
                result.changed.append(key)
            result.written[key] = value
        if token is not None:
            if not dry_run:
                set_local("HF_TOKEN", token)
            result.changed.append("HF_TOKEN")
        return result


def _ask_model(console: Console, cfg: Config, given: str | None) -> str:
    """A catalog preset (name or number) or an org/name repo id; asked again until it resolves."""
    while True:
        choice = given if given is not None else console.ask("Model (preset or Hugging Face repo id)",
                                                             cfg.get("MODEL"))
        try:
            from sparkhelpers.models.catalog import resolve_model
        except ImportError:  # the model catalog is optional for set-up
            return choice
        try:
            resolve_model(cfg, choice)
            return choice
        except SparkError as exc:
            if given is not None or not console.interactive:
                raise
            console.out(f"  {exc.message}" + (f" (fix: {exc.fix})" if exc.fix else ""))


def _read_token(console: Console, cfg: Config, from_stdin: bool) -> str | None:
    """None = keep what is there. Interactive: hidden prompt; --hf-token-stdin: one line of stdin."""
    if from_stdin:
        return sys.stdin.readline().strip() or None
    if not console.interactive:
        return None
    have = " (Enter keeps the current one)" if cfg.get("HF_TOKEN") else " (Enter = none)"
    token = console.secret(f"Hugging Face token for gated models, not echoed{have}: ").strip()
    return token or None


def export_lines(written: dict[str, str]) -> list[str]:
    """What a sourced setup-env.sh exports: every written key except secrets (they stay in the 0600 file)."""
    return [f"export {k}={shell_quote(v)}" for k, v in written.items() if not is_secret(k)]


def worker_report(facts: HostFacts, head_user: str = "") -> tuple[list[str], bool]:
    """--worker mode: this node's fitness and the values the head needs. (lines, ok)."""
    lines, ok = [], True
    for p in host_problems(facts):
        lines.append(f"{p.severity}: {p.message}" + (f"\n  fix: {p.fix}" if p.fix else ""))
        ok = ok and p.severity != "error"
    if 22 not in facts.listening_ports:
        lines.append("error: nothing listens on port 22 (sshd): the head cannot reach this node\n"
                     "  fix: sudo apt-get install -y openssh-server && sudo systemctl enable --now ssh")
        ok = False
    env = nccl_env(facts)
    mgmt = facts.netdevs.get(facts.management_iface)
    mgmt_ip = mgmt.ipv4[0].ip if mgmt and mgmt.ipv4 else ""
    lines.append("")
    lines.append("on the head, add this node to the config (setup-env.sh asks for it):")
    lines.append(f"  WORKER_HOST += {mgmt_ip or '<this node address>'}   "
                 f"(SSH address; management {facts.management_iface or 'none'})")
    lines.append(f"  WORKER_IB_IP += {env.get('VLLM_HOST_IP', '<no fabric IP>')}   (fabric, "
                 f"{env.get('NCCL_SOCKET_IFNAME', 'none')})")
    lines.append(f"  WORKER_USER = {facts.user}")
    return lines, ok
