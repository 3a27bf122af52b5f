"""The sweep logic (benchmark_all.sh) with the cluster steps injected: plan, statuses, resume, known end state."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from sparkhelpers.bench import sweep
from sparkhelpers.bench.sweep import (
    BENCH_FAILED,
    RUNNING,
    SKIPPED,
    START_FAILED,
    SUCCESS,
    TIMEOUT,
    StepResult,
    SweepState,
)
from sparkhelpers.config import load_config
from sparkhelpers.locking import HELD_ENV, cluster_lock

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {"off": {"ENABLE_PREFIX_CACHING": "false"}, "on": {"ENABLE_PREFIX_CACHING": "true"}}


class FakeSteps:
    """Records every call; outcomes are scripted per (model, variant) or cell key."""

    def __init__(self, switch_fail=(), bench=None, skip=None, restore_ok=True, on_bench=None):
        self.calls: list[tuple] = []
        self.switch_fail, self.bench_status, self.skip = set(switch_fail), bench or {}, skip or {}
        self.restore_ok, self.on_bench = restore_ok, on_bench

    def skip_reason(self, model):
        return self.skip.get(model, "")

    def switch(self, model, overrides):
        self.calls.append(("switch", model, dict(overrides)))
        if (model, next((k for k, v in VARIANTS.items() if v == overrides), "")) in self.switch_fail:
            return StepResult(START_FAILED, "engine exited")
        return StepResult(SUCCESS)

    def bench(self, cell, overrides, out_dir, timeout_s):
        self.calls.append(("bench", cell.key))
        if self.on_bench:
            self.on_bench(cell)
        return StepResult(self.bench_status.get(cell.key, SUCCESS), "", str(out_dir))

    def restore(self):
        self.calls.append(("restore",))
        return StepResult(SUCCESS if self.restore_ok else START_FAILED, "" if self.restore_ok else "no")

    def stop(self):
        self.calls.append(("stop",))
        return StepResult(SUCCESS)


def new_state(tmp_path, models=("m1", "m2"), variants=("off", "on"), profiles=("p1", "p2")) -> SweepState:
    return SweepState.new(tmp_path / "sweep", sweep.plan_cells(list(models), list(variants), list(profiles)))


def run(state, steps, resume=False):
    lines: list[str] = []
    ok = sweep.run_sweep(state, steps, VARIANTS, resume=resume, timeout_s=60, log=lines.append)
    return ok, lines


def test_plan_is_model_then_variant_then_profile():
    cells = sweep.plan_cells(["a", "b"], ["off", "on"], ["p1", "p2"])
    assert [c.key for c in cells[:3]] == ["a|off|p1", "a|off|p2", "a|on|p1"] and len(cells) == 8


def test_all_succeed_one_switch_per_model_variant_and_restore_once(tmp_path):
    steps = FakeSteps()
    ok, _ = run(new_state(tmp_path), steps)
    assert ok
    switches = [c for c in steps.calls if c[0] == "switch"]
    assert [(c[1], c[2]) for c in switches] == [("m1", VARIANTS["off"]), ("m1", VARIANTS["on"]),
                                                ("m2", VARIANTS["off"]), ("m2", VARIANTS["on"])]
    assert steps.calls[-1] == ("restore",) and steps.calls.count(("restore",)) == 1
    state = SweepState.load(tmp_path / "sweep" / sweep.STATE_FILE)
    assert all(state.get(c) == SUCCESS for c in state.cells)


def test_statuses_start_failed_bench_failed_timeout_skipped(tmp_path):
    steps = FakeSteps(switch_fail={("m1", "on")}, bench={"m2|off|p1": BENCH_FAILED, "m2|off|p2": TIMEOUT},
                      skip={"m3": "gated model and no HF_TOKEN"})
    state = new_state(tmp_path, models=("m1", "m2", "m3"))
    ok, lines = run(state, steps)
    got = {c.key: state.get(c) for c in state.cells}
    assert not ok
    assert got["m1|off|p1"] == SUCCESS and got["m1|on|p1"] == got["m1|on|p2"] == START_FAILED
    assert got["m2|off|p1"] == BENCH_FAILED and got["m2|off|p2"] == TIMEOUT and got["m2|on|p1"] == SUCCESS
    assert got["m3|off|p1"] == SKIPPED and state.status["m3|off|p1"]["message"].startswith("gated")
    assert sum(1 for c in steps.calls if c == ("switch", "m1", VARIANTS["on"])) == 1  # not retried per profile
    assert any("START_FAILED" in ln for ln in lines)


def test_timeout_forces_a_fresh_switch_before_the_next_cell(tmp_path):
    steps = FakeSteps(bench={"m1|off|p1": TIMEOUT})
    run(new_state(tmp_path, models=("m1",), variants=("off",)), steps)
    assert [c[0] for c in steps.calls] == ["switch", "bench", "switch", "bench", "restore"]


def test_only_skipped_cells_do_not_touch_the_cluster(tmp_path):
    steps = FakeSteps(skip={"m1": "unknown model"})
    ok, _ = run(new_state(tmp_path, models=("m1",)), steps)
    assert ok and steps.calls == []


def test_restore_failure_stops_the_cluster(tmp_path):
    steps = FakeSteps(restore_ok=False)
    run(new_state(tmp_path, models=("m1",), variants=("off",), profiles=("p1",)), steps)
    assert steps.calls[-2:] == [("restore",), ("stop",)]


def test_resume_skips_finished_cells_and_reruns_the_rest(tmp_path):
    state = new_state(tmp_path)
    first = FakeSteps(bench={"m1|on|p2": BENCH_FAILED})
    run(state, first)
    state.mark(state.cells[-1], RUNNING)  # as if killed mid-cell
    again = FakeSteps()
    ok, lines = run(SweepState.load(state.path), again, resume=True)
    assert ok
    assert [c[1] for c in again.calls if c[0] == "bench"] == ["m1|on|p2", "m2|on|p2"]
    assert sum("skipped (--resume)" in ln for ln in lines) == 6


def test_sigterm_mid_cell_restores_and_stays_resumable(tmp_path):
    state = new_state(tmp_path, models=("m1",), variants=("off", "on"), profiles=("p1",))

    def kill_on_second(cell):
        if cell.variant == "on":
            os.kill(os.getpid(), signal.SIGTERM)

    steps = FakeSteps(on_bench=kill_on_second)
    with pytest.raises(sweep.Interrupted):
        run(state, steps)
    assert steps.calls[-1] == ("restore",)
    saved = SweepState.load(state.path)
    assert [saved.get(c) for c in saved.cells] == [SUCCESS, RUNNING]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))
    resumed = FakeSteps()
    ok, _ = run(saved, resumed, resume=True)
    assert ok and [c for c in resumed.calls if c[0] == "bench"] == [("bench", "m1|on|p1")]


def script(*args, env=None, stdin=subprocess.DEVNULL):
    return subprocess.run([str(ROOT / "benchmark_all.sh"), *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})}, stdin=stdin)


def test_refuses_without_yes_when_not_on_a_terminal():
    r = script("--models", "m1")
    assert r.returncode == 2 and "--yes" in r.stderr and "stdin is not a terminal" in r.stderr


def test_dry_run_prints_the_plan():
    r = script("--dry-run", "--models", "a,b", "--variants", "tier1-off,tier1-on", "--profile", "smoke")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 5 and lines[0].startswith("a|tier1-off|smoke: ENABLE_PREFIX_CACHING=false")
    assert "switch_model.sh --skip-download a" in lines[0] and "restore config.local.env" in lines[-1]


def test_unknown_variant_and_nothing_to_resume_are_clear():
    r = script("--yes", "--variants", "nope")
    assert r.returncode == 2 and "unknown profile or variant: nope" in r.stderr
    r = script("--yes", "--resume")
    assert r.returncode == 1 and "no sweep to resume" in r.stderr


def test_refuses_while_another_command_holds_the_lock():
    with cluster_lock(load_config(), what="start_cluster.sh"):
        env = {k: v for k, v in os.environ.items() if k != HELD_ENV}
        r = subprocess.run([str(ROOT / "benchmark_all.sh"), "--yes", "--models", "m1", "--profile", "smoke"],
                           capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)
    assert r.returncode == 1 and "the cluster is busy" in r.stderr and "start_cluster.sh" in r.stderr
