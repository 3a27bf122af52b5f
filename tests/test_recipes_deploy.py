"""Recipe export to llama-swap and Kubernetes; manifests checked with the real ray and kubernetes packages."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from oracles import oracle_venv

from sparkhelpers.errors import SparkError
from sparkhelpers.recipes import export, load
from sparkhelpers.recipes.deploy import LLAMA_SWAP_KEYS, LLAMA_SWAP_MODEL_KEYS

ROOT = Path(__file__).resolve().parents[1]
RECIPE = """\
recipe: 1
name: qwen3-8b-pair
model: Qwen/Qwen3-8B
image: vllm/vllm-openai:v0.19.0
served_name: qwen3-8b
nodes: {min: 1, max: 2}
engine_args: {max_model_len: 32768, speculative_config: {method: ngram, num_speculative_tokens: 4}}
env: {VLLM_LOGGING_LEVEL: INFO}
"""


@pytest.fixture
def recipe_file(tmp_path):
    path = tmp_path / "pair.yaml"
    path.write_text(RECIPE)
    return path


def k8s_python() -> Path:
    return oracle_venv("k8s") / "bin" / "python"


def test_llama_swap_entry_uses_only_documented_keys_and_the_foreground_mode(recipe_file):
    cfg = yaml.safe_load(export.export(load(str(recipe_file)), "llama-swap", ref=str(recipe_file), ttl=600))
    assert set(cfg) <= set(LLAMA_SWAP_KEYS) and cfg["healthCheckTimeout"] >= 15
    entry = cfg["models"]["qwen3-8b-pair"]
    assert set(entry) <= set(LLAMA_SWAP_MODEL_KEYS)
    assert entry["cmd"] == f"sparkhelpers cluster run --recipe {recipe_file} --port ${{PORT}}"
    assert entry["cmdStop"] == "kill -TERM ${PID}" and entry["checkEndpoint"] == "/health"
    assert entry["proxy"] == "http://127.0.0.1:${PORT}" and entry["ttl"] == 600
    assert entry["useModelName"] == "qwen3-8b" and entry["aliases"] == ["qwen3-8b"]


def _pods(doc: dict) -> list[dict]:
    spec = doc["spec"]
    if doc["kind"] == "LeaderWorkerSet":
        lwt = spec["leaderWorkerTemplate"]
        return [lwt[k] for k in ("leaderTemplate", "workerTemplate") if k in lwt]
    cluster = spec.get("rayClusterConfig", spec)
    return [cluster["headGroupSpec"]["template"], *(g["template"] for g in cluster.get("workerGroupSpecs", []))]


@pytest.mark.parametrize("target", ["lws", "raycluster", "rayservice"])
def test_kubernetes_pods_carry_what_a_spark_needs(recipe_file, target):
    doc = yaml.safe_load(export.export(load(str(recipe_file), nodes=2), target, hf_cache="/raid/hf-cache"))
    pods = _pods(doc)
    assert len(pods) == 2
    for pod in pods:
        spec = pod["spec"]
        (c,) = spec["containers"]
        env = {e["name"]: e["value"] for e in c["env"]}
        assert spec["hostNetwork"] is True
        assert c["resources"]["limits"] == {"nvidia.com/gpu": "1"}
        assert {"name": "infiniband", "mountPath": "/dev/infiniband"} in c["volumeMounts"]
        assert {"name": "hf-cache", "hostPath": {"path": "/raid/hf-cache", "type": "Directory"}} in spec["volumes"]
        assert env["HF_HUB_OFFLINE"] == "1" and env["VLLM_LOGGING_LEVEL"] == "INFO"
        assert "VLLM_HOST_IP" not in env  # never the pod IP: discovery writes the fabric address
        (init,) = spec["initContainers"]
        assert "sparkhelpers discover --exports" in init["command"][-1]
        sourced = any(m.get("subPath") == "fabric.env" for m in c["volumeMounts"]) or \
            "/run/sparkhelpers/fabric.env" in c["command"][-1]
        assert sourced


def test_lws_ranks_and_serve_command(recipe_file):
    doc = yaml.safe_load(export.export(load(str(recipe_file), nodes=2), "lws"))
    lwt = doc["spec"]["leaderWorkerTemplate"]
    leader = lwt["leaderTemplate"]["spec"]["containers"][0]["command"][-1]
    worker = lwt["workerTemplate"]["spec"]["containers"][0]["command"][-1]
    assert lwt["size"] == 2
    assert "--node-rank 0" in leader and "--port 8000" in leader and "--headless" not in leader
    assert "--node-rank '$(LWS_WORKER_INDEX)'" in worker and "--headless" in worker
    assert "--speculative-config '{\"method\":\"ngram\",\"num_speculative_tokens\":4}'" in leader
    assert "readinessProbe" not in lwt["workerTemplate"]["spec"]["containers"][0]


def test_rayservice_llm_config(recipe_file):
    doc = yaml.safe_load(export.export(load(str(recipe_file), nodes=2), "rayservice"))
    serve = yaml.safe_load(doc["spec"]["serveConfigV2"])
    (app,) = serve["applications"]
    (llm,) = app["args"]["llm_configs"]
    assert app["import_path"] == "ray.serve.llm:build_openai_app"
    assert llm["model_loading_config"] == {"model_id": "qwen3-8b", "model_source": "Qwen/Qwen3-8B"}
    assert llm["engine_kwargs"]["tensor_parallel_size"] == 2
    assert llm["engine_kwargs"]["speculative_config"] == {"method": "ngram", "num_speculative_tokens": 4}


@pytest.mark.parametrize("target", ["lws", "raycluster", "rayservice"])
def test_manifests_pass_the_real_schemas(recipe_file, tmp_path, target):
    python = k8s_python()
    for nodes in (1, 2):
        out = tmp_path / f"{target}-{nodes}.yaml"
        out.write_text(export.export(load(str(recipe_file), nodes=nodes), target))
        r = subprocess.run([str(python), str(ROOT / "tests" / "oracle" / "k8s_validate.py"), str(out)],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        result = json.loads(r.stdout.strip().splitlines()[-1])
        assert result["ok"], result["errors"]
        assert len(result["checked"]) >= (1 if nodes == 1 else 2)


def test_validator_catches_a_bad_pod_field(tmp_path):
    python = k8s_python()
    doc = yaml.safe_load(export.export(load_text(tmp_path), "lws"))
    doc["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]["hostNetwrk"] = True
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    r = subprocess.run([str(python), str(ROOT / "tests" / "oracle" / "k8s_validate.py"), str(bad)],
                       capture_output=True, text=True, timeout=120)
    assert json.loads(r.stdout.strip().splitlines()[-1])["ok"] is False


def load_text(tmp_path: Path):
    path = tmp_path / "one.yaml"
    path.write_text(RECIPE)
    return load(str(path))


def test_llama_cpp_recipe_has_no_kubernetes_export(tmp_path):
    path = tmp_path / "gguf.yaml"
    path.write_text("recipe: 1\nname: tiny\nmodel: bartowski/SmolLM2-135M-Instruct-GGUF:Q4_K_M\nruntime: llama-cpp\n"
                    "image: sparkhelpers-llama:1\n")
    with pytest.raises(SparkError, match="covers vLLM recipes only"):
        export.export(load(str(path)), "lws")
