"""Recipes: format, validation errors, rendering rules, identity, presets, and the `recipe` CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sparkhelpers.errors import SparkError
from sparkhelpers.recipes import engine_argv, load, recipe_id, serve_argv
from sparkhelpers.recipes.flags import flag_set

IMAGE = "vllm/vllm-openai:v0.19.0"
BASE = f"""\
recipe: 1
name: qwen3-8b-pair
model: Qwen/Qwen3-8B
image: {IMAGE}
nodes: 2
engine_args:
  max_model_len: 32768
  gpu_memory_utilization: 0.8
"""


def write(tmp_path: Path, text: str, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "sparkhelpers", "recipe", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=60)


# ---- rendering rules ----------------------------------------------------------------------------

def test_rendering_rules_true_false_json_and_order(tmp_path):
    path = write(tmp_path, BASE + "  enforce_eager: true\n  enable_prefix_caching: false\n  trust_remote_code: false\n"
                 "  speculative_config: {method: ngram, num_speculative_tokens: 4}\n  max_num_seqs: null\n")
    args = engine_argv(load(str(path)))
    assert args[:6] == ["--served-model-name", "Qwen/Qwen3-8B", "--tensor-parallel-size", "2",
                        "--pipeline-parallel-size", "1"]
    assert "--enforce-eager" in args
    assert "--no-enable-prefix-caching" in args  # default-on flag: false is said
    assert not any("trust-remote-code" in a for a in args)  # default-off flag: false is nothing
    spec = args[args.index("--speculative-config") + 1]
    assert json.loads(spec) == {"method": "ngram", "num_speculative_tokens": 4} and " " not in spec
    assert "--max-num-seqs" not in args  # null = unset
    flags = [a.replace("--no-", "--") for a in args[6:] if a.startswith("--")]
    assert flags == sorted(flags)  # key order: one id is one argv


def test_unknown_engine_flag_is_refused_with_a_suggestion(tmp_path):
    path = write(tmp_path, BASE + "  max_modle_len: 4096\n")
    with pytest.raises(SparkError) as err:
        load(str(path))
    assert "engine_args.max_modle_len: vllm 0.19.0 has no flag --max-modle-len" in err.value.message
    assert "max_model_len" in err.value.fix


@pytest.mark.parametrize("line, message", [
    ("  tensor_parallel_size: 2\n", "set by tensor_parallel"),
    ("  port: 9000\n", "set by the deployment (VLLM_PORT)"),
    ("  max_model_len: lots\n", "must be a size (32768 or 32k)"),
    ("  max_num_seqs: lots\n", "must be a whole number"),
    ("  kv_cache_dtype: fp7\n", "must be one of"),
    ("  enforce_eager: 1\n", "must be true or false"),
])
def test_bad_engine_values_one_line(tmp_path, line, message):
    path = write(tmp_path, BASE.replace("  max_model_len: 32768\n", "") + line)
    with pytest.raises(SparkError) as err:
        load(str(path))
    assert message in err.value.message and "\n" not in err.value.message


def test_secret_references_are_refused_with_the_token_file_fix(tmp_path):
    path = write(tmp_path, BASE + "env:\n  HUGGING_FACE_HUB_TOKEN_X: '${HF_TOKEN}'\n")
    with pytest.raises(SparkError) as err:
        load(str(path))
    assert "${HF_TOKEN}" in err.value.message and "HF_TOKEN_FILE" in err.value.fix
    path = write(tmp_path, BASE + "env:\n  HF_TOKEN: hf_abc\n")
    with pytest.raises(SparkError) as err:
        load(str(path))
    assert "may not carry a secret (HF_TOKEN)" in err.value.message


def test_layout_and_runtime_errors(tmp_path):
    with pytest.raises(SparkError, match=r"tensor_parallel 4 x pipeline_parallel 1 = 4 GPUs, but the recipe runs "
                                         r"on 2 node"):
        load(str(write(tmp_path, BASE + "tensor_parallel: 4\n")))
    with pytest.raises(SparkError, match="runtime sglang is not built yet"):
        load(str(write(tmp_path, BASE + "runtime: sglang\n")))
    with pytest.raises(SparkError, match="runs on 2 node"):
        load(str(write(tmp_path, BASE)), nodes=3)
    with pytest.raises(SparkError, match="looks like a sparkrun or eugr recipe"):
        load(str(write(tmp_path, "recipe_version: '2'\nmodel: a/b\n")))


def test_the_recipe_layout_is_the_topology_rule(tmp_path, monkeypatch):
    """nodes = TP x PP is decided by topology.choose_layout alone: the schema asks it and words its answer."""
    from sparkhelpers import topology

    asked = []
    real = topology.choose_layout

    def recording(ask, **kw):
        asked.append((ask.tensor_parallel, ask.pipeline_parallel, kw.get("nodes")))
        return real(ask, **kw)

    monkeypatch.setattr(topology, "choose_layout", recording)
    r = load(str(write(tmp_path, BASE.replace("nodes: 2", "nodes: {min: 2, max: 4}") + "pipeline_parallel: 2\n")),
             nodes=4)
    assert (r.nodes, r.tensor_parallel, r.pipeline_parallel) == (4, 2, 2) and asked == [(None, 2, 4)]
    with pytest.raises(SparkError, match=r"tensor_parallel 1 x pipeline_parallel 2 = 2 GPUs, but the recipe runs on "
                                         r"3 node"):
        load(str(write(tmp_path, BASE.replace("nodes: 2", "nodes: 3") + "pipeline_parallel: 2\n")))
    with pytest.raises(SparkError, match=r"needs 4 node\(s\), outside the recipe's nodes 1-2"):
        load(str(write(tmp_path, BASE.replace("nodes: 2", "nodes: {min: 1, max: 2}") + "tensor_parallel: 4\n")))


def test_overrides_match_node_count_and_tp(tmp_path):
    path = write(tmp_path, f"""\
        recipe: 1
        name: spread
        model: Qwen/Qwen3-8B
        image: {IMAGE}
        nodes: {{min: 1, max: 4}}
        engine_args: {{max_num_seqs: 16}}
        overrides:
          - when: {{nodes: 2}}
            engine_args: {{max_num_seqs: 64}}
          - when: {{tp: 4}}
            engine_args: {{max_num_seqs: 256}}
            env: {{VLLM_X: "1"}}
        """)
    assert load(str(path)).engine_args["max_num_seqs"] == 16
    assert load(str(path), nodes=2).engine_args["max_num_seqs"] == 64
    four = load(str(path), nodes=4)
    assert (four.tensor_parallel, four.engine_args["max_num_seqs"], four.env) == (4, 256, {"VLLM_X": "1"})


def test_include_merges_maps_and_refuses_cycles(tmp_path):
    write(tmp_path, BASE + "env: {A: '1', B: '2'}\n", "base.yaml")
    child = write(tmp_path, """\
        recipe: 1
        include: base.yaml
        name: child
        engine_args: {max_model_len: 8192}
        env: {B: '3'}
        """, "child.yaml")
    r = load(str(child))
    assert (r.name, r.engine_args, r.env) == ("child", {"max_model_len": 8192, "gpu_memory_utilization": 0.8},
                                              {"A": "1", "B": "3"})
    write(tmp_path, "include: b2.yaml\n", "a2.yaml")
    write(tmp_path, "include: a2.yaml\n", "b2.yaml")
    with pytest.raises(SparkError, match="include cycle"):
        load(str(tmp_path / "a2.yaml"))


# ---- identity -----------------------------------------------------------------------------------

def test_id_ignores_order_comments_and_explicit_defaults(tmp_path):
    a = load(str(write(tmp_path, BASE, "a.yaml")))
    reordered = textwrap.dedent(f"""\
        # the same recipe, written differently
        engine_args:   {{gpu_memory_utilization: 0.80, max-model-len: 32768}}   # dashes are the same key
        image: {IMAGE}
        pipeline_parallel: 1
        launch: auto
        container: {{shm_size: 16g}}
        nodes: 2
        model: Qwen/Qwen3-8B
        name: another-name
        description: names and descriptions are not served
        recipe: 1
        """)
    b = load(str(write(tmp_path, reordered, "b.yaml")))
    assert recipe_id(a) == recipe_id(b)
    assert recipe_id(a).startswith("qwen3-8b@vllm@") and len(recipe_id(a).rsplit("@", 1)[1]) == 12


@pytest.mark.parametrize("change", [
    ("  gpu_memory_utilization: 0.8\n", "  gpu_memory_utilization: 0.81\n"),
    (f"image: {IMAGE}\n", "image: vllm/vllm-openai:v0.19.1\n"),
    ("nodes: 2\n", "nodes: 2\nlaunch: ray\n"),
    ("nodes: 2\n", "nodes: 2\nenv: {VLLM_LOGGING_LEVEL: DEBUG}\n"),
    ("nodes: 2\n", "nodes: 2\nserved_name: q8\n"),
])
def test_any_served_value_changes_the_id(tmp_path, change):
    a = load(str(write(tmp_path, BASE, "a.yaml")))
    b = load(str(write(tmp_path, BASE.replace(*change), "b.yaml")))
    assert recipe_id(a) != recipe_id(b)


def test_image_id_and_digest_change_the_id(tmp_path):
    r = load(str(write(tmp_path, BASE)))
    assert recipe_id(r) != recipe_id(r, "sha256:" + "a" * 64) != recipe_id(r, "sha256:" + "b" * 64)
    pinned = load(str(write(tmp_path, BASE.replace(IMAGE, "vllm/vllm-openai@sha256:" + "c" * 64), "p.yaml")))
    assert recipe_id(pinned) == recipe_id(pinned, "sha256:ignored-when-pinned")


def test_same_id_in_a_fresh_process(tmp_path):
    path = write(tmp_path, BASE)
    out = cli("hash", str(path))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == recipe_id(load(str(path)))
    assert "covers the tag only" in out.stderr


# ---- presets are recipes ------------------------------------------------------------------------

def test_every_catalog_preset_loads_as_a_recipe():
    from sparkhelpers.models.catalog import load_catalog

    for name, preset in load_catalog().items():
        r = load(name, default_image=IMAGE)
        assert (r.model, r.nodes, r.tensor_parallel) == (preset.repo, preset.nodes, preset.tensor_parallel)
        assert f"{preset.gpu_memory_util:g}" in serve_argv(r)


def test_preset_spreads_over_more_nodes():
    r = load("qwen3-8b", nodes=2, default_image=IMAGE)
    assert (r.nodes, r.tensor_parallel) == (2, 2)


def test_preset_shrinks_below_its_node_count_as_solo_does(tmp_path):
    """A 2-node preset is 2 nodes by default, and serves on 1 when asked (--solo, --nodes 1), like the
    configured route's --solo; a recipe says the same with nodes.default."""
    from sparkhelpers.config import load_config
    from sparkhelpers.recipes.apply import load_for_start

    assert load("llama-3.1-70b", default_image=IMAGE).nodes == 2
    assert load("llama-3.1-70b", nodes=1, default_image=IMAGE).tensor_parallel == 1
    _, spec = load_for_start(load_config(), "llama-3.1-70b", solo=True)
    assert (spec.recipe.nodes, spec.recipe.tensor_parallel) == (1, 1)
    ranged = BASE.replace("nodes: 2", "nodes: {min: 1, max: 4, default: 2}")
    assert [load(str(write(tmp_path, ranged)), nodes=n).nodes for n in (None, 1, 4)] == [2, 1, 4]
    with pytest.raises(SparkError, match=r"nodes.default 5 is outside \{min: 1, max: 4\}"):
        load(str(write(tmp_path, ranged.replace("default: 2", "default: 5"))))


