"""Fit estimates against hand-computed values from real config.json files (tests/fixtures/models).

Usable memory per node at util 0.85 = 121.7 GiB x 0.85 - 4 GiB reserve = 99.445 GiB.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest

from sparkhelpers.errors import SparkError
from sparkhelpers.models import fit

FIX = Path(__file__).parent / "fixtures" / "models"
GIB = 1024**3
USABLE = 121.7 * 0.85 - 4  # 99.445 GiB


def run_fit(sparkhelpers_bin, *args: str) -> tuple[int, dict]:
    r = subprocess.run([*sparkhelpers_bin, "models", "fit", *args, "--json"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    return r.returncode, json.loads(r.stdout)


def test_dense_llama_3_1_70b_tp2(sparkhelpers_bin):
    _, d = run_fit(sparkhelpers_bin, str(FIX / "llama-3.1-70b"), "--tp", "2", "--max-model-len", "32768")
    # weights: index total_size 141,107,412,992 B / 2 nodes = 65.71 GiB per node
    assert d["weights_gib_per_node"] == pytest.approx(65.71, abs=0.01)
    # dense KV: 2 (K,V) x 80 layers x 8 KV heads x 128 head dim x 2 B (bf16) = 327,680 B per token
    assert d["kv_bytes_per_token"] == 327680
    # TP 2 splits the 8 KV heads: 4 per rank -> 163,840 B per token per node
    assert d["kv_bytes_per_token_per_node"] == 163840
    # one 32,768-token sequence: 163,840 x 32,768 = 5.0 GiB
    assert d["kv_gib_per_node"] == pytest.approx(5.0)
    assert d["usable_gib_per_node"] == pytest.approx(99.45, abs=0.01)
    # (99.445 - 65.7086) GiB / 163,840 B = 221,097 tokens
    assert d["max_context_tokens"] == 221097
    assert d["fits"] is True


def test_dense_llama_70b_on_one_node_does_not_fit(sparkhelpers_bin):
    r = subprocess.run([*sparkhelpers_bin, "models", "fit", str(FIX / "llama-3.1-70b")], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1  # 131.4 GiB of weights > 99.4 GiB usable
    assert "does not fit: weights need 131.4 GiB per node" in r.stdout


def test_moe_qwen3_30b_a3b_with_params(sparkhelpers_bin):
    _, d = run_fit(sparkhelpers_bin, str(FIX / "qwen3-30b-a3b"), "--params", "30.5e9", "--max-model-len", "32768")
    # 30.5e9 params x 2 B (torch_dtype bfloat16) = 56.81 GiB
    assert d["weights_gib_per_node"] == pytest.approx(56.81, abs=0.01)
    # 2 x 48 layers x 4 KV heads x 128 x 2 B = 98,304 B per token; x 32,768 = 3.0 GiB
    assert d["kv_bytes_per_token"] == 98304
    assert d["kv_gib_per_node"] == pytest.approx(3.0)
    # (99.445 - 56.8107) GiB / 98,304 B = 465,680 tokens
    assert d["max_context_tokens"] == 465680
    assert d["fits"] is True


def test_unknown_params_are_reported_not_guessed(sparkhelpers_bin):
    _, d = run_fit(sparkhelpers_bin, str(FIX / "qwen3-30b-a3b"))
    assert d["weights_gib_per_node"] is None
    assert d["fits"] is None and "params" in d["unknown"]
    assert d["verdict"].startswith("unknown")
    assert d["kv_bytes_per_token"] == 98304  # what is known is still reported


def test_mla_deepseek_v3_replicated_across_tp(sparkhelpers_bin):
    _, d = run_fit(sparkhelpers_bin, str(FIX / "deepseek-v3"), "--nodes", "8", "--max-model-len", "32768")
    # weights: total_size 688,586,727,753 B / 8 = 80.16 GiB per node
    assert d["weights_gib_per_node"] == pytest.approx(80.16, abs=0.01)
    # MLA: (kv_lora_rank 512 + qk_rope_head_dim 64) x 61 layers x 2 B = 70,272 B per token ...
    assert d["kv_bytes_per_token"] == 70272
    # ... and NOT divided by TP 8: every rank keeps the whole latent
    assert d["kv_bytes_per_token_per_node"] == 70272
    assert d["attention"] == "mla"
    # (99.445 - 80.1620) GiB / 70,272 B = 294,639 tokens
    assert d["max_context_tokens"] == 294639
    assert d["fits"] is True
    # fp8 KV halves the bytes: 35,136 B per token -> 589,279 tokens
    _, d8 = run_fit(sparkhelpers_bin, str(FIX / "deepseek-v3"), "--nodes", "8", "--kv-cache-dtype", "fp8")
    assert d8["kv_bytes_per_token"] == 35136
    assert d8["max_context_tokens"] == 589279


def test_hybrid_qwen3_next_counts_attention_layers_and_state(sparkhelpers_bin):
    _, d = run_fit(sparkhelpers_bin, str(FIX / "qwen3-next-80b-a3b"), "--tp", "2", "--params", "80e9",
                   "--max-model-len", "65536")
    # full_attention_interval 4 over 48 layers -> 12 attention layers:
    # 2 x 12 x 2 KV heads x 256 head dim x 2 B = 24,576 B per token; TP 2 -> 1 head per rank = 12,288
    assert d["kv_bytes_per_token"] == 24576
    assert d["kv_bytes_per_token_per_node"] == 12288
    # 36 Gated DeltaNet layers x (32 x 128 x 128 state + 3 x (2 x 16 x 128 + 32 x 128) conv) x 2 B
    # = 39,518,208 B per sequence; TP 2 -> 19,759,104 B = 18.84 MiB per node
    assert d["recurrent_state_gib_per_node"] * GIB == pytest.approx(39518208 / 2, rel=1e-3)
    # weights 80e9 x 2 B / 2 = 74.51 GiB; (99.445 - 74.5058 - 0.0184) GiB / 12,288 B = 2,177,612 tokens
    assert d["weights_gib_per_node"] == pytest.approx(74.51, abs=0.01)
    assert d["max_context_tokens"] == 2177612
    assert d["fits"] is True


def test_hybrid_nemotron_h_state_matches_the_catalog():
    arch = fit.arch_from_config(json.loads((FIX / "nemotron-3-nano-30b-a3b" / "config.json").read_text()))
    assert arch.attention == "hybrid" and arch.attention_layers == 6  # six '*' in the pattern
    # 23 Mamba-2 layers x (64 x 64 x 128 x 4 B fp32 SSM + 3 x (64 x 64 + 2 x 8 x 128) x 2 B conv)
    assert arch.recurrent_state_bytes == 23 * (64 * 64 * 128 * 4 + 3 * (64 * 64 + 2 * 8 * 128) * 2) == 49082368
    from sparkhelpers.models.catalog import load_catalog

    assert load_catalog()["nemotron-3-nano-30b-a3b"].arch.recurrent_state_bytes == 49082368
    r = fit.estimate(fit.FitInput("n", arch), params=31.6e9, max_model_len=131072)
    # 2 x 6 x 2 x 128 x 2 B = 6,144 B per token; (99.445 - 58.86 - 0.0457) GiB / 6,144 = 7,084,826
    assert r.kv_bytes_per_token == 6144
    assert r.max_context_tokens == 7084826


def test_catalog_preset_fit_and_max_model_len_too_long(sparkhelpers_bin):
    _, d = run_fit(sparkhelpers_bin, "qwen3-30b-a3b")
    assert d["fits"] is True and d["max_model_len"] == 32768
    r = subprocess.run([*sparkhelpers_bin, "models", "fit", "llama-3.1-70b-fp8", "--max-model-len", "1000000"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "does not fit: room for" in r.stdout and "lower --max-model-len" in r.stdout


def test_quantized_config_without_activation_dtype_is_unknown_kv():
    arch = fit.arch_from_config({"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 256,
                                 "quantization_config": {"quant_method": "fp8"}})
    r = fit.estimate(fit.FitInput("q", arch), params=1e9, max_model_len=1024)
    assert r.weight_dtype == "fp8" and r.weights_gib_total == pytest.approx(1e9 / GIB)
    assert r.kv_dtype is None and "kv_dtype" in r.unknown and r.fits is None


def test_single_safetensors_header_gives_params_and_bytes(tmp_path):
    import struct

    header = json.dumps({"a": {"dtype": "BF16", "shape": [4, 8], "data_offsets": [0, 64]},
                         "b": {"dtype": "BF16", "shape": [8], "data_offsets": [64, 80]}}).encode()
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 80)
    (tmp_path / "config.json").write_text(json.dumps({"num_hidden_layers": 1, "num_attention_heads": 2,
                                                      "hidden_size": 8, "torch_dtype": "bfloat16"}))
    inp = fit.fit_input_from_dir(tmp_path)
    assert inp.arch.params == 40 and inp.weights_bytes == 80


def test_high_util_warns_about_os_headroom():
    from sparkhelpers.models.catalog import load_catalog

    r = fit.estimate(fit.FitInput("x", load_catalog()["qwen3-8b"].arch), gpu_memory_util=0.95)
    assert any("for the OS" in n for n in r.notes)
    assert math.isclose(r.usable_gib_per_node, 121.7 * 0.95 - 4)


def test_bad_inputs_are_one_clear_line(sparkhelpers_bin, tmp_path):
    r = subprocess.run([*sparkhelpers_bin, "models", "fit", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 1 and "has no config.json" in r.stderr
    r = subprocess.run([*sparkhelpers_bin, "models", "fit", "qwen3-8b", "--nodes", "3", "--tp", "2"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "not a multiple" in r.stderr
    with pytest.raises(SparkError):
        fit.estimate(fit.FitInput("x", fit.Arch(layers=1)), kv_cache_dtype="fp3")


def test_raw_repo_id_uses_its_cached_config(sparkhelpers_bin, isolated_env):
    import os
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from hubstub import write_cached_model

    config = (FIX / "llama-3.1-70b" / "config.json").read_bytes()
    write_cached_model(os.environ["HF_CACHE"], "acme/llama-like", {"config.json": config})
    _, d = run_fit(sparkhelpers_bin, "acme/llama-like", "--params", "70.6e9", "--tp", "2")
    assert d["model"] == "acme/llama-like" and d["kv_bytes_per_token"] == 327680  # from the cached config.json
    offline = subprocess.run([*sparkhelpers_bin, "models", "fit", "acme/not-cached"], capture_output=True, text=True,
                             timeout=60, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 1 and "not in the cache" in offline.stderr and "HF_HUB_OFFLINE" in offline.stderr


def _fp8_shard(values: int) -> bytes:
    import struct as st

    header = json.dumps({"w": {"dtype": "F8_E4M3", "shape": [values], "data_offsets": [0, values]},
                         "scale": {"dtype": "F32", "shape": [4], "data_offsets": [values, values + 16]}}).encode()
    header += b" " * (-len(header) % 8)
    return st.pack("<Q", len(header)) + header + b"\0" * (values + 16)


def test_raw_repo_id_sized_from_the_hubs_safetensors_headers(sparkhelpers_bin, monkeypatch, tmp_path):
    """The Hub (a local stub of its API) gives config.json and each shard's header by a range request."""
    import os
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from hubstub import HubStub, Repo, fake_model

    config = json.loads((FIX / "llama-3.1-70b" / "config.json").read_text())
    config.pop("torch_dtype", None)  # the dtype must come from the headers
    files = {"config.json": json.dumps(config).encode(), "model.safetensors": _fp8_shard(3_000_000)}
    hub = HubStub(repos={"acme/fp8-model": Repo(files), "acme/tiny": Repo(fake_model())}).start()
    try:
        env = {**os.environ, "HF_ENDPOINT": hub.url}
        r = subprocess.run([*sparkhelpers_bin, "models", "fit", "acme/fp8-model", "--kv-cache-dtype", "bf16", "--json"],
                           capture_output=True, text=True, timeout=120, env=env)
        assert r.returncode == 0, r.stderr
        d = json.loads(r.stdout)
        assert d["weight_dtype"] == "fp8" and d["params"] == 3_000_004
        assert d["weights_gib_total"] == pytest.approx((3_000_000 + 16) / GIB, abs=1e-4)
        assert d["kv_bytes_per_token"] == 327680  # the architecture from config.json (an fp8 file: KV dtype given)
        ranges = [rng for method, path, rng, _ in hub.requests
                  if path.endswith("model.safetensors") and method == "GET"]
        assert ranges and all(rng.startswith("bytes=0-") for rng in ranges)  # headers only, not the weights
        r = subprocess.run([*sparkhelpers_bin, "models", "fit", "acme/tiny", "--json"], capture_output=True, text=True,
                           timeout=120, env=env)
        assert r.returncode == 0, r.stderr
        tiny = json.loads(r.stdout)
        assert tiny["params"] == 800_000 and tiny["weight_dtype"] == "bf16"  # two shards through the index
    finally:
        hub.stop()


def test_params_with_dtype_sizes_an_unknown_repo(sparkhelpers_bin):
    """The suggested fix (--params) now answers, with --dtype for the bytes per parameter."""
    _, d = run_fit(sparkhelpers_bin, "acme/unknown-8b", "--params", "8e9", "--dtype", "bf16")
    assert d["weight_dtype"] == "bf16" and d["weights_gib_total"] == pytest.approx(8e9 * 2 / GIB, rel=1e-4)


def test_catalog_and_fit_do_not_import_each_other():
    """Arch lives in models/arch.py: the catalog validates it, the fit estimate reads it, no circle."""
    import ast

    import sparkhelpers.models.catalog as catalog_mod

    def imported(module) -> set[str]:
        tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
        return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module} | {
            a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}

    assert "sparkhelpers.models.fit" not in imported(catalog_mod)
    assert "sparkhelpers.models.catalog" not in imported(fit)
    assert fit.Arch is catalog_mod.Arch
