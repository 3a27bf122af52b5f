"""Run a relay: probe the targets, stream the chunks along the tree over one lane per twin, finalize
(rename into place), and route around what broke: a node that stopped answering is named and dropped,
the nodes behind it get what they lack in the next round (from the head; the chunks they already hold
are not sent again). Every process starts through the Runner (the hops are ssh commands the head builds
and the agent on each node runs)."""

from __future__ import annotations

import base64
import json
import re
import sys
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from sparkhelpers.relay import agent, plan
from sparkhelpers.runner import Host, Runner, RunResult, build_ssh_cmd, shell_join
from sparkhelpers.units import human_bytes

STAGING = ".relay"
NO_SPACE = re.compile(r"no space left|ENOSPC|quota", re.I)


@dataclass(frozen=True)
class Target:
    name: str
    lanes: tuple[Host, ...]  # how to reach it over twin 1 (and twin 2)
    root: str  # the directory the files land in, on that node
    ask: Host | None = None  # how this machine reaches it for probes (default: lanes[0]; a control machine: mgmt)
    fresh: bool = False  # nothing of it there yet (the caller's preflight saw no directory): no first probe
    check: tuple[str, str] = ("", "")  # (shell, its stdin) run after finalize in the same SSH call; its last
    #                                    stdout line (JSON) lands in Outcome.rows[name]["check"]

    @property
    def control(self) -> Host:
        return self.ask or self.lanes[0]


@dataclass(frozen=True)
class Payload:
    src: str  # directory on the source node
    files: tuple[dict, ...]  # {"path": relative path, "size": bytes}
    links: tuple[dict, ...] = ()  # {"path", "target"}: symlinks made after every file is in place
    writes: tuple[dict, ...] = ()  # {"path", "data"}: small files written last (refs)

    @property
    def total(self) -> int:
        return sum(f["size"] for f in self.files)


@dataclass
class Outcome:
    done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    lanes: int = 1
    rounds: int = 0
    sent: int = 0  # bytes the source sent (over all lanes and rounds)
    rows: dict[str, dict] = field(default_factory=dict)


# ---- commands (pure) ----------------------------------------------------------------------------

@cache
def _bootstrap() -> str:
    packed = base64.b64encode(zlib.compress(Path(agent.__file__).read_bytes(), 9)).decode()
    return f"import base64,zlib;exec(zlib.decompress(base64.b64decode('{packed}')))"


def agent_argv(mode: str, args: dict | None = None, python: str = "python3") -> list[str]:
    return [python, "-c", _bootstrap(), mode, *([json.dumps(args)] if args is not None else [])]


def hop(target: Target, lane: int, tree: dict[str, list[str]], by_name: dict[str, Target], stall_s: float) -> dict:
    """The nested hop spec the parent's agent runs: its ssh argv, where it writes, its children, and how
    long the parent lets it take no data (``wait_s``: longer the more nodes hang below it)."""
    host = target.lanes[lane]
    return {"name": target.name, "root": target.root, "wait_s": stall_s * plan.height(tree, target.name),
            # run by the parent's agent on another node: a bulk connection of its own (no control dir there)
            "ssh": build_ssh_cmd(host, shell_join(agent_argv("recv")), bulk=True, multiplex=False),
            "children": [hop(by_name[c], lane, tree, by_name, stall_s) for c in tree[target.name]]}


def lane_header(payload: Payload, items: list, lane: int, tree: dict[str, list[str]], by_name: dict[str, Target],
                *, stall_s: float, bwlimit: int) -> dict:
    return {"lane": lane + 1, "chunk": plan.CHUNK, "staging": STAGING, "src": payload.src,
            "files": list(payload.files), "chunks": items, "read_s": stall_s * (plan.depth(tree) + 1),
            "bwlimit": bwlimit, "progress": True,
            "node": {"name": "head", "children": [hop(by_name[c], lane, tree, by_name, stall_s) for c in tree[""]]}}


