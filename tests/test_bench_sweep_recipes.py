"""The recipe sweep (benchmark_all.sh --recipes), fast: the plan (every recipe loaded and hashed before
anything changes), --dry-run per recipe with no host asked, the refusals, one switch per recipe with no
variant keys, a recipe changed since the plan, and the restore of a configured RECIPE."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_bench_sweep import FakeSteps, run

from sparkhelpers.bench import sweep, sweep_steps
from sparkhelpers.bench.sweep import SUCCESS, SweepState
from sparkhelpers.config import load_config

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "vllm/vllm-openai:v0.19.0"


def recipe(directory: Path, name: str, seqs: int, nodes: int = 1, extra: str = "") -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""\
        recipe: 1
        name: {name}
        model: Qwen/Qwen3-0.6B
        image: {IMAGE}
        nodes: {nodes}
        engine_args:
          max_num_seqs: {seqs}
        """) + extra)
    return path


@pytest.fixture
def recipes(tmp_path, monkeypatch):
    """Two recipes of one model that differ in one served value: one on RECIPE_PATH, one given as a file."""
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    recipe(shelf, "tiny-a", 2)
    other = recipe(tmp_path, "tiny-b", 4)
    monkeypatch.setenv("RECIPE_PATH", str(shelf))
    return "tiny-a", str(other)


def script(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(ROOT / "benchmark_all.sh"), *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)


