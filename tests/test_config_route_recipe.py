"""One path for config and recipes: the configured route (config.env + preset) builds its recipe and the
plan renders it with the recipe renderer. EXTRA_ARGS flags are checked against the engine version's flag
set (one line naming the flag, with the fix); what the route rendered before is kept in
tests/fixtures/recipes/config-route-argv-before.json (made by tests/fixtures/recipes/config_route.py at the
commit before the change), and every case still gives the same flags and values; a preset started from
config and the same preset started as a recipe render byte-identical argv with one recipe id, also below
the preset's node count (--solo / --nodes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sparkhelpers.cluster.plan import build_plan
from sparkhelpers.config import load_config
from sparkhelpers.errors import SparkError
from sparkhelpers.models import resolve_model
from sparkhelpers.recipes import flags as fl
from sparkhelpers.recipes.apply import flagset_with_owned, load_for_start
from sparkhelpers.recipes.render import args_to_map

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "fixtures" / "recipes"))
import config_route  # noqa: E402

BEFORE = json.loads(config_route.GOLDEN.read_text())


def as_map(argv: list[str]) -> dict:
    """The argv as vLLM / llama-server would read it (a later occurrence wins), through the flag sets."""
    runtime = "llama-cpp" if "--alias" in argv else "vllm"
    return args_to_map(argv, flagset_with_owned(fl.flag_set(runtime)), "argv")


def test_every_configured_case_keeps_its_flags_and_values():
    cases = config_route.cases()
    assert set(cases) == set(BEFORE), "the golden file and the cases agree (rerun config_route.py only "\
                                      "against the code before the change)"
    identical = 0
    for name, case in cases.items():
        new, old = config_route.argv(case), BEFORE[name]
        assert as_map(new) == as_map(old), name
        assert new[:2] == old[:2], name  # the served name / llama-server's host lead, as before
        identical += new == old
    # Only the order differs (recipe keys are rendered sorted, one occurrence each): the cases whose
    # flags were already in key order are byte-identical.
    assert identical >= 1, identical
    print(f"{len(cases)} cases: {identical} byte-identical, {len(cases) - identical} reordered only")


@pytest.mark.parametrize("preset", config_route.presets())
def test_a_preset_from_config_and_as_a_recipe_render_one_argv_and_one_id(preset):
    from sparkhelpers.topology import choose_layout

    cfg = load_config(flags={**config_route.FABRIC, "MODEL": preset})
    spec = resolve_model(cfg)
    counts = sorted({spec.nodes, 1, min(spec.nodes * 2, 8)})
    for nodes in counts:
        solo = nodes == 1
        ask = {"solo": True} if solo else {"nodes": nodes}
        try:
            choose_layout(spec.ask, available=8, **ask)
        except SparkError:
            continue  # e.g. a PP=2 preset on one node: refused by both routes alike
        from_config = build_plan(cfg, spec, **ask)
        rcfg, rspec = load_for_start(cfg, preset, nodes=None if solo else nodes, solo=solo)
        as_recipe = build_plan(rcfg, rspec, **ask)
        assert from_config.engine_args == as_recipe.engine_args, (preset, nodes)
        assert from_config.recipe_id == as_recipe.recipe_id, (preset, nodes)
        assert from_config.tensor_parallel == as_recipe.tensor_parallel == nodes // spec.pipeline_parallel


def plan_with(**flags):
    cfg = load_config(flags={**config_route.FABRIC, "MODEL": "qwen3-8b", **flags})
    return build_plan(cfg, resolve_model(cfg))


@pytest.mark.parametrize("extra,message,fix", [
    ("--max-modle-len 4096", "EXTRA_ARGS: vllm 0.19.0 has no flag --max-modle-len",
     "did you mean max_model_len (--max-model-len)?"),
    ("--enforce-eager --dp-sync-interval 5", "EXTRA_ARGS: vllm 0.19.0 has no flag --dp-sync-interval",
     "ENGINE_VERSION picks the vLLM whose flags are checked (known: 0.19.0, 0.32.0)"),
    ("--served-model-name other", "EXTRA_ARGS: --served-model-name is set by SERVED_MODEL_NAME",
     "remove it from EXTRA_ARGS and set SERVED_MODEL_NAME"),
    ("-tp 2", "EXTRA_ARGS: --tensor-parallel-size is set by TENSOR_PARALLEL", "set TENSOR_PARALLEL"),
    ("--port 9000", "EXTRA_ARGS: --port is set by VLLM_PORT", "set VLLM_PORT"),
    ("--nnodes 2", "EXTRA_ARGS: --nnodes is set by the start's --nodes", "remove it from EXTRA_ARGS"),
    ("hermes", "EXTRA_ARGS: argument 'hermes' does not follow a flag", "--flag value"),
])
def test_extra_args_flags_are_checked_against_the_engine_version(extra, message, fix):
    with pytest.raises(SparkError) as err:
        plan_with(EXTRA_ARGS=extra)
    assert err.value.message.startswith(message) and fix in err.value.fix, (err.value.message, err.value.fix)


def test_engine_version_picks_the_flag_set():
    args = list(plan_with(EXTRA_ARGS="--dp-sync-interval 5", ENGINE_VERSION="0.32.0").engine_args)
    assert args[args.index("--dp-sync-interval") + 1] == "5"
    with pytest.raises(SparkError, match="ENGINE_VERSION=.latest. is not a vLLM version"):
        plan_with(ENGINE_VERSION="latest")
    with pytest.raises(SparkError, match="engine_version 0.20.0 has no flag list here"):
        plan_with(ENGINE_VERSION="0.20.0")


def test_llama_server_short_flags_and_the_last_value_wins():
    plan = plan_with(MODEL=config_route.GGUF, RUNTIME="llama-cpp", MAX_MODEL_LEN="2048",
                     EXTRA_ARGS="-ngl 99 -c 1024 --jinja")
    args = list(plan.engine_args)
    assert args[:6] == ["--host", "0.0.0.0", "--port", "8000", "--alias", config_route.GGUF]
    assert args.count("--ctx-size") == 1 and args[args.index("--ctx-size") + 1] == "1024"
    assert args[args.index("--n-gpu-layers") + 1] == "99" and "--jinja" in args


def test_a_bad_extra_args_flag_stops_the_dry_run_in_one_line(tmp_path):
    r = subprocess.run([str(ROOT / "start_cluster.sh"), "--dry-run"], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "EXTRA_ARGS": "--enable-auto-tool-choise"})
    assert r.returncode == 1, r.stdout + r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines[0] == "sparkhelpers: EXTRA_ARGS: vllm 0.19.0 has no flag --enable-auto-tool-choise", lines
    assert "did you mean enable_auto_tool_choice" in lines[1] and len(lines) == 2
    assert "docker run" not in r.stdout


def test_config_check_lists_a_bad_extra_args_flag_once():
    def check(**env):
        return subprocess.run([sys.executable, "-m", "sparkhelpers", "config", "check"], capture_output=True,
                              text=True, timeout=60, env={**os.environ, **env})

    r = check(EXTRA_ARGS="--enable-auto-tool-choise")
    assert r.returncode == 1 and r.stdout.count("bad  EXTRA_ARGS: vllm 0.19.0 has no flag --enable-auto-tool-choise") \
        == 1, r.stdout
    assert "fix: did you mean enable_auto_tool_choice" in r.stdout
    r = check(EXTRA_ARGS="--chat-template 'unbalanced")  # its own rule says it; the flag check stays quiet
    assert r.returncode == 1 and r.stdout.count("bad  ") == 1 and "cannot be split" in r.stdout
    assert check(EXTRA_ARGS="--enforce-eager").returncode == 0
