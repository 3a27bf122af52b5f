"""sparkrun v2 / eugr v1 import and sparkrun export, with the real sparkrun 0.4.2 as the oracle.

sparkrun runs from its side venv (tools/recipe-oracles.sh; `make oracles`), offline: a throw-away HOME
whose registries list is empty (so it clones nothing), telemetry off, HF offline.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from oracles import oracle_venv

from sparkhelpers.errors import SparkError
from sparkhelpers.recipes import export, imports, load, serve_argv
from sparkhelpers.recipes.schema import resolve

ROOT = Path(__file__).resolve().parents[1]
PEER = ROOT / "tests" / "fixtures" / "recipes" / "peer"
ORACLE = ROOT / "tests" / "oracle" / "sparkrun_render.py"
FIXTURES = ["v2-solo", "v2-two-node-ray", "v2-speculative", "eugr-v1", "include-child"]
# Flags sparkrun 0.4.2 leaves out when a recipe has no `command:` (keys missing from its flag map are dropped
# with a warning, its #276). We render them: a served value is never dropped.
SPARKRUN_DROPS = {"include-child": {"enable_expert_parallel"}}
CLUSTER_FLAGS = {"nnodes", "master_addr", "master_port", "node_rank", "headless", "host", "port",
                 "distributed_executor_backend"}
ALIASES = {"-tp": "--tensor-parallel-size", "-pp": "--pipeline-parallel-size"}




@pytest.fixture(scope="module")
def sparkrun(tmp_path_factory):
    venv = oracle_venv("sparkrun")
    home = tmp_path_factory.mktemp("sparkrun-home")
    (home / ".config" / "sparkrun").mkdir(parents=True)
    (home / ".config" / "sparkrun" / "registries.yaml").write_text("registries: []\n")
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "SPARKRUN_NO_TELEMETRY": "1", "HF_HUB_OFFLINE": "1",
           "NO_COLOR": "1"}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(venv / "bin" / args[0]), *args[1:]], capture_output=True, text=True, env=env,
                              timeout=120)

    return run


def flags_of(argv: list[str]) -> tuple[str, dict[str, str]]:
    """(model, {flag: value}) of a `vllm serve` argv; rendezvous/deployment flags removed, TP/PP explicit."""
    argv = [a for a in argv if a.strip()]  # sparkrun keeps a "\n" token per `\`-continued template line
    assert argv[:2] == ["vllm", "serve"], argv
    rest = [ALIASES.get(a, a) for a in argv[3:]]
    out: dict[str, str] = {}
    i = 0
    while i < len(rest):
        key = rest[i].lstrip("-").replace("-", "_")
        if i + 1 < len(rest) and not rest[i + 1].startswith("--"):
            out[key], i = rest[i + 1], i + 2
        else:
            out[key], i = "", i + 1
    for key in CLUSTER_FLAGS:
        out.pop(key, None)
    out.setdefault("tensor_parallel_size", "1")
    out.setdefault("pipeline_parallel_size", "1")
    return argv[2], out


def oracle(sparkrun, path: Path, nodes: int) -> dict:
    r = sparkrun("python", str(ORACLE), str(path), str(nodes))
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def imported(tmp_path: Path, name: str) -> Path:
    doc = imports.import_file(PEER / f"{name}.yaml")
    out = tmp_path / f"{name}.ours.yaml"
    out.write_text(export.dump_yaml(doc))
    return out


@pytest.mark.parametrize("name", FIXTURES)
def test_import_renders_what_sparkrun_renders(sparkrun, tmp_path, name):
    ours_file = imported(tmp_path, name)
    low, high = load(str(ours_file)).nodes_range
    for nodes in sorted({low, min(high, 2)}):
        recipe = load(str(ours_file), nodes=nodes)
        theirs = oracle(sparkrun, PEER / f"{name}.yaml", nodes)
        model, their_flags = flags_of(theirs["argv"])
        our_model, our_flags = flags_of(serve_argv(recipe))
        assert our_model == model
        dropped = SPARKRUN_DROPS.get(name, set()) if nodes > 1 else set()
        assert {k: val for k, val in our_flags.items() if k not in dropped} == their_flags, (name, nodes)
        if theirs["runtime"] == "vllm-ray":
            assert recipe.launch == "ray" and nodes > 1
        assert recipe.served_name == our_flags["served_model_name"]


def test_import_keeps_env_layout_and_json_text():
    ray = imports.import_file(PEER / "v2-two-node-ray.yaml")
    assert (ray["launch"], ray["nodes"], ray["tensor_parallel"], ray["env"]) == ("ray", 2, 2, {"NCCL_DEBUG": "WARN"})
    eugr = imports.import_file(PEER / "eugr-v1.yaml")
    assert eugr["name"] == "qwen3-8b-tp2" and eugr["nodes"] == {"min": 2, "max": 8}
    # JSON that travelled in a defaults value (eugr's way) and {{ }} escapes arrive as the text vLLM gets
    assert eugr["engine_args"]["speculative_config"] == '{"method":"ngram","num_speculative_tokens":2}'
    assert eugr["engine_args"]["override_generation_config"] == '{"temperature": 0.6}'
    assert eugr["env"] == {"VLLM_DISTRIBUTED_EXECUTOR_CONFIG": "SPREAD"}


@pytest.mark.parametrize("name", FIXTURES)
def test_export_passes_sparkrun_validate_and_renders_the_same(sparkrun, tmp_path, name):
    recipe = load(str(imported(tmp_path, name)))
    out = tmp_path / f"{name}.sparkrun.yaml"
    out.write_text(export.export(recipe, "sparkrun"))
    r = sparkrun("sparkrun", "recipe", "validate", str(out))
    assert r.returncode == 0 and "is valid" in r.stdout, r.stdout + r.stderr
    theirs = oracle(sparkrun, out, recipe.nodes)
    assert flags_of(theirs["argv"]) == flags_of(serve_argv(recipe))


@pytest.mark.parametrize("text, field", [
    ("mods: [mods/fix-x]\n", "mods has no equivalent"),
    ("containers: [{image: a, host: h}]\n", "containers has no equivalent"),
    ("post_exec: [echo hi]\n", "post_exec has no equivalent"),
    ("overrides: [{when: {arch: sm_121}, defaults: {max_num_seqs: 4}}]\n", "overrides[0].when.arch has no equivalent"),
    ("runtime: sglang\n", "runtime sglang is not built yet"),
    ("defaults: {not_a_vllm_flag: 3}\n", "no flag --not-a-vllm-flag"),
    ("env: {HF_TOKEN: '${HF_TOKEN}'}\n", "secret"),
])
def test_import_refuses_what_has_no_equivalent(tmp_path, text, field):
    path = tmp_path / "r.yaml"
    path.write_text("recipe_version: '2'\nmodel: Qwen/Qwen3-8B\ncontainer: img:1\n" + text)
    with pytest.raises(SparkError) as err:
        imports.import_file(path)
    assert field in err.value.message and "\n" not in err.value.message


def test_our_own_format_is_not_imported(tmp_path):
    path = tmp_path / "ours.yaml"
    path.write_text("recipe: 1\nname: x\nmodel: a/b\nimage: i:1\n")
    with pytest.raises(SparkError, match="already in our format"):
        imports.import_file(path)
    resolve(str(path), {"recipe": 1, "name": "x", "model": "a/b", "image": "i:1"})
