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

    def skip_reason(self, cell):
        return self.skip.get(cell.recipe or cell.model, "")

    def switch(self, cell, overrides):
        model = cell.recipe or cell.model
        self.calls.append(("switch", model, dict(overrides)))
        if (model, next((k for k, v in VARIANTS.items() if v == overrides), "")) in self.switch_fail:
            return StepResult(START_FAILED, "engine exited")
        return StepResult(SUCCESS)

    def bench(self, cell, overrides, out_dir, timeout_s):
        self.calls.append(("bench", cell.key))
        if self.on_bench:
            self.on_bench(cell)
        return StepResult(self.bench_status.get(cell.key, SUCCESS), "", str(out_dir))

    def restore(self, pre):
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
    assert len(lines) == 5 and lines[0].startswith("a|tier1-off|smoke: switch --skip-download a with "
                                                   "ENABLE_PREFIX_CACHING=false")
    assert "back to the pre-sweep config and running state" in lines[-1]


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


# ---- the pre-sweep state, plain names, no writes through planted links -------------------------------


def test_the_pre_sweep_state_is_on_disk_before_the_first_change(tmp_path):
    config = tmp_path / "config.local.env"
    config.write_bytes(b"MODEL=orig\n# keep me\n")
    state = SweepState.new(tmp_path / "sweep", sweep.plan_cells(["m1"], ["off"], ["p1"]),
                           sweep.record_pre(config, ["orig"]))
    seen = {}

    class Checking(FakeSteps):
        def switch(self, cell, overrides):
            seen.update(SweepState.load(state.path).pre)  # what a kill -9 right now would leave
            return super().switch(cell, overrides)

    run(state, Checking())
    assert seen["serving"] is True and seen["served"] == ["orig"] and seen["restored"] is False
    assert sweep.base64.b64decode(seen["config_b64"]) == b"MODEL=orig\n# keep me\n"
    assert SweepState.load(state.path).pre["restored"] is True


def test_put_back_config_restores_the_exact_bytes_or_the_absence(tmp_path):
    config = tmp_path / "config.local.env"
    config.write_bytes(b"MODEL=orig\n")
    pre = sweep.record_pre(config, [])
    config.write_text("MODEL=swept\n")
    assert sweep.put_back_config(pre) and config.read_bytes() == b"MODEL=orig\n"
    assert oct(config.stat().st_mode & 0o777) == "0o600"
    assert not sweep.put_back_config(pre)
    missing = sweep.record_pre(tmp_path / "none.env", [])
    (tmp_path / "none.env").write_text("MODEL=x\n")
    assert sweep.put_back_config(missing) and not (tmp_path / "none.env").exists()


def test_a_resumed_sweep_killed_before_restoring_restores_even_with_nothing_left_to_run(tmp_path):
    state = new_state(tmp_path, models=("m1",), variants=("off",), profiles=("p1",))
    state.pre = {"serving": False, "restored": False}
    state.mark(state.cells[0], SUCCESS)  # it finished the cell, then died by kill -9 before restoring
    steps = FakeSteps()
    ok, _ = run(SweepState.load(state.path), steps, resume=True)
    assert ok and steps.calls == [("restore",)]
    assert SweepState.load(state.path).pre["restored"] is True


def test_unrestored_finds_killed_sweeps_only(tmp_path):
    root = tmp_path / "sweeps"
    killed = SweepState.new(root / "a", sweep.plan_cells(["m"], ["off"], ["p"]), {"serving": True, "restored": False})
    SweepState.new(root / "b", sweep.plan_cells(["m"], ["off"], ["p"]), {"serving": True, "restored": True})
    assert [s.path for s in sweep.unrestored(root)] == [killed.path]
    assert sweep.unrestored(root, exclude=root / "a") == []