def describe(tree: dict[str, list[str]]) -> str:
    """head -> a -> b -> c  (or for a tree: head -> a; a -> b, c; ...)"""
    chain, node = ["head"], ""
    while len(tree[node]) == 1:
        node = tree[node][0]
        chain.append(node)
    if not tree[node]:
        return " -> ".join(chain)
    return "; ".join(f"{p or 'head'} -> {', '.join(c)}" for p, c in tree.items() if c)


# ---- running ------------------------------------------------------------------------------------

def run_agent(runner: Runner, host: Host, mode: str, args: dict, *, timeout: float = 120,
              mutating: bool = True) -> tuple[RunResult, dict | None]:
    """One agent call on a node (probe, finalize, abort, list): (result, its JSON answer or None)."""
    argv = agent_argv(mode, args, sys.executable if host.is_local else "python3")
    if runner.dry_run and (mutating or not host.is_local):  # shown readably: the agent's code as <relay agent>
        what = "" if mutating else "would ask (read-only; not asked in a dry run): "
        shown = f"python3 -c <relay agent> {mode} {shell_join([json.dumps(args)])}"
        runner.echo(f"[dry-run] {host.label}: {what}{shown[:400]}")
        return RunResult(tuple(argv), 0, host=host.label, dry_run=True), None
    result = runner.on(host, argv, timeout=timeout, mutating=mutating)
    try:
        return result, json.loads(result.stdout.strip().splitlines()[-1]) if result.ok else None
    except (ValueError, IndexError):
        return result, None


class Meter:
    """Bytes sent by the source over every lane: redrawn on a terminal, a line every 10 s otherwise."""

    def __init__(self, total: int, stream=sys.stderr) -> None:  # noqa: ANN001
        self.total, self.stream, self.sent, self.t0 = total, stream, {}, time.monotonic()
        self.last, self.lock = time.monotonic(), threading.Lock()

    def update(self, lane: int, line: str) -> None:
        if not line.startswith("progress "):
            return
        with self.lock:
            self.sent[lane] = int(line.split()[1])
            done, now = sum(self.sent.values()), time.monotonic()
            text = (f"relay {100 * done // max(self.total, 1)}% {human_bytes(done)}/{human_bytes(self.total)} "
                    f"{human_bytes(done / max(now - self.t0, 1e-3))}/s over {len(self.sent)} lane(s)")
            if getattr(self.stream, "isatty", lambda: False)():
                self.stream.write("\r\033[K" + text)
                self.stream.flush()
            elif now - self.last >= 10:
                self.stream.write(f"sparkhelpers: {text}\n")
                self.last = now


def _show(runner: Runner, source: Host, header: dict) -> dict:
    """--dry-run: the lane's hops as readable commands (the agent's code stands in as <relay agent>)."""
    code = shell_join(["python3", "-c", _bootstrap()])

    def hops(node: dict) -> None:
        for child in node.get("children", []):
            ssh = shell_join(child["ssh"][:-1]) + " " + child["ssh"][-1].replace(code, "python3 -c <relay agent>")
            runner.echo(f"[dry-run] {node['name']}: lane {header['lane']}: forward to {child['name']} "
                        f"(writes under {child['root']}/{STAGING}): {ssh}")
            hops(child)
    chunks = header["chunks"]
    runner.echo(f"[dry-run] {source.label}: lane {header['lane']}: send {len(chunks)} chunk(s), "
                f"{human_bytes(sum(n for *_, n in chunks))} from {header['src']}")
    hops(header["node"])
    return {"node": "head", "ok": True, "error": "", "children": [], "dry_run": True}


