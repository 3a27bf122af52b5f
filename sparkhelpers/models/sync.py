"""Copy a model from the head's HF cache to the workers that lack it, over the fabric.

``ensure_on_nodes(runner, spec, nodes)`` is the API the cluster start uses. Per worker, one SSH
round trip runs the read-only ``snapshot_check`` there (complete? writable? owned? free space?).
Workers that already hold the head's exact files are left alone (a re-sync is a no-op); problems
found on any worker stop everything before a byte is copied. Then the copy, by one of two methods:

- ``relay`` (the default, ``sparkhelpers.relay``): the head sends the snapshot's blobs once, each worker
  forwards the stream to the next while writing it (a chain, a tree for many workers), over both fabric
  twins when both answer; chunks land under ``.relay/`` and are renamed into place at the end, the
  snapshot links last, so the engine never sees a partial file. A worker that fails is named and the
  others still complete (exit 1); an interrupted relay resumes from the chunks already journaled.
- ``fanout`` (the previous method): rsync from the head to every worker at once (``-a`` keeps blobs and
  snapshot symlinks, ``--partial-dir`` resumes, ``--timeout`` aborts a stalled link). The head's port
  then carries one copy per worker.

Each worker is checked again afterwards.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from sparkhelpers.config import Config
from sparkhelpers.errors import SparkError, UsageError
from sparkhelpers.models import snapshot_check
from sparkhelpers.models.catalog import ModelSpec
from sparkhelpers.relay import Payload, Target
from sparkhelpers.runner import Host, Runner, RunResult, build_ssh_cmd, rsync_shell, shell_join, shell_quote
from sparkhelpers.units import human_bytes, human_pair

IDLE_TIMEOUT_S = 120
METHODS = ("relay", "fanout")
PARTIAL_DIR = ".rsync-partial"
_PROGRESS = re.compile(r"^\s*([\d,]+)\s+(\d+)%\s+(\S+/s)")


@dataclass(frozen=True)
class Worker:
    name: str  # as written in WORKER_HOST
    host: Host  # the address copies go over (the fabric one when known)
    mgmt: Host
    cache: str  # the worker's HF cache (WORKER_HF_CACHE, else HF_CACHE)
    host2: Host | None = None  # its second fabric twin (WORKER_IB_IP2), for a second copy stream

    @property
    def via(self) -> str:
        return "management" if self.host == self.mgmt else "fabric"


def workers_from_config(cfg: Config) -> list[Worker]:
    """The topology's workers (sparkhelpers.topology); copies go over each one's WORKER_IB_IP when set."""
    from sparkhelpers.topology import topology

    workers = topology(cfg).workers
    cache = cfg.get("WORKER_HF_CACHE") or cfg.require("HF_CACHE")
    return [Worker(n.name, replace(n.host, address=n.fabric_ip) if n.fabric_ip else n.host, n.host, cache,
                   replace(n.host, address=n.fabric2_ip) if n.fabric_ip and n.fabric2_ip else None)
            for n in workers]


def with_twins(cfg: Config, workers: list[Worker]) -> list[Worker]:
    """Give each worker its configured second twin (matched by management address) when it has none."""
    if not cfg.get("WORKER_HOST"):
        return workers
    known = {w.mgmt.address: w.host2 for w in workers_from_config(cfg)}
    return [w if w.host2 or w.host == w.mgmt else replace(w, host2=known.get(w.mgmt.address)) for w in workers]


def select(workers: list[Worker], wanted: list[str]) -> list[Worker]:
    """``all`` (or nothing), else each name as in WORKER_HOST, its fabric IP, or its 1-based number."""
    if not wanted or wanted == ["all"]:
        return workers
    chosen = []
    for w in wanted:
        match = [x for x in workers if w in (x.name, x.host.address)] or (
            [workers[int(w) - 1]] if w.isdigit() and 1 <= int(w) <= len(workers) else [])
        if not match:
            names = ", ".join(x.name for x in workers) or "none configured"
            raise UsageError(f"{w} is not a worker (WORKER_HOST: {names})", fix="use a WORKER_HOST entry or 'all'")
        chosen += [m for m in match if m not in chosen]
    return chosen


# ---- pure command builders ----------------------------------------------------------------------

def rsync_argv(src_dir: str, worker: Worker, dest_dir: str, *, idle_timeout: int = IDLE_TIMEOUT_S,
               bwlimit_kbps: int | None = None, multiplex: bool = True) -> list[str]:
    """rsync of one model directory, the cache layout kept (blobs, refs, snapshot symlinks); a bulk copy
    (the bulk cipher first). ``multiplex=False`` when it runs on a remote head (no control dir there)."""
    argv = ["rsync", "-a", "--no-owner", "--no-group", f"--partial-dir={PARTIAL_DIR}",
            f"--timeout={idle_timeout}", "--info=progress2", "--no-inc-recursive", "--stats",
            "--exclude=*.incomplete", f"--exclude={PARTIAL_DIR}/"]
    if bwlimit_kbps:
        argv.append(f"--bwlimit={bwlimit_kbps}")
    if worker.host.is_local:
        return [*argv, f"--rsync-path=mkdir -p {shell_quote(dest_dir)} && rsync", f"{src_dir}/", f"{dest_dir}/"]
    return [*argv, "-e", rsync_shell(worker.host, multiplex=multiplex),
            f"--rsync-path=mkdir -p {shell_quote(dest_dir)} && rsync", f"{src_dir}/",
            f"{worker.host.target}:{dest_dir}/"]


def chown_fix(worker: Worker, report: dict) -> str:
    user = report.get("user") or worker.host.user or "$USER"
    return f"ssh {worker.host.target} sudo chown -R {user}: {shlex.quote(worker.cache)}"


def parse_stats(text: str) -> dict[str, int]:
    out = {}
    for key, label in (("literal_bytes", "Literal data"), ("sent_bytes", "Total bytes sent"),
                       ("files_transferred", "Number of regular files transferred")):
        m = re.search(rf"{label}: ([\d,]+)", text)
        if m:
            out[key] = int(m.group(1).replace(",", ""))
    return out


def no_space_fault(worker: Worker, need: int, free: int) -> tuple[str, str]:
    """("no space left on NODE: needs X, has Y", fix) with sizes precise enough to be true."""
    x, y = human_pair(need, free)
    return (f"no space left on {worker.name}: needs {x}, has {y} (in {worker.cache})",
            f"free at least {human_bytes(need - free)} on {worker.name} under {worker.cache} "
            "(or set WORKER_HF_CACHE to a larger disk), then run it again")


def cleanup_partial_script(dest_dir: str) -> str:
    """Shell that removes what an aborted rsync leaves in ``dest_dir``: its partial dirs and its hidden
    temp files (``.NAME.XXXXXX``). Complete files stay (the next sync keeps them)."""
    q = shell_quote(dest_dir)
    return (f"[ -d {q} ] || exit 0; find {q} -depth \\( -name {shell_quote(PARTIAL_DIR)} -o -name '.*.??????' "
            "\\) -exec rm -rf {} + ; true")


# ---- checks -------------------------------------------------------------------------------------

def check_on(runner: Runner, worker: Worker, spec: ModelSpec, *, expected: dict | None = None,
             preflight: bool = False, host: Host | None = None) -> tuple[RunResult, dict | None]:
    """Run snapshot_check on the worker (one SSH round trip, read-only). (result, report or None)."""
    args = json.dumps({"cache": worker.cache, "repo": spec.repo, "revision": spec.revision,
                       "expected": expected, "preflight": preflight})
    script = Path(snapshot_check.__file__).read_text(encoding="utf-8")
    result = runner.on(host or worker.host, ["python3", "-", args], input=script, timeout=120, mutating=False)
    if not result.ok:
        return result, None
    try:
        return result, json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return result, None


_NETWORK_ERRORS = re.compile(r"timed out|No route to host|Connection refused|Network is unreachable|"
                             r"Could not resolve|Connection closed by remote host", re.I)


def _unreachable(result: RunResult) -> bool:
    """ssh failed to connect at all (not: connected and was refused a login, which is no network matter)."""
    return result.returncode == 255 and bool(_NETWORK_ERRORS.search(result.stderr))


def head_manifest(head_cache: str, spec: ModelSpec) -> dict:
    report = snapshot_check.check(head_cache, spec.repo, spec.revision)
    if not report["complete"]:
        raise SparkError(f"{spec.repo} is not complete on the head: {'; '.join(report['problems'][:3])}",
                         fix=f"sparkhelpers models download {spec.name}")
    return report


# ---- progress -----------------------------------------------------------------------------------

@dataclass
class Board:
    """One status line for all workers (redrawn on a terminal; a line every 10 s otherwise)."""

    total: int
    stream: object = field(default=sys.stderr)
    state: dict[str, str] = field(default_factory=dict)
    last: float = field(default_factory=time.monotonic)  # off a terminal the first line comes after 10 s
    lock: threading.Lock = field(default_factory=threading.Lock)

    def update(self, worker: str, line: str) -> None:
        m = _PROGRESS.match(line)
        if not m:
            return
        with self.lock:
            self.state[worker] = f"{worker} {m.group(2)}% {m.group(3)}"
            tty = getattr(self.stream, "isatty", lambda: False)()
            now = time.monotonic()
            if tty:
                self.stream.write("\r\033[K" + " | ".join(self.state.values()))
                self.stream.flush()
            elif now - self.last >= 10:
                self.stream.write("sparkhelpers: sync: " + " | ".join(self.state.values()) + "\n")
                self.last = now

    def done(self) -> None:
        if self.state and getattr(self.stream, "isatty", lambda: False)():
            self.stream.write("\n")


# ---- the operation ------------------------------------------------------------------------------

def as_workers(cfg: Config, nodes: list[Worker | Host]) -> list[Worker]:
    """Workers for ``nodes``; a bare Host (the cluster plan's) is matched to its WORKER_HOST entry
    (by management or fabric address) so the fabric/management choice and WORKER_HF_CACHE apply."""
    known = workers_from_config(cfg) if cfg.get("WORKER_HOST") else []
    cache = cfg.get("WORKER_HF_CACHE") or cfg.require("HF_CACHE")
    out = []
    for node in nodes:
        if isinstance(node, Worker):
            out.append(node)
            continue
        match = [w for w in known if node.address in (w.mgmt.address, w.host.address)]
        out.append(match[0] if match else Worker(node.address, node, node, cache))
    return out


def head_report(runner: Runner, head: Host, head_cache: str, spec: ModelSpec) -> dict:
    """The head's snapshot manifest: read here, or over SSH when the head is remote (a control machine)."""
    if head.is_local:
        return head_manifest(head_cache, spec)
    result, report = check_on(runner, Worker("head", head, head, head_cache), spec)
    if result.dry_run:  # not asked: the whole repo directory would be copied where incomplete
        return {"files": {}, "model_dir": snapshot_check.repo_dir(head_cache, spec.repo), "total_bytes": 0}
    if report is None or not report["complete"]:
        problems = "; ".join((report or {}).get("problems", [result.last_line or "no answer"])[:3])
        raise SparkError(f"{spec.repo} is not complete on the head ({head.target}): {problems}",
                         fix=f"sparkhelpers models download {spec.name} (on the head)")
    return report


def _asked(worker: Worker, head: Host) -> Host | None:
    """Where checks reach a worker: its copy address, or from a control machine its management one."""
    return None if head.is_local else worker.mgmt


def _probe(runner: Runner, worker: Worker, spec: ModelSpec, manifest: dict, head: Host) -> tuple[Worker, dict]:
    """The worker's preflight report; an unreachable fabric address falls back to management."""
    from sparkhelpers.appkit import warn

    result, report = check_on(runner, worker, spec, expected=manifest, preflight=True, host=_asked(worker, head))
    if result.dry_run:  # a dry run asks nothing: every worker would be checked, then copied
        return worker, {"complete": False, "files": {}}
    if report is None and _unreachable(result) and worker.host != worker.mgmt and head.is_local:
        warn(f"{worker.name}: fabric address {worker.host.address} unreachable over SSH "
             f"({result.last_line}); copying over management {worker.mgmt.address} instead (slower)")
        worker = replace(worker, host=worker.mgmt)
        result, report = check_on(runner, worker, spec, expected=manifest, preflight=True)
    if report is None:
        raise SparkError(f"cannot check {worker.name} ({worker.host.address}): {result.last_line or 'no answer'}",
                         fix=f"ssh {worker.host.target} true   (SSH keys, python3 on the worker)")
    return worker, report


NO_SPACE = re.compile(r"No space left on device|Disk quota exceeded|ENOSPC", re.I)


def explain_no_space(runner: Runner, spec: ModelSpec, workers: list[Worker], report: dict, head: Host) -> None:
    """A copy that hit a full disk: remove its partial files, then say how much it needs and has."""
    if not workers:
        return

    def measure(worker: Worker) -> tuple[str, str]:
        asked = _asked(worker, head) or worker.host
        runner.on(asked, cleanup_partial_script(snapshot_check.repo_dir(worker.cache, spec.repo)), timeout=120)
        _, now = check_on(runner, worker, spec, expected=report["files"], preflight=True, host=asked)
        if now is None:
            return (f"no space left on {worker.name} (in {worker.cache}); partial files removed",
                    f"free space on {worker.name} under {worker.cache}, then run it again")
        have = sum(v for k, v in now["files"].items() if report["files"].get(k) == v)
        return no_space_fault(worker, report["total_bytes"] - have, now["free_bytes"])

    faults = runner.parallel(measure, workers)
    raise SparkError("; ".join(f for f, _ in faults) + f" (copy of {spec.repo} stopped; its partial files "
                     "were removed)", fix=" && ".join(dict.fromkeys(fix for _, fix in faults)))


def _refuse_faults(probed: list[tuple[Worker, dict]], head: dict) -> None:
    """Stop before a byte is copied when any worker cannot take the model (ownership, free space)."""
    manifest, faults = head["files"], []
    for worker, report in probed:
        if report["complete"]:
            continue
        if report.get("not_writable") or report.get("foreign_owned"):
            bad = (report.get("not_writable") or report.get("foreign_owned"))[0]
            faults.append((f"{worker.name}: {bad} is not writable by {report['user']}", chown_fix(worker, report)))
            continue
        have = {k: v for k, v in report["files"].items() if manifest.get(k) == v}
        need = head["total_bytes"] - sum(have.values())
        if need > report.get("free_bytes", need):
            faults.append(no_space_fault(worker, need, report["free_bytes"]))
    if faults:
        raise SparkError("; ".join(f for f, _ in faults) + " (nothing was copied)",
                         fix=" && ".join(dict.fromkeys(fix for _, fix in faults)))


def _copy_all(runner: Runner, spec: ModelSpec, todo: list[Worker], report: dict, rows: dict[str, dict], *,
              idle_timeout: int, bwlimit_kbps: int | None, head: Host) -> list[tuple[Worker, RunResult]]:
    """rsync to every worker in ``todo`` at once, one progress line for all; raises when any copy failed.
    From a control machine the head runs the copies (over SSH); we only watch their progress.
    ``report`` is the head's manifest (its model directory, files and total size)."""
    src, board = report["model_dir"], Board(report["total_bytes"])

    def copy(worker: Worker) -> tuple[Worker, RunResult]:
        dest = snapshot_check.repo_dir(worker.cache, spec.repo)
        argv = rsync_argv(src, worker, dest, idle_timeout=idle_timeout, bwlimit_kbps=bwlimit_kbps,
                          multiplex=head.is_local)
        if not head.is_local:
            argv = build_ssh_cmd(head, shell_join(argv))
        rows[worker.name]["started_at"] = round(time.time(), 3)
        result = runner.stream(argv, lambda line: board.update(worker.name, line), host=worker.name)
        rows[worker.name]["finished_at"] = round(time.time(), 3)
        return worker, result

    results = runner.parallel(copy, todo)
    board.done()
    failed = [(w, r) for w, r in results if not r.ok]
    explain_no_space(runner, spec, [w for w, r in failed if NO_SPACE.search(r.stdout + r.stderr)], report, head)
    if failed:
        detail = "; ".join(f"{w.name}: rsync exit {r.returncode}: {r.last_line}" for w, r in failed)
        raise SparkError(f"copy of {spec.repo} failed ({detail})",
                         fix=f"run `sparkhelpers models sync {spec.name}` again: it resumes where it stopped")
    return results


def _verify_copies(runner: Runner, spec: ModelSpec, results: list[tuple[Worker, RunResult]], manifest: dict,
                   rows: dict[str, dict], head: Host) -> None:
    def verify(worker: Worker) -> tuple[Worker, dict | None]:
        return worker, check_on(runner, worker, spec, expected=manifest, host=_asked(worker, head))[1]

    reports = runner.parallel(verify, [w for w, _ in results])
    for (worker, result), (_, report) in zip(results, reports, strict=True):
        stats = parse_stats(result.stdout)
        rows[worker.name].update(action="copied", bytes=stats.get("literal_bytes", 0),
                                 seconds=round(result.duration_s, 2), verified=bool(report and report["complete"]))
        if not rows[worker.name]["verified"]:
            problems = "; ".join((report or {}).get("problems", ["no answer"])[:3])
            raise SparkError(f"{worker.name}: {spec.repo} copied but incomplete: {problems}",
                             fix=f"sparkhelpers models sync {spec.name} --to {worker.name}")


def _relay_payload(runner: Runner, spec: ModelSpec, report: dict, head: Host) -> Payload:
    """The snapshot as the relay moves it: its blobs, then its links and refs (made last)."""
    from sparkhelpers.relay import run_agent

    rev = spec.revision or "main"
    args = {"model_dir": report["model_dir"], "commit": report.get("commit") or "",
            "ref": "" if snapshot_check.COMMIT_RE.match(rev) else rev}
    result, listing = run_agent(runner, head, "list", args, timeout=120, mutating=False)
    if result.dry_run:
        return Payload(report["model_dir"], ())
    if listing is None:
        raise SparkError(f"cannot list the snapshot of {spec.repo} on the head: {result.last_line or 'no answer'}",
                         fix=f"sparkhelpers models verify {spec.name}")
    return Payload(report["model_dir"], tuple(listing["files"]), tuple(listing["links"]), tuple(listing["writes"]))


def _target(worker: Worker, spec: ModelSpec, head: Host, report: dict, expected: dict) -> Target:
    """The worker as a relay target; the verify check rides on the finalize round trip."""
    lanes = (worker.host,) + ((worker.host2,) if worker.host2 and worker.host != worker.mgmt else ())
    args = json.dumps({"cache": worker.cache, "repo": spec.repo, "revision": spec.revision, "expected": expected,
                       "preflight": False})
    check = (f"python3 - {shell_quote(args)}", Path(snapshot_check.__file__).read_text(encoding="utf-8"))
    return Target(worker.name, lanes, snapshot_check.repo_dir(worker.cache, spec.repo), ask=_asked(worker, head),
                  fresh=not report.get("exists", True), check=check)


def _relay_all(runner: Runner, spec: ModelSpec, todo: list[Worker], report: dict, rows: dict[str, dict], *,
               idle_timeout: int, bwlimit_kbps: int | None, head: Host, echo,  # noqa: ANN001
               probed: dict[str, dict]) -> None:
    """Relay the snapshot to ``todo``, verify the ones that completed, then name those that failed."""
    from sparkhelpers.appkit import warn
    from sparkhelpers.relay import distribute

    payload = _relay_payload(runner, spec, report, head)
    targets = [_target(w, spec, head, probed.get(w.name, {}), report["files"]) for w in todo]
    out = distribute(runner, head, payload, targets, stall_s=idle_timeout, bwlimit_kbps=bwlimit_kbps, say=echo,
                     warn=warn)
    for w in todo:
        got = out.rows.get(w.name, {})
        rows[w.name].update(started_at=got.get("started_at"), finished_at=got.get("finished_at"),
                            bytes=got.get("bytes", 0), lanes=out.lanes, method="relay")
        if got.get("finished_at") and got.get("started_at"):
            rows[w.name]["seconds"] = round(got["finished_at"] - got["started_at"], 2)
    if runner.dry_run:
        for w in todo:
            rows[w.name].update(action="would copy", verified=False)
        return
    done = [w for w in todo if w.name in out.done]
    reports = runner.parallel(lambda w: out.rows[w.name].get("check") or check_on(
        runner, w, spec, expected=report["files"], host=_asked(w, head))[1], done)
    for w, rep in zip(done, reports, strict=True):
        rows[w.name].update(action="copied", verified=bool(rep and rep["complete"]))
        if not rows[w.name]["verified"]:
            out.failed[w.name] = "copied but incomplete: " + "; ".join((rep or {}).get("problems", ["no answer"])[:3])
    for name in out.failed:
        rows[name].update(action="failed", verified=False, error=out.failed[name])
    if out.failed:
        try:
            _raise_relay_failure(runner, spec, [w for w in todo if w.name in out.failed], out.failed, report, head,
                                 ok=[w.name for w in done if w.name not in out.failed])
        except SparkError as exc:
            exc.rows = list(rows.values())  # the CLI's --json still shows every worker's outcome
            raise


def _raise_relay_failure(runner: Runner, spec: ModelSpec, failed: list[Worker], why: dict[str, str], report: dict,
                         head: Host, ok: list[str]) -> None:
    """One line naming every failed worker and why (a full disk with its sizes), the others' success."""
    faults, fixes = [], []
    for w in failed:
        if NO_SPACE.search(why[w.name]) or "no space left" in why[w.name]:
            _, now = check_on(runner, w, spec, expected=report["files"], preflight=True, host=_asked(w, head))
            have = sum(v for k, v in (now or {}).get("files", {}).items() if report["files"].get(k) == v)
            fault, fix = no_space_fault(w, report["total_bytes"] - have, (now or {}).get("free_bytes", 0))
            faults.append(fault + " (its copy stopped; its partial files were removed)")
            fixes.append(fix)
        else:
            faults.append(f"{w.name}: {why[w.name]}")
            fixes.append(f"bring {w.name} back, then `sparkhelpers models sync {spec.name} --to {w.name}` "
                         "(it resumes)")
    done = f"; {', '.join(ok)} complete" if ok else ""
    raise SparkError(f"copy of {spec.repo} failed on {len(failed)} worker(s): " + "; ".join(faults) + done,
                     fix=" && ".join(dict.fromkeys(fixes)))


def ensure_on_nodes(runner: Runner, spec: ModelSpec, nodes: list[Worker | Host], *, head_cache: str | None = None,
                    idle_timeout: int = IDLE_TIMEOUT_S, bwlimit_kbps: int | None = None,
                    echo=None, head: Host | None = None, method: str = "relay") -> list[dict]:  # noqa: ANN001
    """Make ``spec`` present and verified on every worker in ``nodes`` (Workers, or the Hosts of the
    cluster plan). Returns one row per worker; raises SparkError (nothing half-copied is reported ok).
    ``head`` is rank 0 (default: this machine); a remote one (a control machine's HEAD_HOST) is asked
    for its manifest over SSH and runs the copies itself. ``method``: relay (default) or fanout."""
    from sparkhelpers.appkit import info, warn
    from sparkhelpers.config import load_config

    if method not in METHODS:
        raise UsageError(f"unknown copy method {method!r}", fix=f"use one of: {', '.join(METHODS)}")
    echo = echo or info
    cfg = load_config()
    if head_cache is None or any(not isinstance(n, Worker) for n in nodes):
        head_cache = head_cache or cfg.require("HF_CACHE")
        nodes = as_workers(cfg, nodes)
    nodes = with_twins(cfg, nodes)
    head_host = head or Host("local")
    if not nodes and not head_host.is_local:
        return []
    head = head_report(runner, head_host, head_cache, spec)
    manifest = head["files"]
    if not nodes:
        return []
    for w in nodes:
        if w.host == w.mgmt and not w.host.is_local:
            warn(f"{w.name}: no fabric address (WORKER_IB_IP); copying over management")
    probed = runner.parallel(lambda w: _probe(runner, w, spec, manifest, head_host), nodes)
    _refuse_faults(probed, head)
    rows = {w.name: {"worker": w.name, "address": w.host.address, "via": w.via, "action": "present",
                     "bytes": 0, "seconds": 0.0, "verified": True} for w, _ in probed}
    todo = [w for w, report in probed if not report["complete"]]
    if not todo:
        echo(f"{spec.repo} already on {len(probed)} worker(s); nothing to copy")
        return list(rows.values())
    if method == "relay":
        echo(f"copying {spec.repo} ({human_bytes(head['total_bytes'])}) to {', '.join(w.name for w in todo)} "
             "by relay (the head sends once; each worker forwards)")
        _relay_all(runner, spec, todo, head, rows, idle_timeout=idle_timeout, bwlimit_kbps=bwlimit_kbps,
                   head=head_host, echo=echo, probed={w.name: r for w, r in probed})
        return list(rows.values())
    echo(f"copying {spec.repo} ({human_bytes(head['total_bytes'])}) to {', '.join(w.name for w in todo)} "
         "in parallel (fan-out)")
    results = _copy_all(runner, spec, todo, head, rows, idle_timeout=idle_timeout, bwlimit_kbps=bwlimit_kbps,
                        head=head_host)
    if runner.dry_run:
        for w in todo:
            rows[w.name].update(action="would copy", verified=False)
        return list(rows.values())
    _verify_copies(runner, spec, results, manifest, rows, head_host)
    return list(rows.values())