@pytest.mark.parametrize("name", ["../../..", "..", ".hidden", "a/b", "x" * 101, ""])
def test_sweep_names_must_be_plain(name):
    from sparkhelpers.errors import UsageError

    with pytest.raises(UsageError, match="not a plain name"):
        sweep.plain_name(name)


def test_name_escaping_the_sweeps_dir_is_refused():
    r = script("--yes", "--name", "../../..", "--models", "m1")
    assert r.returncode == 2 and "not a plain name" in r.stderr
    assert not (Path(os.environ["RESULTS_DIR"]).parent / "sweep-state.json").exists()


def test_planted_symlinks_are_refused_and_never_written_through(tmp_path):
    from sparkhelpers.errors import SparkError

    results = Path(os.environ["RESULTS_DIR"])
    outside = tmp_path / "outside"
    outside.mkdir()
    (results / "sweeps" / "t").mkdir(parents=True)
    (results / "sweeps" / "t" / "sweep.log").symlink_to(outside / "passwd")
    log = sweep.open_log(results / "sweeps" / "t")
    with pytest.raises(SparkError, match="is a symlink"):
        log("hello")
    (results / "sweeps" / "u").symlink_to(outside)  # a whole sweep directory planted as a link
    r = script("--yes", "--name", "u", "--models", "m1", "--profile", "smoke")
    assert r.returncode == 1 and "is a symlink" in r.stderr
    (results / "sweeps" / "v").mkdir()
    (results / "sweeps" / "v" / "results").symlink_to(outside)
    with pytest.raises(SparkError, match="is a symlink"):
        sweep.check_no_symlinks(results / "sweeps" / "v" / "results" / "x.json", results)
    target = outside / "matrix.md"
    (results / "sweeps" / "v" / "matrix.md").symlink_to(target)
    sweep.write_text_nofollow(results / "sweeps" / "v" / "matrix.md", "new")  # replaces the link itself
    assert not target.exists() and not (results / "sweeps" / "v" / "matrix.md").is_symlink()
    assert list(outside.iterdir()) == []


def test_models_by_number_and_by_node_count():
    r = script("--dry-run", "--models", "1,3", "--profile", "smoke")
    assert r.returncode == 0, r.stderr
    assert [ln.split("|")[0] for ln in r.stdout.splitlines()[:-1]] == ["smollm2-135m", "qwen3-8b"]
    single = script("--dry-run", "--single-node", "--profile", "smoke")
    multi = script("--dry-run", "--multi-node", "--profile", "smoke")
    assert single.returncode == 0 and multi.returncode == 0, single.stderr + multi.stderr
    single_models = {ln.split("|")[0] for ln in single.stdout.splitlines()[:-1]}
    multi_models = {ln.split("|")[0] for ln in multi.stdout.splitlines()[:-1]}
    assert "smollm2-135m" in single_models and "llama-3.1-70b" in multi_models
    assert not single_models & multi_models
    r = script("--dry-run", "--multi-node", "--models", "qwen3-8b")
    assert r.returncode == 2 and "no multi-node model among qwen3-8b" in r.stderr
    r = script("--dry-run", "--single-node", "--multi-node")
    assert r.returncode == 2 and "exclude each other" in r.stderr


def test_skip_token_skips_gated_models(tmp_path, monkeypatch):
    from sparkhelpers.bench.sweep_steps import InProcessSteps

    monkeypatch.setenv("HF_TOKEN", "hf_test_token_value")
    cfg = load_config()
    with_token = InProcessSteps(cfg, log=lambda _m: None)
    skipping = InProcessSteps(cfg, log=lambda _m: None, skip_gated=True)
    assert with_token.skip_reason(sweep.SweepCell("llama-3.1-70b", "baseline", "smoke")) == ""
    assert skipping.skip_reason(sweep.SweepCell("llama-3.1-70b", "baseline", "smoke")) == "gated model (--skip-token)"
    assert skipping.skip_reason(sweep.SweepCell("smollm2-135m", "baseline", "smoke")) == ""