def test_flag_set_reads_the_engine_list():
    flags = flag_set("vllm")
    assert flags.get("max_model_len").flag == "--max-model-len"
    assert flags.get("enable_prefix_caching").default_on


# ---- CLI ----------------------------------------------------------------------------------------

def test_cli_validate_exit_codes(tmp_path):
    good = write(tmp_path, BASE, "good.yaml")
    bad = write(tmp_path, BASE + "  not_a_flag: 1\n", "bad.yaml")
    out = cli("validate", str(good), str(bad))
    assert out.returncode == 1
    assert out.stdout.startswith("ok: ") and "qwen3-8b@vllm@" in out.stdout
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "no flag --not-a-flag" in lines[0] and "fix:" in lines[0]
    assert cli("export", str(good), "--to", "nowhere").returncode == 2
    assert cli("validate").returncode == 2


def test_cli_render_and_list_with_recipe_path(tmp_path):
    write(tmp_path, BASE, "pair.yaml")
    env = {"RECIPE_PATH": str(tmp_path)}
    out = cli("render", "pair", "--serve", env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("vllm serve Qwen/Qwen3-8B --served-model-name Qwen/Qwen3-8B "
                                 "--tensor-parallel-size 2")
    rows = json.loads(cli("list", "--json", env=env).stdout)
    assert rows[0]["name"] == "qwen3-8b-pair" and any(r["name"] == "qwen3-8b" for r in rows)
    shown = cli("show", "pair", "--json", env=env)
    assert json.loads(shown.stdout)["id"] == recipe_id(load(str(tmp_path / "pair.yaml")))


# ---- one path: the plan, its label and the benchmark results carry the recipe id -------------------

def test_a_recipe_plan_renders_by_the_recipe_and_labels_its_id(tmp_path):
    from test_cluster_plan import FABRIC

    from sparkhelpers.cluster import render as rd
    from sparkhelpers.cluster.plan import build_plan
    from sparkhelpers.config import load_config
    from sparkhelpers.recipes.apply import recipe_config, recipe_spec

    recipe = load(str(write(tmp_path, BASE + "env: {VLLM_LOGGING_LEVEL: DEBUG}\n")))
    # a configured engine key must not leak into a recipe's start
    cfg = recipe_config(load_config(flags={**FABRIC, "KV_CACHE_DTYPE": "fp8", "EXTRA_ARGS": "--enforce-eager"}),
                        recipe)
    plan = build_plan(cfg, recipe_spec(recipe), nodes=2)
    assert list(plan.engine_args) == engine_argv(recipe)
    assert plan.recipe_id == recipe_id(recipe) and plan.image == IMAGE
    run = rd.docker_run(plan, plan.nodes[1], plan.config_hash())
    assert f"--label sparkhelpers.recipe={recipe_id(recipe)}" in run.replace("'", "")
    assert "VLLM_LOGGING_LEVEL=DEBUG" in run and all(n.env["VLLM_LOGGING_LEVEL"] == "DEBUG" for n in plan.nodes)


def test_the_configured_model_has_a_recipe_id_too():
    from test_cluster_plan import plan_for

    a, b = plan_for(nodes=2), plan_for(nodes=2, MAX_NUM_SEQS="64")
    assert a.recipe_id.startswith("qwen3-0.6b@vllm@") and a.recipe_id != b.recipe_id
    assert plan_for(nodes=2).recipe_id == a.recipe_id


def test_benchmark_results_carry_the_running_recipe_id(tmp_path, monkeypatch):
    from sparkhelpers.bench.results import cluster_target
    from sparkhelpers.config import load_config

    run = tmp_path / "run" / "spark"
    run.mkdir(parents=True)
    (run / "state.json").write_text(json.dumps({"recipe_id": "qwen3-8b@vllm@0123456789ab"}))
    cfg = load_config(flags={"SPARK_STATE_DIR": str(tmp_path)})
    assert cluster_target(cfg, "http://127.0.0.1:8000", "m")["recipe_id"] == "qwen3-8b@vllm@0123456789ab"
