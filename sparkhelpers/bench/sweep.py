"""The benchmark sweep (benchmark_all.sh): models x configuration variants x profiles, and recipes x
profiles, safe under cron.

Cells run model by model, variant by variant (one cluster switch per model x variant, every profile on
it), then recipe by recipe (a recipe fixes every served value, so its cells have no variant: the cell's
variant is ``recipe:NAME``, and the recipe id it was planned with is kept in the cell). Each cell ends
SUCCESS, SKIPPED, START_FAILED, BENCH_FAILED or TIMEOUT; the state file (written atomically after every
change) makes the sweep resumable: ``--resume`` skips cells that ended SUCCESS or SKIPPED and runs the
rest again, including the one a kill interrupted. Before the first change the
pre-sweep configuration bytes and running state are written into the state, so whatever happens
(failure, timeout, SIGTERM, or ``kill -9`` followed by ``--resume`` or the next sweep) the cluster is put
back as it was, or stopped when that fails. The cluster steps are injected (``ClusterSteps``; the real
ones are in sweep_steps.py), so the logic is tested without a cluster. Every file the sweep writes is
opened without following symlinks below RESULTS_DIR.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import re
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

SUCCESS, SKIPPED, START_FAILED, BENCH_FAILED, TIMEOUT = "SUCCESS", "SKIPPED", "START_FAILED", "BENCH_FAILED", "TIMEOUT"
RUNNING = "RUNNING"
DONE_STATUSES = {SUCCESS, SKIPPED}
STATE_FILE = "sweep-state.json"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
RECIPE_PREFIX = "recipe:"  # a recipe cell's variant (and its matrix row): recipe:NAME


@dataclass(frozen=True)
class SweepCell:
    model: str
    variant: str  # a configuration variant; for a recipe cell, ``recipe:NAME``
    profile: str
    recipe: str = ""  # a recipe cell: the reference served (file, name on RECIPE_PATH, preset)
    recipe_id: str = ""  # ... and the id it had when the sweep was planned (a changed recipe is refused)

    @property
    def key(self) -> str:
        return f"{self.model}|{self.variant}|{self.profile}"

    @property
    def switch_key(self) -> tuple[str, str, str]:
        """Cells with one switch key share one cluster switch."""
        return self.model, self.variant, self.recipe


def plan_cells(models: list[str], variants: list[str], profiles: list[str]) -> list[SweepCell]:
    """Model-major, then variant (one cluster switch each), then profile."""
    return [SweepCell(m, v, p) for m in models for v in variants for p in profiles]


def plan_recipe_cells(recipes: list[tuple[str, str, str, str]], profiles: list[str]) -> list[SweepCell]:
    """(reference, name, model, id) per recipe -> recipe-major cells, one switch each, then profile."""
    return [SweepCell(model, f"{RECIPE_PREFIX}{name}", p, recipe=ref, recipe_id=rid)
            for ref, name, model, rid in recipes for p in profiles]


@dataclass
class StepResult:
    status: str  # SUCCESS or one of the failure statuses
    message: str = ""
    result_dir: str = ""


class ClusterSteps(Protocol):
    def skip_reason(self, cell: SweepCell) -> str: ...  # non-empty: the model or recipe cannot run here (SKIPPED)

    def switch(self, cell: SweepCell, overrides: dict[str, str]) -> StepResult: ...  # serve it (with the variant)

    def bench(self, cell: SweepCell, overrides: dict[str, str], out_dir: Path, timeout_s: float) -> StepResult: ...

    def restore(self, pre: dict) -> StepResult: ...  # back to the pre-sweep config bytes and running state

    def stop(self) -> StepResult: ...


@dataclass
class SweepState:
    path: Path
    created: str
    cells: list[SweepCell]
    status: dict[str, dict] = field(default_factory=dict)
    pre: dict = field(default_factory=dict)  # the pre-sweep config and running state (see record_pre)

    @classmethod
    def new(cls, directory: Path, cells: list[SweepCell], pre: dict | None = None) -> SweepState:
        state = cls(directory / STATE_FILE, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), cells,
                    pre=pre or {})
        state.save()
        return state

    @classmethod
    def load(cls, path: Path) -> SweepState:
        data = json.loads(read_text_nofollow(path))
        cells = [SweepCell(**c) for c in data["plan"]]  # a v2 plan (no recipe fields) loads as model cells
        return cls(path, data["created"], cells, data.get("cells", {}), data.get("pre", {}))

    def save(self) -> None:
        write_json_nofollow(self.path, {"schema": "sparkhelpers.bench.sweep.v2", "created": self.created,
                                        "plan": [asdict(c) for c in self.cells], "cells": self.status,
                                        "pre": self.pre})

    def mark(self, cell: SweepCell, status: str, message: str = "", result_dir: str = "") -> None:
        entry = self.status.setdefault(cell.key, {})
        entry.update(status=status, message=message, at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        if result_dir:
            entry["result_dir"] = result_dir
        self.save()

    def get(self, cell: SweepCell) -> str:
        return self.status.get(cell.key, {}).get("status", "")

    @property
    def needs_restore(self) -> bool:
        """The pre-sweep state was recorded and not yet put back (the sweep was killed, or is running)."""
        return bool(self.pre) and not self.pre.get("restored")

    def mark_restored(self, how: str) -> None:
        self.pre.update(restored=True, how=how, at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        self.save()


def record_pre(config_path: Path, serving: list[str]) -> dict:
    """What to put back: the config file's exact bytes (or that it did not exist) and what was served."""
    try:
        data = config_path.read_bytes()
        existed = True
    except FileNotFoundError:
        data, existed = b"", False
    return {"config_path": str(config_path), "config_existed": existed,
            "config_b64": base64.b64encode(data).decode("ascii"), "serving": bool(serving), "served": serving,
            "restored": False}


