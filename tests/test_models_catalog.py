"""The catalog: built-in entries valid, user catalog extends/overrides, errors name the entry, precedence."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from sparkhelpers.config import load_config, set_local
from sparkhelpers.errors import SparkError
from sparkhelpers.models.catalog import load_catalog, lookup, resolve_model


def test_builtin_catalog_loads_and_covers_the_families():
    cat = load_catalog()
    for name in ("gpt-oss-120b", "gpt-oss-20b", "qwen3-30b-a3b", "qwen3-235b-a22b-fp8", "nemotron-3-nano-30b-a3b",
                 "llama-3.1-8b", "llama-3.1-70b", "llama-3.3-70b-fp4", "mistral-7b", "gemma-3-27b", "phi-4",
                 "deepseek-v3", "smollm2-135m"):
        assert name in cat
    assert cat["deepseek-v3"].arch.attention == "mla" and cat["deepseek-v3"].nodes == 8
    assert all(p.nodes == p.tensor_parallel * p.pipeline_parallel for p in cat.values())


def write(tmp_path, text: str):
    path = tmp_path / "catalog.yaml"
    path.write_text(text)
    return path


def test_user_catalog_extends_and_overrides_field_by_field(tmp_path):
    path = write(tmp_path, """
models:
  gpt-oss-120b:
    max_model_len: 65536
  my-model:
    repo: acme/my-model-8b
    extra_args: ["--enable-prefix-caching"]
    arch: {params: 8e9, weight_dtype: bf16, layers: 32, kv_heads: 8, head_dim: 128, attention: dense}
