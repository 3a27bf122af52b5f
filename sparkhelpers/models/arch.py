"""Architecture facts of a model (``Arch``): the catalog's ``arch:`` block or a Hugging Face config.json.

Its own module so the catalog (which validates ``arch:``) and the fit estimate (which does the
arithmetic) both import it and neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ATTENTION_KINDS = ("dense", "mla", "hybrid")

# field -> python types, for validating a catalog entry's arch block.
ARCH_FIELDS: dict[str, tuple[type, ...]] = {
    "params": (float, int),
    "weight_dtype": (str,),
    "bytes_per_param": (float, int),
    "checkpoint_gib": (float, int),
    "layers": (int,),
    "kv_heads": (int,),
    "head_dim": (int,),
    "attention": (str,),
    "kv_lora_rank": (int,),
    "qk_rope_head_dim": (int,),
    "attention_layers": (int,),
    "recurrent_state_bytes": (int,),
    "max_position_embeddings": (int,),
    "kv_dtype": (str,),
}


@dataclass(frozen=True)
class Arch:
    """Architecture facts for the fit estimate. None = unknown (never guessed)."""

    params: float | None = None
    weight_dtype: str | None = None
    bytes_per_param: float | None = None
    checkpoint_gib: float | None = None
    layers: int | None = None
    kv_heads: int | None = None
    head_dim: int | None = None
    attention: str | None = None
    kv_lora_rank: int | None = None
    qk_rope_head_dim: int | None = None
    attention_layers: int | None = None
    recurrent_state_bytes: int | None = None
    max_position_embeddings: int | None = None
    kv_dtype: str | None = None


_DTYPE_BYTES = {
    "fp32": 4.0, "float32": 4.0, "float": 4.0,
    "bf16": 2.0, "bfloat16": 2.0, "fp16": 2.0, "float16": 2.0, "half": 2.0,
    "fp8": 1.0, "fp8_e4m3": 1.0, "fp8_e5m2": 1.0, "float8_e4m3fn": 1.0, "float8_e5m2": 1.0, "int8": 1.0,
    # 4-bit formats with their block scales: NVFP4 = 4 bits + an fp8 scale per 16 values,
    # MXFP4 = 4 bits + an 8-bit scale per 32 values; int4 (GPTQ/AWQ) counted without its scales.
    "nvfp4": 0.5625, "fp4": 0.5625, "mxfp4": 0.53125, "int4": 0.5, "gptq": 0.5, "awq": 0.5,
}


def dtype_bytes(name: str | None) -> float | None:
    if not name:
        return None
    return _DTYPE_BYTES.get(str(name).lower().replace("torch.", ""))


def _first(cfg: dict, *keys: str) -> Any:
    for key in keys:
        if cfg.get(key) is not None:
            return cfg[key]
    return None


def _text_config(cfg: dict) -> dict:
    for key in ("text_config", "llm_config", "language_config"):
        if isinstance(cfg.get(key), dict):
            return {**cfg[key], **{k: v for k, v in cfg.items() if k == "quantization_config"}}
    return cfg


def _weight_dtype(cfg: dict, torch_dtype: str | None) -> str | None:
    q = cfg.get("quantization_config") or {}
    if not q:
        return torch_dtype
    method = str(q.get("quant_method", "")).lower()
    algo = str(q.get("quant_algo", "")).lower()
    if method == "fp8" or algo == "fp8":
        return "fp8"
    if method == "mxfp4":
        return "mxfp4"
    if algo in ("nvfp4", "fp4") or method == "nvfp4":
        return "nvfp4"
    if method in ("gptq", "awq") and q.get("bits") == 4:
        return "int4"
    if method in ("gptq", "awq") and q.get("bits") == 8:
        return "int8"
    return None  # compressed-tensors and friends: too many layouts to guess


def _dtype_name(value: Any) -> str | None:
    if not value:
        return None
    name = str(value).replace("torch.", "")
    return {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}.get(name, name)


def arch_from_config(raw: dict) -> Arch:
    """Architecture facts from a Hugging Face config.json (nested text/LLM configs understood)."""
    cfg = _text_config(raw)
    torch_dtype = _dtype_name(_first(cfg, "torch_dtype", "dtype") or _first(raw, "torch_dtype", "dtype"))
    layers = _first(cfg, "num_hidden_layers", "n_layer", "num_layers", "n_layers")
    heads = _first(cfg, "num_attention_heads", "n_head")
    kv_heads = _first(cfg, "num_key_value_heads", "num_kv_heads", "multi_query_group_num") or heads
    head_dim = cfg.get("head_dim") or (cfg["hidden_size"] // heads if cfg.get("hidden_size") and heads else None)
    dbytes = dtype_bytes(torch_dtype)
    attention, attn_layers, state = "dense", None, None
    if cfg.get("kv_lora_rank"):
        attention = "mla"
    elif cfg.get("hybrid_override_pattern"):  # Nemotron-H: M = Mamba-2, * = attention, - / E = MLP / MoE
        pattern = str(cfg["hybrid_override_pattern"])
        attention, attn_layers = "hybrid", pattern.count("*")
        state = _mamba2_state(cfg, pattern.count("M"), torch_dtype)
    elif "linear_attention" in (cfg.get("layer_types") or []) or cfg.get("full_attention_interval"):
        # Qwen3-Next style: Gated DeltaNet layers with a fixed-size state, every Nth layer full attention.
        types = cfg.get("layer_types") or [
            "full_attention" if (i + 1) % int(cfg["full_attention_interval"]) == 0 else "linear_attention"
            for i in range(int(layers or 0))]
        attention, attn_layers = "hybrid", types.count("full_attention")
        state = _deltanet_state(cfg, types.count("linear_attention"), dbytes)
    return Arch(
        params=None, weight_dtype=_weight_dtype(cfg, torch_dtype), layers=layers,
        kv_heads=kv_heads if attention != "mla" else None, head_dim=head_dim if attention != "mla" else None,
        attention=attention, kv_lora_rank=cfg.get("kv_lora_rank"), qk_rope_head_dim=cfg.get("qk_rope_head_dim"),
        attention_layers=attn_layers, recurrent_state_bytes=state,
        max_position_embeddings=_first(cfg, "max_position_embeddings", "n_positions", "max_sequence_length"),
        kv_dtype=torch_dtype if dbytes in (2.0, 4.0) else None,
    )


def _mamba2_state(cfg: dict, mamba_layers: int, torch_dtype: str | None) -> int | None:
    """One sequence's Mamba-2 state: SSM (heads x head_dim x state) + conv window, per Mamba layer."""
    try:
        nheads, hdim = int(cfg["mamba_num_heads"]), int(cfg["mamba_head_dim"])
        nstate, groups, kernel = int(cfg["ssm_state_size"]), int(cfg["n_groups"]), int(cfg["conv_kernel"])
    except (KeyError, TypeError, ValueError):
        return None
    ssm_b = dtype_bytes(_dtype_name(cfg.get("mamba_ssm_cache_dtype")) or torch_dtype)
    conv_b = dtype_bytes(torch_dtype)
    if ssm_b is None or conv_b is None:
        return None
    ssm = nheads * hdim * nstate * ssm_b
    conv = (kernel - 1) * (nheads * hdim + 2 * groups * nstate) * conv_b
    return int((ssm + conv) * mamba_layers)


def _deltanet_state(cfg: dict, linear_layers: int, dbytes: float | None) -> int | None:
    """One sequence's Gated DeltaNet state: value heads x key dim x value dim + conv window, per layer."""
    try:
        nv, nk = int(cfg["linear_num_value_heads"]), int(cfg["linear_num_key_heads"])
        dk, dv, kernel = int(cfg["linear_key_head_dim"]), int(cfg["linear_value_head_dim"]), int(
            cfg["linear_conv_kernel_dim"])
    except (KeyError, TypeError, ValueError):
        return None
    if dbytes is None:
        return None
    ssm = nv * dk * dv
    conv = (kernel - 1) * (2 * nk * dk + nv * dv)
    return int((ssm + conv) * dbytes * linear_layers)