def _run_lane(runner: Runner, source: Host, header: dict, meter: Meter) -> dict:
    lane = header["lane"]
    if runner.dry_run:
        return _show(runner, source, header)
    argv = agent_argv("send", None, sys.executable if source.is_local else "python3")
    if not source.is_local:
        argv = build_ssh_cmd(source, shell_join(argv))
    result = runner.stream(argv, lambda line: meter.update(lane, line), input=json.dumps(header),
                           host=source.label)
    for line in reversed(result.stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                break
    return {"node": "head", "ok": False, "children": [],
            "error": f"the sender on the head failed (exit {result.returncode}): {result.last_line}"}


def flatten(status: dict, out: dict[str, list[dict]] | None = None) -> dict[str, list[dict]]:
    """name -> its statuses (one per lane) from the nested status tree."""
    out = {} if out is None else out
    out.setdefault(status["node"], []).append(status)
    for child in status.get("children", []):
        flatten(child, out)
    return out


def choose_lanes(runner: Runner, todo: list[Target], warn: Callable[[str], None]) -> int:
    """2 when every target's second twin answers SSH, else 1 (with a warning naming the twin)."""
    if not todo or not all(len(t.lanes) > 1 for t in todo):
        return 1
    results = runner.parallel(lambda t: runner.on(t.lanes[1], ["true"], timeout=30, mutating=False), todo)
    bad = [(t, r) for t, r in zip(todo, results, strict=True) if not r.ok]
    for t, r in bad:
        warn(f"{t.name}: second fabric twin {t.lanes[1].address} does not answer SSH "
             f"({r.last_line or f'exit {r.returncode}'}); copying over one twin only (half the bandwidth)")
    return 1 if bad else 2


def _probe(runner: Runner, t: Target, payload: Payload, first: bool) -> tuple[Target, dict | None, str]:
    if first and t.fresh:
        return t, {"have": {}}, ""
    args = {"root": t.root, "staging": STAGING, "files": list(payload.files), "chunk": plan.CHUNK}
    result, answer = run_agent(runner, t.control, "probe", args, timeout=60, mutating=False)
    if result.dry_run:
        return t, {"have": {}}, ""
    return t, answer, "" if answer else (result.last_line or f"exit {result.returncode}")


def _finalize(runner: Runner, t: Target, payload: Payload) -> dict:
    """Rename into place; with ``t.check``, the check runs right after in the same SSH round trip."""
    args = {"root": t.root, "staging": STAGING, "files": list(payload.files), "chunk": plan.CHUNK,
            "links": list(payload.links), "writes": list(payload.writes)}
    if not t.check[0]:
        result, answer = run_agent(runner, t.control, "finalize", args, timeout=300)
        return answer or {"complete": False, "error": result.last_line or f"exit {result.returncode}"}
    python = sys.executable if t.control.is_local else "python3"
    script = shell_join(agent_argv("finalize", args, python)) + " && " + t.check[0]
    result = runner.on(t.control, script, input=t.check[1], timeout=300)
    lines = [ln for ln in result.stdout.strip().splitlines() if ln.startswith("{")]
    try:
        answer = json.loads(lines[0])
        answer["check"] = json.loads(lines[-1]) if len(lines) > 1 else None
    except (ValueError, IndexError):
        return {"complete": False, "error": result.last_line or f"exit {result.returncode}"}
    return answer


def _abort(runner: Runner, t: Target) -> None:
    run_agent(runner, t.control, "abort", {"root": t.root, "staging": STAGING}, timeout=60)


def _round(runner: Runner, source: Host, payload: Payload, todo: list[Target], need: list, nlanes: int, *,
           stall_s: float, bwlimit: int, say: Callable[[str], None], out: Outcome) -> dict[str, str]:
    """One pass of the tree over every lane; returns name -> the first error a node (or its parent,
    about it) reported. A node absent from the statuses is reported as cut off."""
    tree = plan.relay_tree([t.name for t in todo])
    by_name = {t.name: t for t in todo}
    say(f"relaying {human_bytes(sum(n for _, _, n in need))} to {len(todo)} worker(s) over {nlanes} twin(s): "
        f"{describe(tree)}")
    meter = Meter(sum(n for _, _, n in need) or 1)
    headers = [lane_header(payload, items, k, tree, by_name, stall_s=stall_s, bwlimit=bwlimit // nlanes)
               for k, items in enumerate(plan.lanes(need, nlanes))]
    if runner.dry_run:  # shown lane after lane
        statuses = [_run_lane(runner, source, h, meter) for h in headers]
    else:
        statuses = runner.parallel(lambda h: _run_lane(runner, source, h, meter), headers)
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    out.sent += sum(meter.sent.values())
    errors: dict[str, str] = {}
    for lane_status in statuses:
        seen = flatten(lane_status)
        if not lane_status.get("ok") and lane_status.get("error"):
            for t in todo:
                errors.setdefault(t.name, lane_status["error"])
        for t in todo:
            mine = seen.get(t.name, [])
            why = next((s["error"] for s in mine if s.get("error")), "")
            if not mine:
                why = "cut off: the node before it in the relay failed"
            if why:
                errors.setdefault(t.name, why)
            out.rows.setdefault(t.name, {"bytes": 0})["bytes"] += sum(s.get("wrote", 0) for s in mine)
    return errors


def distribute(runner: Runner, source: Host, payload: Payload, targets: list[Target], *, stall_s: float = 30,
               bwlimit_kbps: int | None = None, say: Callable[[str], None] = print,
               warn: Callable[[str], None] = print) -> Outcome:
    """Make ``payload`` present under every target's root. Targets that fail are named in
    ``Outcome.failed`` (the others still complete); nothing half-written is left in place of a file."""
    out = Outcome()
    items = plan.chunks([f["size"] for f in payload.files])
    paths = [f["path"] for f in payload.files]
    todo = list(targets)
    lanes: list[int] = []  # asked while the first probe runs (both are one SSH round trip per node)
    asking = threading.Thread(target=lambda: lanes.append(choose_lanes(runner, todo, warn)), daemon=True)
    asking.start()
    last_error: dict[str, str] = {}
    rounds = len(targets) + 1  # every round completes at least the head's own child, so this always ends
    for rnd in range(1, rounds + 1):
        out.rounds = rnd
        probed = runner.parallel(lambda t, first=(rnd == 1): _probe(runner, t, payload, first), todo)
        asking.join()
        out.lanes = lanes[0] if lanes else 1
        for t, answer, why in probed:
            if answer is None:
                earlier = f" (after: {last_error[t.name]})" if t.name in last_error else ""
                out.failed[t.name] = f"unreachable over SSH: {why}{earlier}"
        todo = [t for t, answer, _ in probed if answer is not None]
        if not todo:
            break
        now = time.time()
        for t in todo:
            out.rows.setdefault(t.name, {"bytes": 0}).setdefault("started_at", round(now, 3))
        need = plan.still_needed(items, paths, [a["have"] for _, a, _ in probed if a is not None])
        errors = _round(runner, source, payload, todo, need, out.lanes, stall_s=stall_s,
                        bwlimit=(bwlimit_kbps or 0) * 1024, say=say, out=out) if need else {}
        if runner.dry_run:
            out.done += [t.name for t in todo]
            return out
        finals = runner.parallel(lambda t: _finalize(runner, t, payload), todo)
        retry = []
        for t, fin in zip(todo, finals, strict=True):
            why = errors.get(t.name) or fin.get("error") or ""
            if fin.get("complete"):
                out.done.append(t.name)
                out.rows[t.name].update(finished_at=round(time.time(), 3), check=fin.get("check"))
            elif NO_SPACE.search(why) or rnd == rounds:
                _abort(runner, t)
                out.failed[t.name] = why or f"incomplete after {rnd} rounds: {', '.join(fin.get('missing', [])[:3])}"
            else:
                last_error[t.name] = why or "incomplete"
                retry.append(t)
        if retry:
            say(f"relay round {rnd} left {', '.join(t.name for t in retry)} incomplete "
                f"({'; '.join(f'{t.name}: {last_error[t.name]}' for t in retry)}); routing around and resuming")
        todo = retry
        if not todo:
            break
    return out