""")
    cat = load_catalog(path)
    assert cat["gpt-oss-120b"].max_model_len == 65536
    assert cat["gpt-oss-120b"].repo == "openai/gpt-oss-120b"  # untouched fields kept
    assert cat["gpt-oss-120b"].arch.layers == 36
    assert cat["my-model"].extra_args == ("--enable-prefix-caching",)
    assert cat["my-model"].origin == str(path)


@pytest.mark.parametrize("body, message", [
    ("  bad:\n    repo: acme/x\n    tensor_parallel: two\n", "model 'bad': tensor_parallel must be int"),
    ("  bad:\n    max_model_len: 10\n", "model 'bad': repo is required"),
    ("  bad:\n    repo: not a repo\n", "is not a Hugging Face repo id"),
    ("  bad:\n    repo: acme/x\n    colour: red\n", "unknown field(s) colour"),
    ("  bad:\n    repo: acme/x\n    nodes: 2\n", "nodes (2) must equal tensor_parallel x pipeline_parallel"),
    ("  bad:\n    repo: acme/x\n    arch: {attention: sparse}\n", "attention must be one of"),
    ("  bad:\n    repo: acme/x\n    arch: {attention: mla}\n", "MLA needs arch kv_lora_rank"),
    ("  bad:\n    repo: acme/x\n    arch: {weight_dtype: fp3}\n", "unknown weight_dtype"),
    ("  Bad Name:\n    repo: acme/x\n", "name must be lower-case"),
])
def test_validation_errors_name_the_entry(tmp_path, body, message):
    path = write(tmp_path, "models:\n" + body)
    with pytest.raises(SparkError) as exc:
        load_catalog(path)
    assert message in exc.value.message
    assert str(path) in exc.value.message


def test_missing_and_broken_user_catalog(tmp_path):
    with pytest.raises(SparkError, match="does not exist"):
        load_catalog(tmp_path / "nope.yaml")
    with pytest.raises(SparkError, match="not valid YAML"):
        load_catalog(write(tmp_path, "models: [\n"))
    with pytest.raises(SparkError, match="no `models:` mapping"):
        load_catalog(write(tmp_path, "presets: {}\n"))


def test_lookup_by_name_number_and_repo():
    cat = load_catalog()
    assert lookup(cat, "phi-4").repo == "microsoft/phi-4"
    assert lookup(cat, "1").name == list(cat)[0]
    assert lookup(cat, "openai/gpt-oss-20b").name == "gpt-oss-20b"
    assert lookup(cat, "acme/unknown") is None
    with pytest.raises(SparkError, match="no preset number 999"):
        lookup(cat, "999")


def test_preset_values_are_defaults_and_explicit_config_wins(monkeypatch):
    spec = resolve_model(load_config(), "llama-3.1-70b")
    assert (spec.tensor_parallel, spec.nodes, spec.max_model_len) == (2, 2, 32768)
    assert spec.sources["GPU_MEMORY_UTIL"] == "preset llama-3.1-70b"  # config.env's 0.85 is not explicit
    set_local("MAX_MODEL_LEN", "8192")
    monkeypatch.setenv("GPU_MEMORY_UTIL", "0.8")
    spec = resolve_model(load_config(flags={"TENSOR_PARALLEL": "4"}), "llama-3.1-70b")
    assert spec.max_model_len == 8192 and spec.sources["MAX_MODEL_LEN"] == "config.local.env"
    assert spec.gpu_memory_util == 0.8 and spec.sources["GPU_MEMORY_UTIL"] == "environment"
    assert spec.tensor_parallel == 4 and spec.nodes == 4 and spec.sources["TENSOR_PARALLEL"] == "flag"


def test_raw_repo_id_defaults_to_one_rank_per_node(monkeypatch):
    monkeypatch.setenv("WORKER_HOST", "w1 w2 w3")
    spec = resolve_model(load_config(), "acme/Some-Model-7B")
    assert spec.preset is None and spec.repo == "acme/Some-Model-7B" and spec.tensor_parallel == 4
    assert spec.arch.layers is None  # unknown, not guessed
    with pytest.raises(SparkError, match="neither a catalog preset nor a Hugging Face repo id"):
        resolve_model(load_config(), "no-such-preset")


def test_expert_parallel_only_across_nodes(monkeypatch):
    assert resolve_model(load_config(), "qwen3-235b-a22b-fp8").expert_parallel is True
    monkeypatch.setenv("ENABLE_EXPERT_PARALLEL", "false")
    assert resolve_model(load_config(), "qwen3-235b-a22b-fp8").expert_parallel is False


def test_list_json_marks_current_and_fits(sparkhelpers_bin, monkeypatch):
    monkeypatch.setenv("MODEL", "phi-4")
    r = subprocess.run([*sparkhelpers_bin, "models", "list", "--json"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    current = [row["name"] for row in rows if row["current"]]
    assert current == ["phi-4"]
    assert {row["fits"] for row in rows if row["nodes"] == 1} == {True}  # multi-node presets: not on 1 node
    assert all(row["cached"] is False for row in rows)
    r = subprocess.run([*sparkhelpers_bin, "models", "list"], capture_output=True, text=True, timeout=60)
    assert "phi-4" in r.stdout and "* = current MODEL (phi-4)" in r.stdout


def test_show_field_for_scripts(sparkhelpers_bin):
    r = subprocess.run([*sparkhelpers_bin, "models", "show", "3", "--field", "name"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == list(load_catalog())[2]
    r = subprocess.run([*sparkhelpers_bin, "models", "show", "bogus"], capture_output=True, text=True)
    assert r.returncode == 1 and "neither a catalog preset" in r.stderr


def test_list_fits_against_this_clusters_node_count(sparkhelpers_bin, monkeypatch):
    def rows(workers: str) -> dict:
        env = {**os.environ, "WORKER_HOST": workers}
        r = subprocess.run([*sparkhelpers_bin, "models", "list", "--json"], capture_output=True, text=True,
                           timeout=60, env=env)
        assert r.returncode == 0, r.stderr
        return {row["name"]: row for row in json.loads(r.stdout)}

    alone = rows("")
    big = [r for r in alone.values() if r["nodes"] > 1]
    assert big and all(r["fits"] is False and r["fits_why"].startswith(f"needs {r['nodes']} nodes") for r in big)
    assert alone["qwen3-8b"]["fits"] is True and alone["qwen3-8b"]["cluster_nodes"] == 1
    eight = rows(" ".join(f"10.0.0.{i}" for i in range(2, 9)))
    assert eight["deepseek-v3"]["cluster_nodes"] == 8 and not eight["deepseek-v3"]["fits_why"].startswith("needs")
