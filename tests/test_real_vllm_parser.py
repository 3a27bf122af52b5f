"""Every `vllm serve` command the product renders, parsed by the real vLLM parser of each supported
version; the stand-in's flag sets are the real parser's (generated, checked in, kept current).

Needs the real vLLM side environment (tools/real-vllm.sh, cached under /var/cache/sparkhelpers);
skips without it, except under CI (SPARK_REQUIRE_REAL_VLLM=1), where it fails."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from sparkhelpers.cluster import render as rd
from sparkhelpers.cluster.plan import build_plan
from sparkhelpers.config import load_config
from sparkhelpers.models import resolve_model
from sparkhelpers.sim import realvllm

try:  # the validation module is moving to sparkhelpers/validate.py (consolidation issue)
    from sparkhelpers import validate as v
except ImportError:  # pragma: no cover - before that lands
    from sparkhelpers.cluster import validate as v

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ROOT / "sparkhelpers" / "sim" / "engine"
HANDMADE = ROOT / "tests" / "fixtures" / "vllm_flags-handmade-0.19.0.json"  # the stand-in's list before issue 12
RECIPES = ROOT / "tests" / "fixtures" / "recipes" / "peer"  # sparkrun v2 and eugr v1 recipes (test_recipes_peer)
FABRIC = {"WORKER_HOST": "spark2 spark3", "WORKER_IB_IP": "169.254.100.12 169.254.100.13",
          "HEAD_IP": "169.254.100.11", "FABRIC_IF": "enp1s0f1np1", "NCCL_IB_HCA": "rocep1s0f1,roceP2p1s0f1"}
FULL = {"ENABLE_PREFIX_CACHING": "true", "ENABLE_CHUNKED_PREFILL": "false", "MAX_NUM_SEQS": "64",
        "MAX_NUM_BATCHED_TOKENS": "8192", "SPECULATIVE_CONFIG": '{"method": "ngram", "num_speculative_tokens": 2, '
        '"prompt_lookup_max": 4}', "MAX_MODEL_LEN": "32768", "GPU_MEMORY_UTIL": "0.7", "TRUST_REMOTE_CODE": "true",
        "ENABLE_EXPERT_PARALLEL": "true", "MODEL_REVISION": "main", "SERVED_MODEL_NAME": "qwen:latest",
        "KV_CACHE_DTYPE": "fp8", "LOAD_FORMAT": "safetensors",
        "EXTRA_ARGS": "--enable-auto-tool-choice --tool-call-parser hermes --max-log-len 100"}


def _configs() -> dict[str, tuple[dict, dict]]:
    """name -> (build_plan keywords, config flags): every mode and every first-tier option."""
    out = {"single": ({"solo": True}, {}), "native-2": ({"nodes": 2}, {}), "native-3": ({"nodes": 3}, {}),
           "ray-2": ({"nodes": 2}, {"LAUNCH_MODE": "ray"}), "ray-3": ({"nodes": 3}, {"LAUNCH_MODE": "ray"}),
           "tp1-pp2": ({"nodes": 2}, {"TENSOR_PARALLEL": "1", "PIPELINE_PARALLEL": "2"}),
           "full-single": ({"solo": True}, FULL), "full-native": ({"nodes": 2}, FULL),
           "full-ray": ({"nodes": 2}, {**FULL, "LAUNCH_MODE": "ray"}),
           "tristate-opposite": ({"nodes": 2}, {"ENABLE_PREFIX_CACHING": "false", "ENABLE_CHUNKED_PREFILL": "true",
                                                "TRUST_REMOTE_CODE": "false", "ENABLE_EXPERT_PARALLEL": "false"})}
    for kv in v.KV_CACHE_DTYPES:
        out[f"kv-{kv}"] = ({"nodes": 2}, {"KV_CACHE_DTYPE": kv})
    for fmt in v.LOAD_FORMATS:
        out[f"load-{fmt}"] = ({"solo": True}, {"LOAD_FORMAT": fmt})
    return out


def _serve_argv(script: str) -> list[str]:
    """The argv of the script's `exec vllm serve ...`, expanded by bash itself (its real quoting)."""
    lines = script.splitlines()
    start = max(i for i, ln in enumerate(lines) if ln.startswith("exec vllm serve "))
    command = "\n".join(lines[start:]).replace("exec vllm serve ", "vllm serve ", 1)
    dump = 'vllm() { python3 -c "import json, sys; print(json.dumps(sys.argv[1:]))" "$@"; }\n'
    r = subprocess.run(["bash", "-c", dump + command], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _plan_argvs(name: str, plan) -> dict[str, list[str]]:  # noqa: ANN001 - a ClusterPlan
    out = {}
    for node in plan.nodes:
        for script_name, text in rd.entry_scripts(plan, node).items():
            if "exec vllm serve " in text:
                out[f"{name}/rank{node.rank}/{script_name}"] = _serve_argv(text)
    return out


def recipe_argvs(tmp: Path) -> dict[str, list[str]]:
    """Every rank's argv of every recipe fixture (the peer formats, imported), at its lowest node count and up
    to 2, through the same recipe config, plan and render a `start_cluster.sh --recipe` goes through."""
    from sparkhelpers.recipes import export, imports, load
    from sparkhelpers.recipes.apply import recipe_config, recipe_spec

    out = {}
    for fixture in sorted(RECIPES.glob("*.yaml")):
        ours = tmp / f"{fixture.stem}.yaml"
        ours.write_text(export.dump_yaml(imports.import_file(fixture)))
        low, high = load(str(ours)).nodes_range
        for nodes in sorted({low, min(high, 2)}):  # the counts test_recipes_peer renders
            recipe = load(str(ours), nodes=nodes)
            if recipe.runtime != "vllm":
                continue
            cfg = recipe_config(load_config(flags=FABRIC), recipe)
            plan = build_plan(cfg, recipe_spec(recipe), nodes=nodes, solo=nodes == 1)
            out.update(_plan_argvs(f"recipe-{fixture.stem}-{nodes}n", plan))
    return out


def rendered_argvs() -> dict[str, list[str]]:
    """Every rank's `vllm serve` argv of every configuration above, and of every recipe fixture."""
    out = {}
    for name, (kw, flags) in _configs().items():
        cfg = load_config(flags={**FABRIC, **flags})
        out.update(_plan_argvs(name, build_plan(cfg, resolve_model(cfg), **kw)))  # as the start builds it
    with tempfile.TemporaryDirectory(prefix="recipe-argvs-") as tmp:
        out.update(recipe_argvs(Path(tmp)))
    return out


ARGVS = rendered_argvs()


def require_real(version: str) -> None:
    if realvllm.available(version):
        return
    why = f"the real vLLM {version} parser is not installed ({realvllm.BUILD_HINT})"
    if os.environ.get("SPARK_REQUIRE_REAL_VLLM") == "1":
        pytest.fail(f"SPARK_REQUIRE_REAL_VLLM=1 but {why}")
    pytest.skip(why)


PROBES = [
    ["--swap-space", "4"], ["--disable-log-requests"], ["--no-enable-prefix-caching"], ["--max_model_len", "4096"],
    ["--max-model-len", "auto"], ["--max-model-len", "32k"], ["--max-model-len", "lots"],
    ["--kv-cache-dtype", "int3"], ["--kv-cache-dtype", "float16"], ["-tp", "2"], ["-tp", "two"],
    ["--compilation-config.mode", "3"], ["-O3"], ["--enforce-eager"], ["--no-enforce-eager"],
    ["--speculative-config", "{bad"], ["--distributed-executor-backend", "slurm"], ["--headless"],
    ["--enable-log-requests"], ["--gpu-memory-utilization", "high"], ["--no-such-flag"],
]
PROBE_ARGVS = {" ".join(p): ["serve", "org/m", *p] for p in PROBES}


@functools.cache
def real_parser(version: str) -> tuple[dict, dict[str, dict]]:
    """The real parser's flag set, and its verdict on every rendered argv and every probe: one process per
    version (importing vLLM is most of the cost)."""
    every = {**ARGVS, **PROBE_ARGVS}
    names = sorted(every)
    spec, verdicts = realvllm.generate_and_check(version, [every[n] for n in names])
    return spec, dict(zip(names, verdicts, strict=True))


def real_verdicts(version: str) -> dict[str, dict]:
    return real_parser(version)[1]


def stand_in_accepts(spec: dict, argv: list[str]) -> tuple[bool, str]:
    """Parse argv (["serve", ...]) with the stand-in's parser built from ``spec``, in-process."""
    sys.path.insert(0, str(ENGINE))
    try:
        from sparksim_engine import vllm_cli
    finally:
        sys.path.remove(str(ENGINE))
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            vllm_cli.build_parser(spec).parse_args(vllm_cli.normalize(argv[1:], spec))
        return True, ""
    except SystemExit:
        return False, err.getvalue().strip().splitlines()[-1]


def test_the_product_renders_every_mode_and_option():
    assert len(ARGVS) > 30
    joined = {k: " ".join(a) for k, a in ARGVS.items()}
    assert "--headless" in joined["native-2/rank1/engine.sh"] and "--nnodes" in joined["native-2/rank0/engine.sh"]
    assert "--distributed-executor-backend ray" in joined["ray-2/rank0/ray.sh"]
    assert "--kv-cache-dtype float16" in joined["kv-float16/rank0/engine.sh"]
    assert "--no-enable-prefix-caching" in joined["tristate-opposite/rank0/engine.sh"]
    for flag in ("--speculative-config", "--max-num-batched-tokens", "--revision", "--trust-remote-code",
                 "--enable-expert-parallel", "--no-enable-chunked-prefill", "--tool-call-parser"):
        assert flag in joined["full-native/rank1/engine.sh"], flag
    recipes = {k.split("/")[0] for k in ARGVS if k.startswith("recipe-")}
    for fixture in RECIPES.glob("*.yaml"):  # every fixture renders at least one vLLM start
        assert any(r.startswith(f"recipe-{fixture.stem}-") for r in recipes) or "llama" in fixture.read_text(), fixture
    assert "--distributed-executor-backend ray" in joined["recipe-v2-two-node-ray-2n/rank0/ray.sh"]
    assert "--speculative-config" in joined["recipe-v2-speculative-1n/rank0/engine.sh"]


@pytest.mark.parametrize("version", realvllm.SUPPORTED)
@pytest.mark.real_vllm
@pytest.mark.engine
def test_every_rendered_argv_passes_the_real_parser(version):
    require_real(version)
    bad = {n: r["error"] for n, r in real_verdicts(version).items() if n in ARGVS and not r["ok"]}
    assert not bad, f"the real vLLM {version} parser rejects: {json.dumps(bad, indent=1)}"


@pytest.mark.parametrize("version", realvllm.SUPPORTED)
def test_the_stand_in_accepts_every_rendered_argv(version):
    spec = realvllm.load_flags(version)
    bad = {n: why for n, argv in ARGVS.items() for ok, why in [stand_in_accepts(spec, argv)] if not ok}
    assert not bad, f"the stand-in (flags of vLLM {version}) rejects: {json.dumps(bad, indent=1)}"


def test_the_handmade_flag_list_rejected_what_the_product_renders():
    """Why the flag sets are generated: the hand-assembled list refused `--kv-cache-dtype float16`."""
    ok, why = stand_in_accepts(json.loads(HANDMADE.read_text()), ARGVS["kv-float16/rank0/engine.sh"])
    assert not ok and "invalid choice: 'float16'" in why
    assert stand_in_accepts(realvllm.load_flags("0.19.0"), ARGVS["kv-float16/rank0/engine.sh"])[0]


@pytest.mark.parametrize("version", realvllm.SUPPORTED)
@pytest.mark.real_vllm
@pytest.mark.engine
def test_the_checked_in_flag_set_is_the_real_parsers(version):
    require_real(version)
    assert real_parser(version)[0] == realvllm.load_flags(version), (
        f"the flag set of vLLM {version} is stale: sparkhelpers sim flags --write")


@pytest.mark.parametrize("version", realvllm.SUPPORTED)
@pytest.mark.real_vllm
@pytest.mark.engine
def test_the_stand_in_accepts_and_rejects_what_the_real_parser_does(version):
    require_real(version)
    spec = realvllm.load_flags(version)
    real = real_verdicts(version)
    differ = {name: (real[name]["ok"], real[name]["error"]) for name, argv in PROBE_ARGVS.items()
              if stand_in_accepts(spec, argv)[0] != real[name]["ok"]}
    assert not differ, f"stand-in and real vLLM {version} disagree (real ok, real error): {differ}"
    assert not real["--swap-space 4"]["ok"] and real["--no-enable-prefix-caching"]["ok"], "the probes probe"


def test_the_stand_in_claims_the_version_its_image_declares():
    env = {**os.environ, "PYTHONPATH": str(ENGINE)}

    def version_of(claimed: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "sparksim_engine.vllm_cli", "--version"], capture_output=True,
                              text=True, env={**env, "SPARKSIM_VLLM_VERSION": claimed}, timeout=30)

    for version in realvllm.SUPPORTED:
        assert version_of(version).stdout.strip() == version
    r = version_of("0.1.0")
    assert r.returncode == 2 and "no flag set for vLLM 0.1.0" in r.stderr
    old, new = realvllm.load_flags("0.19.0"), realvllm.load_flags("0.32.0")
    only_new = [f for f in sorted(set(new["flags"]) - set(old["flags"]))
                if new["flags"][f]["type"] in ("store_true", "bool_optional")]
    assert only_new, "0.32.0 has bare flags 0.19.0 lacks"
    assert stand_in_accepts(new, ["serve", "m", only_new[0]])[0]
    assert not stand_in_accepts(old, ["serve", "m", only_new[0]])[0]