def put_back_config(pre: dict) -> bool:
    """Write the recorded config bytes back when they differ (0600, atomic). True when something changed."""
    from sparkhelpers.config import _write_private

    path = Path(pre["config_path"])
    want = base64.b64decode(pre["config_b64"])
    if not pre["config_existed"]:
        if path.exists():
            path.unlink()
            return True
        return False
    if path.is_file() and path.read_bytes() == want:
        return False
    _write_private(path, want.decode("utf-8"))
    return True


def plain_name(name: str) -> str:
    """A sweep name is one plain path component (no /, no .., no leading dot)."""
    from sparkhelpers.errors import UsageError

    if not NAME_RE.fullmatch(name) or name in (".", ".."):
        raise UsageError(f"sweep name {name!r} is not a plain name",
                         fix="use letters, digits, '.', '_' and '-' (for example 2026-05-01-nightly)")
    return name


def check_no_symlinks(path: Path, base: Path) -> None:
    """Refuse when a component of ``path`` below ``base`` (RESULTS_DIR, as configured) is a symlink."""
    from sparkhelpers.errors import SparkError

    try:
        rel = path.relative_to(base)
    except ValueError:
        raise SparkError(f"{path} is outside {base}", fix="keep sweep files under RESULTS_DIR") from None
    current = base
    for part in rel.parts:
        current = current / part
        if current.is_symlink():
            raise SparkError(f"{current} is a symlink; the sweep does not write through links it was not given",
                             fix=f"remove it (rm {current}) or point RESULTS_DIR at the real directory")


def _open_nofollow(path: Path, flags: int) -> int:
    from sparkhelpers.errors import SparkError

    try:
        return os.open(path, flags | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # the last component is a symlink
            raise SparkError(f"{path} is a symlink; the sweep does not write through links",
                             fix=f"remove it: rm {path}") from None
        raise


def write_text_nofollow(path: Path, text: str) -> None:
    """Write a file atomically: a fresh temporary (random name, O_EXCL, never a link) renamed over the target."""
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)  # replaces a link itself, never its target
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def write_json_nofollow(path: Path, data: dict) -> None:
    write_text_nofollow(path, json.dumps(data, indent=2) + "\n")


def read_text_nofollow(path: Path) -> str:
    fd = _open_nofollow(path, os.O_RDONLY)
    with os.fdopen(fd, encoding="utf-8") as fh:
        return fh.read()