def logging_ssh(tmp_path: Path) -> dict:
    """PATH with an ssh/rsync/docker that log each call: a dry run must call none of them."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    for tool in ("ssh", "rsync", "docker", "scp"):
        (bin_dir / tool).write_text(f"#!/bin/sh\necho {tool} \"$@\" >>{log}\nexit 1\n")
        (bin_dir / tool).chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "WORKER_HOST": "spark2", "CALLS_LOG": str(log)}


def test_dry_run_shows_each_recipe_id_layout_and_serve_command_and_asks_no_host(recipes, tmp_path):
    env = logging_ssh(tmp_path)
    r = script("--dry-run", "--recipes", ",".join(recipes), "--profile", "smoke,quick", env=env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    heads = [ln for ln in lines if ln.startswith("recipe ")]
    assert len(heads) == 2
    ids = [ln.split(" id ", 1)[1].split()[0] for ln in heads]
    assert ids[0] != ids[1] and all(i.startswith("qwen3-0.6b@vllm@") for i in ids)
    assert "1 node(s), TP 1 x PP 1, launch auto" in heads[0]
    serves = [ln for ln in lines if ln.startswith("  serve: vllm serve Qwen/Qwen3-0.6B")]
    assert "--max-num-seqs 2" in serves[0] and "--max-num-seqs 4" in serves[1]
    cells = [ln for ln in lines if "|recipe:" in ln]
    assert [c.split(":", 2)[0] + ":" + c.split(":", 2)[1] for c in cells] == [
        "Qwen/Qwen3-0.6B|recipe:tiny-a|smoke", "Qwen/Qwen3-0.6B|recipe:tiny-a|quick",
        "Qwen/Qwen3-0.6B|recipe:tiny-b|smoke", "Qwen/Qwen3-0.6B|recipe:tiny-b|quick"]
    assert "switch --skip-download --recipe tiny-a; bench current --profile smoke" in cells[0]
    assert "back to the pre-sweep config and running state" in lines[-1]
    assert not Path(env["CALLS_LOG"]).exists(), Path(env["CALLS_LOG"]).read_text()


def test_dry_run_says_when_a_recipe_needs_more_nodes_than_the_cluster_has(tmp_path):
    big = recipe(tmp_path, "tiny-quad", 2, nodes=4)
    r = script("--dry-run", "--recipes", str(big), "--profile", "smoke")
    assert r.returncode == 0, r.stderr
    assert "would be SKIPPED" in r.stdout and "needs 4 nodes; this cluster has 1" in r.stdout


@pytest.mark.parametrize("extra,message", [
    ("  no_such_flag: 1\n", "has no flag --no-such-flag"),
    ("env:\n  HF_TOKEN: abc\n", "may not carry a secret"),
])
def test_a_bad_recipe_refuses_the_whole_sweep_before_anything(recipes, tmp_path, extra, message):
    bad = recipe(tmp_path, "tiny-bad", 2, extra=extra)
    r = script("--yes", "--name", "bad", "--recipes", f"{recipes[0]},{bad}", "--profile", "smoke")
    assert r.returncode == 1 and message in r.stderr, r.stderr
    assert len([ln for ln in r.stderr.splitlines() if ln.startswith("sparkhelpers: ") and "fix" not in ln]) == 1
    assert not (Path(os.environ["RESULTS_DIR"]) / "sweeps" / "bad").exists()  # nothing written, nothing run


def test_recipes_refuse_variants_duplicate_names_and_node_filters(recipes, tmp_path):
    r = script("--dry-run", "--recipes", recipes[0], "--variants", "tier1-on")
    assert r.returncode == 2 and "a recipe fixes every served value" in r.stderr and "one recipe per variant" in \
        r.stderr
    twin = tmp_path / "twin"
    twin.mkdir()
    recipe(twin, "tiny-a", 8)
    r = script("--dry-run", "--recipes", f"{recipes[0]},{twin / 'tiny-a.yaml'}")
    assert r.returncode == 2 and "are both named tiny-a" in r.stderr
    r = script("--dry-run", "--multi-node", "--recipes", ",".join(recipes))
    assert r.returncode == 2 and "no multi-node recipe among" in r.stderr
    r = script("--dry-run", "--recipes", "no-such-recipe")
    assert r.returncode == 1 and "no recipe file or preset named no-such-recipe" in r.stderr


def test_models_and_recipes_in_one_sweep_variants_apply_to_models_only(recipes):
    r = script("--dry-run", "--models", "qwen3-0.6b", "--variants", "tier1-off,tier1-on", "--recipes", recipes[0],
               "--profile", "smoke")
    assert r.returncode == 0, r.stderr
    keys = [ln.split(":", 1)[0] for ln in r.stdout.splitlines() if "|" in ln.split(":", 1)[0]]
    assert keys[:2] == ["qwen3-0.6b|tier1-off|smoke", "qwen3-0.6b|tier1-on|smoke"]
    assert r.stdout.count("|recipe:tiny-a|smoke") == 1


def test_one_switch_per_recipe_with_no_variant_keys(tmp_path):
    cells = sweep.plan_recipe_cells([("a.yaml", "on", "m", "m@vllm@aaaaaaaaaaaa"),
                                     ("b", "b", "m", "m@vllm@bbbbbbbbbbbb")], ["p1", "p2"])
    state = SweepState.new(tmp_path / "sweep", cells)
    steps = FakeSteps()
    ok, lines = run(state, steps)  # VARIANTS has an "on" variant: a recipe named "on" still gets no keys
    assert ok
    assert [c for c in steps.calls if c[0] == "switch"] == [("switch", "a.yaml", {}), ("switch", "b", {})]
    assert [c[1] for c in steps.calls if c[0] == "bench"] == ["m|recipe:on|p1", "m|recipe:on|p2", "m|recipe:b|p1",
                                                                "m|recipe:b|p2"]
    assert "switching to recipe a.yaml (m@vllm@aaaaaaaaaaaa)" in lines
    saved = SweepState.load(state.path)
    assert saved.cells == cells and saved.cells[0].recipe_id == "m@vllm@aaaaaaaaaaaa"


def test_a_plan_written_before_recipes_existed_still_loads(tmp_path):
    path = tmp_path / sweep.STATE_FILE
    path.write_text(json.dumps({"created": "x", "plan": [{"model": "m", "variant": "baseline", "profile": "p"}],
                                "cells": {}, "pre": {}}))
    cell = SweepState.load(path).cells[0]
    assert cell.recipe == "" and cell.key == "m|baseline|p"


def test_a_recipe_changed_since_the_plan_or_too_big_is_skipped(recipes, tmp_path):
    cfg = load_config()
    steps = sweep_steps.InProcessSteps(cfg, log=lambda _m: None)
    (ref, name, model, rid), = sweep_steps.plan_recipes(cfg, sweep_steps.SweepOptions(recipes=[recipes[1]]))
    cell = sweep.plan_recipe_cells([(ref, name, model, rid)], ["smoke"])[0]
    assert steps.skip_reason(cell) == ""
    Path(recipes[1]).write_text(Path(recipes[1]).read_text().replace("max_num_seqs: 4", "max_num_seqs: 6"))
    reason = steps.skip_reason(cell)
    assert reason.startswith(f"recipe {recipes[1]} changed since the sweep was planned (id {rid}, now ")
    big = sweep.plan_recipe_cells([(str(recipe(tmp_path, "tiny-quad", 2, nodes=4)), "tiny-quad", model, "x")],
                                  ["smoke"])[0]
    assert "needs 4 nodes; this cluster has 1" in steps.skip_reason(big)


class RecordingOps:
    def __init__(self):
        self.starts, self.stops = [], 0

    def start(self, cfg, *, runner, say, spec=None, replace=False):
        self.starts.append((cfg.get("MODEL"), spec, replace))
        return SimpleNamespace(plan=SimpleNamespace(endpoint=""), report=SimpleNamespace(answer=""))

    def stop(self, cfg, runner=None):
        self.stops += 1
        return []


def test_restore_starts_the_configured_recipe_when_one_is_configured(recipes, tmp_path):
    config = Path(os.environ["SPARK_CONFIG"])
    config.write_text(f"MODEL=qwen3-8b\nRECIPE={recipes[1]}\n")
    pre = sweep.record_pre(config, ["Qwen/Qwen3-0.6B"])
    config.write_text("MODEL=something-else\n")  # as if changed behind the sweep's back
    ops = RecordingOps()
    steps = sweep_steps.InProcessSteps(load_config(), log=lambda _m: None, ops=ops)
    assert steps.restore(pre).status == SUCCESS
    assert config.read_text() == f"MODEL=qwen3-8b\nRECIPE={recipes[1]}\n"
    (model, spec, replace), = ops.starts
    assert replace and model == "Qwen/Qwen3-0.6B" and spec.recipe.name == "tiny-b"
    config.write_text("MODEL=qwen3-0.6b\n")
    ops = RecordingOps()
    sweep_steps.InProcessSteps(load_config(), log=lambda _m: None, ops=ops).restore(
        sweep.record_pre(config, ["Qwen/Qwen3-0.6B"]))
    assert ops.starts == [("qwen3-0.6b", None, True)]  # no RECIPE: control resolves MODEL, as before
