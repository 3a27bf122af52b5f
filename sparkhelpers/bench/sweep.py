"""The benchmark sweep (benchmark_all.sh): models x configuration variants x profiles, safe under cron.

Cells run model by model, variant by variant (one cluster switch per model x variant, every profile on
it). Each cell ends SUCCESS, SKIPPED, START_FAILED, BENCH_FAILED or TIMEOUT; the state file (written
atomically after every change) makes the sweep resumable: ``--resume`` skips cells that ended SUCCESS or
SKIPPED and runs the rest again, including the one a kill interrupted. Whatever happens (failure,
timeout, SIGTERM), the cluster is put back to the configured model without variant overrides, or
stopped when that fails. The cluster steps are injected (``ClusterSteps``), so the logic is tested
without a cluster.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from sparkhelpers.bench import results

SUCCESS, SKIPPED, START_FAILED, BENCH_FAILED, TIMEOUT = "SUCCESS", "SKIPPED", "START_FAILED", "BENCH_FAILED", "TIMEOUT"
RUNNING = "RUNNING"
DONE_STATUSES = {SUCCESS, SKIPPED}
STATE_FILE = "sweep-state.json"


@dataclass(frozen=True)
class SweepCell:
    model: str
    variant: str
    profile: str

    @property
    def key(self) -> str:
        return f"{self.model}|{self.variant}|{self.profile}"


def plan_cells(models: list[str], variants: list[str], profiles: list[str]) -> list[SweepCell]:
    """Model-major, then variant (one cluster switch each), then profile."""
    return [SweepCell(m, v, p) for m in models for v in variants for p in profiles]


@dataclass
class StepResult:
    status: str  # SUCCESS or one of the failure statuses
    message: str = ""
    result_dir: str = ""


class ClusterSteps(Protocol):
    def skip_reason(self, model: str) -> str: ...  # non-empty: the model cannot run here (SKIPPED)

    def switch(self, model: str, overrides: dict[str, str]) -> StepResult: ...  # serve model with the variant

    def bench(self, cell: SweepCell, overrides: dict[str, str], out_dir: Path, timeout_s: float) -> StepResult: ...

    def restore(self) -> StepResult: ...  # back to the configured model and options

    def stop(self) -> StepResult: ...


@dataclass
class SweepState:
    path: Path
    created: str
    cells: list[SweepCell]
    status: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def new(cls, directory: Path, cells: list[SweepCell]) -> SweepState:
        state = cls(directory / STATE_FILE, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), cells)
        state.save()
        return state

    @classmethod
    def load(cls, path: Path) -> SweepState:
        data = json.loads(path.read_text(encoding="utf-8"))
        cells = [SweepCell(**c) for c in data["plan"]]
        return cls(path, data["created"], cells, data.get("cells", {}))

    def save(self) -> None:
        results.write_json_atomic(self.path, {"schema": "sparkhelpers.bench.sweep.v1", "created": self.created,
                                              "plan": [asdict(c) for c in self.cells], "cells": self.status})

    def mark(self, cell: SweepCell, status: str, message: str = "", result_dir: str = "") -> None:
        entry = self.status.setdefault(cell.key, {})
        entry.update(status=status, message=message, at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        if result_dir:
            entry["result_dir"] = result_dir
        self.save()

    def get(self, cell: SweepCell) -> str:
        return self.status.get(cell.key, {}).get("status", "")


class Interrupted(Exception):
    """SIGTERM/SIGINT during the sweep: stop, leave the cluster known, keep the state resumable."""


def latest_sweep_dir(root: Path) -> Path | None:
    dirs = sorted(p for p in root.glob("*") if (p / STATE_FILE).is_file())
    return dirs[-1] if dirs else None


def run_sweep(state: SweepState, steps: ClusterSteps, variants: dict[str, dict[str, str]], *, resume: bool,
              timeout_s: float, log: Callable[[str], None]) -> bool:
    """Run every cell not already finished; returns True when every cell ended SUCCESS or SKIPPED."""
    def on_signal(signum, _frame):
        raise Interrupted(signal.Signals(signum).name)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    switched = False
    try:
        current: tuple[str, str] | None = None
        start_failed: dict[tuple[str, str], str] = {}
        skip: dict[str, str] = {}
        for cell in state.cells:
            if resume and state.get(cell) in DONE_STATUSES:
                log(f"{cell.key}: {state.get(cell)} earlier, skipped (--resume)")
                continue
            if cell.model not in skip:
                skip[cell.model] = steps.skip_reason(cell.model)
            if skip[cell.model]:
                state.mark(cell, SKIPPED, skip[cell.model])
                log(f"{cell.key}: SKIPPED: {skip[cell.model]}")
                continue
            pair = (cell.model, cell.variant)
            if pair in start_failed:
                state.mark(cell, START_FAILED, start_failed[pair])
                log(f"{cell.key}: START_FAILED (the switch already failed): {start_failed[pair]}")
                continue
            state.mark(cell, RUNNING)
            overrides = variants.get(cell.variant, {})
            if pair != current:
                log(f"switching to {cell.model} with variant {cell.variant} {overrides or ''}".rstrip())
                switched = True
                r = steps.switch(cell.model, overrides)
                if r.status != SUCCESS:
                    start_failed[pair] = r.message
                    current = None
                    state.mark(cell, START_FAILED, r.message)
                    log(f"{cell.key}: START_FAILED: {r.message}")
                    continue
                current = pair
            out_dir = state.path.parent / "results"
            log(f"{cell.key}: benchmarking (profile {cell.profile})")
            r = steps.bench(cell, overrides, out_dir, timeout_s)
            state.mark(cell, r.status, r.message, r.result_dir)
            log(f"{cell.key}: {r.status}{': ' + r.message if r.message else ''}")
            if r.status == TIMEOUT:
                current = None  # the engine may be wedged: switch (restart) before the next cell
    except Interrupted as exc:
        log(f"interrupted by {exc}: the state is kept; run again with --resume")
        raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if switched:
            leave_known_state(steps, log)
    return all(state.get(c) in DONE_STATUSES for c in state.cells)


def leave_known_state(steps: ClusterSteps, log: Callable[[str], None]) -> None:
    """Back to the configured model and options; if that fails, stopped. Signals wait until this is done."""
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        log("restoring the configured model and options")
        r = steps.restore()
        if r.status == SUCCESS:
            log("cluster restored to the configured model")
            return
        log(f"restore failed ({r.message}); stopping the cluster so it is in a known state")
        s = steps.stop()
        log("cluster stopped" if s.status == SUCCESS else f"stopping failed too: {s.message}")
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def summary(state: SweepState) -> list[list[str]]:
    return [[c.model, c.variant, c.profile, state.get(c) or "NOT_RUN", state.status.get(c.key, {}).get("message", "")]
            for c in state.cells]


def open_log(directory: Path) -> Callable[[str], None]:
    """A logger that appends timestamped lines to sweep.log and echoes them to stderr."""
    import sys

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "sweep.log"

    def log(line: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        with path.open("a", encoding="utf-8") as fh:
            fh.write(f"{stamp} {line}\n")
        sys.stderr.write(f"benchmark_all: {line}\n")
        sys.stderr.flush()

    return log


class ScriptSteps:
    """The real steps: switch_model.sh (restart with the variant's keys in the environment, which beats
    config.local.env), an in-process profile run, and the configured state put back at the end."""

    def __init__(self, cfg, runner, *, log: Callable[[str], None], api_key: str = "", download: bool = False) -> None:
        from sparkhelpers.config import local_file, spark_home

        self.cfg, self.runner, self.log, self.api_key, self.download = cfg, runner, log, api_key, download
        self.home = spark_home()
        self.local = local_file()
        self.saved_local = self.local.read_bytes() if self.local.exists() else None
        self.was_serving = self._serving()

    def _serving(self) -> bool:
        import asyncio

        from sparkhelpers.bench.current import configured_url
        from sparkhelpers.bench.run import fetch_models
        from sparkhelpers.errors import SparkError

        try:
            return bool(asyncio.run(fetch_models(configured_url(self.cfg), self.api_key, timeout_s=5)))
        except SparkError:
            return False

    def _script(self, name: str, args: list[str], env: dict[str, str] | None, timeout: float) -> StepResult:
        # own_group: on SIGTERM or a timeout the script's children (a `config set`, a start) end too,
        # before the sweep puts config.local.env back.
        r = self.runner.run([str(self.home / name), *args], env=env, timeout=timeout, own_group=True)
        for line in (r.stdout + r.stderr).splitlines()[-40:]:
            self.log(f"  {name}: {line}")
        if r.ok:
            return StepResult(SUCCESS)
        status = TIMEOUT if r.returncode == 124 else START_FAILED
        return StepResult(status, f"{name} exit {r.returncode}: {r.last_line}"[:300])

    def skip_reason(self, model: str) -> str:
        from sparkhelpers.errors import SparkError
        from sparkhelpers.models.catalog import resolve_model

        try:
            spec = resolve_model(self.cfg, model)
        except SparkError as exc:
            return f"unknown model: {exc.message}"
        if getattr(spec, "gated", False) and not (self.cfg.get("HF_TOKEN") or self.cfg.get("HF_TOKEN_FILE")):
            return "gated model and no HF_TOKEN / HF_TOKEN_FILE configured"
        return ""

    def switch(self, model: str, overrides: dict[str, str]) -> StepResult:
        args = ([] if self.download else ["--skip-download"]) + [model]
        timeout = self.cfg.get_float("START_TIMEOUT", 1800.0) + 600
        r = self._script("switch_model.sh", args, overrides, timeout)
        if r.status == TIMEOUT:
            r.status = START_FAILED
        if r.status == SUCCESS and not self._serving():
            return StepResult(START_FAILED, "switch_model.sh succeeded but the API does not answer /v1/models")
        return r

    def bench(self, cell: SweepCell, overrides: dict[str, str], out_dir: Path, timeout_s: float) -> StepResult:
        from sparkhelpers.bench import current, profiles
        from sparkhelpers.config import load_config
        from sparkhelpers.errors import SparkError

        cfg = load_config(flags=overrides)  # switch_model.sh wrote MODEL; the variant's keys on top
        base_url = current.configured_url(cfg)
        try:
            prof = profiles.get(cell.profile, cfg.get("BENCH_PROFILES_FILE"))
            model = current.resolve_model(base_url, self.api_key, cfg)
            outcomes, timed_out = current.run_profile(cfg, prof, base_url=base_url, model=model, out_dir=out_dir,
                                                      variant=cell.variant, api_key=self.api_key,
                                                      timeout_s=timeout_s, echo=self.log,
                                                      target_extra={"sweep_model": cell.model})
        except SparkError as exc:
            return StepResult(BENCH_FAILED, exc.message)
        folder = str(outcomes[0].path.parent) if outcomes and outcomes[0].path else ""
        if timed_out:
            return StepResult(TIMEOUT, f"BENCH_TIMEOUT ({timeout_s:g} s) ran out after {len(outcomes)} run(s)", folder)
        bad = current.failures(outcomes)
        if bad:
            return StepResult(BENCH_FAILED, f"{len(bad)} of {len(outcomes)} runs failed: {bad[0]}", folder)
        return StepResult(SUCCESS, f"{len(outcomes)} run(s)", folder)

    def restore(self) -> StepResult:
        if self.saved_local is None:
            if self.local.exists():
                self.local.unlink()
        elif not self.local.exists() or self.local.read_bytes() != self.saved_local:
            from sparkhelpers.config import _write_private

            _write_private(self.local, self.saved_local.decode("utf-8"))
        if not self.was_serving:
            return self.stop()
        return self._script("start_cluster.sh", ["--replace"], None, self.cfg.get_float("START_TIMEOUT", 1800.0) + 600)

    def stop(self) -> StepResult:
        return self._script("stop_cluster.sh", [], None, 600)