def append_nofollow(path: Path, line: str) -> None:
    fd = _open_nofollow(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    with os.fdopen(fd, "a", encoding="utf-8") as fh:
        fh.write(line)


class Interrupted(Exception):
    """SIGTERM/SIGINT during the sweep: stop, leave the cluster known, keep the state resumable."""


def sweep_dirs(root: Path) -> list[Path]:
    """Sweep directories under ``root``, oldest first (by their state's creation time); links are skipped."""
    found = []
    for p in root.glob("*"):
        if p.is_dir() and not p.is_symlink() and (p / STATE_FILE).is_file() and not (p / STATE_FILE).is_symlink():
            found.append(p)
    return sorted(found, key=lambda p: ((p / STATE_FILE).stat().st_mtime, p.name))


def latest_sweep_dir(root: Path) -> Path | None:
    dirs = sweep_dirs(root)
    return dirs[-1] if dirs else None


def unrestored(root: Path, exclude: Path | None = None) -> list[SweepState]:
    """Earlier sweeps killed before they put the cluster back (their pre-sweep state is still pending)."""
    out = []
    for d in sweep_dirs(root):
        if d == exclude:
            continue
        try:
            state = SweepState.load(d / STATE_FILE)
        except (OSError, ValueError, KeyError):
            continue
        if state.needs_restore:
            out.append(state)
    return out


class _Signals:
    """SIGTERM/SIGINT during the sweep: remembered, and raised as KeyboardInterrupt where the sweep is, so an
    in-process start cleans up what it put up (as for Ctrl-C); the loop then stops with ``Interrupted``."""

    def __init__(self) -> None:
        self.name = ""

    def __enter__(self) -> _Signals:
        self.previous = {s: signal.signal(s, self.on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def on_signal(self, signum, _frame) -> None:  # noqa: ANN001
        self.name = self.name or signal.Signals(signum).name
        raise KeyboardInterrupt

    def check(self) -> None:
        if self.name:
            raise Interrupted(self.name)

    def __exit__(self, *exc) -> None:  # noqa: ANN002
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def run_sweep(state: SweepState, steps: ClusterSteps, variants: dict[str, dict[str, str]], *, resume: bool,
              timeout_s: float, log: Callable[[str], None]) -> bool:
    """Run every cell not already finished; returns True when every cell ended SUCCESS or SKIPPED."""
    pending = resume and state.needs_restore  # killed before it put the cluster back: do it this time
    switched = False
    try:
        with _Signals() as signals:
            try:
                switched = _run_cells(state, steps, variants, resume=resume, timeout_s=timeout_s, log=log,
                                      signals=signals)
            except KeyboardInterrupt:
                switched = True
                raise Interrupted(signals.name or "SIGINT") from None
            signals.check()
    except Interrupted as exc:
        log(f"interrupted by {exc}: the state is kept; run again with --resume")
        switched = True
        raise
    finally:
        if switched or pending:
            leave_known_state(state, steps, log)
        elif state.needs_restore:
            state.mark_restored("untouched")
    return all(state.get(c) in DONE_STATUSES for c in state.cells)


def _run_cells(state: SweepState, steps: ClusterSteps, variants: dict[str, dict[str, str]], *, resume: bool,
               timeout_s: float, log: Callable[[str], None], signals: _Signals) -> bool:
    """The cells, in plan order; returns whether the cluster was touched."""
    switched = False
    current: tuple[str, str, str] | None = None
    start_failed: dict[tuple[str, str, str], str] = {}
    skip: dict[tuple[str, str, str], str] = {}
    for cell in state.cells:
        if resume and state.get(cell) in DONE_STATUSES:
            log(f"{cell.key}: {state.get(cell)} earlier, skipped (--resume)")
            continue
        pair = cell.switch_key
        if pair not in skip:
            skip[pair] = steps.skip_reason(cell)
        if skip[pair]:
            state.mark(cell, SKIPPED, skip[pair])
            log(f"{cell.key}: SKIPPED: {skip[pair]}")
            continue
        if pair in start_failed:
            state.mark(cell, START_FAILED, start_failed[pair])
            log(f"{cell.key}: START_FAILED (the switch already failed): {start_failed[pair]}")
            continue
        state.mark(cell, RUNNING)
        overrides = {} if cell.recipe else variants.get(cell.variant, {})
        if pair != current:
            log(f"switching to recipe {cell.recipe} ({cell.recipe_id})" if cell.recipe else
                f"switching to {cell.model} with variant {cell.variant} {overrides or ''}".rstrip())
            switched = True
            r = steps.switch(cell, overrides)
            signals.check()  # a signal during the switch ends the sweep, it is not a START_FAILED cell
            if r.status != SUCCESS:
                start_failed[pair] = r.message
                current = None
                state.mark(cell, START_FAILED, r.message)
                log(f"{cell.key}: START_FAILED: {r.message}")
                continue
            current = pair
        log(f"{cell.key}: benchmarking (profile {cell.profile})")
        r = steps.bench(cell, overrides, state.path.parent / "results", timeout_s)
        signals.check()
        state.mark(cell, r.status, r.message, r.result_dir)
        log(f"{cell.key}: {r.status}{': ' + r.message if r.message else ''}")
        if r.status == TIMEOUT:
            current = None  # the engine may be wedged: switch (restart) before the next cell
    return switched


def leave_known_state(state: SweepState, steps: ClusterSteps, log: Callable[[str], None]) -> None:
    """Back to the pre-sweep config and running state; if that fails, stopped. Signals wait until done."""
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        log("restoring the configured model and options")
        r = steps.restore(state.pre)
        if r.status == SUCCESS:
            log("cluster restored to the configured model" if state.pre.get("serving", True)
                else "cluster stopped again (nothing was serving before the sweep)")
            if state.pre:
                state.mark_restored("restored")
            return
        log(f"restore failed ({r.message}); stopping the cluster so it is in a known state")
        s = steps.stop()
        log("cluster stopped" if s.status == SUCCESS else f"stopping failed too: {s.message}")
        if state.pre and s.status == SUCCESS:
            state.mark_restored("stopped")
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def summary(state: SweepState) -> list[list[str]]:
    return [[c.model, c.variant, c.profile, state.get(c) or "NOT_RUN", state.status.get(c.key, {}).get("message", "")]
            for c in state.cells]


def open_log(directory: Path) -> Callable[[str], None]:
    """A logger that appends timestamped lines to sweep.log (never through a link) and echoes them to stderr."""
    import sys

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "sweep.log"

    def log(line: str) -> None:
        append_nofollow(path, f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} {line}\n")
        sys.stderr.write(f"benchmark_all: {line}\n")
        sys.stderr.flush()

    return log
