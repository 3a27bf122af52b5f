"""Memory-fit estimate for one GB10 node: weights + KV cache (+ recurrent state) against usable memory.

Everything here is pure arithmetic over ``Arch`` facts (from the catalog or a config.json). A fact
that is missing stays ``None`` and the result says "unknown"; nothing is silently assumed to be bf16.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sparkhelpers.errors import SparkError, UsageError
from sparkhelpers.models.catalog import Arch

GIB = 1024**3
# GB10: 128 GB of LPDDR5x; the OS reports about 121.7 GiB as total system/GPU memory.
GB10_CAPACITY_GIB = 121.7
# Inside vLLM's share (capacity x util) but usable by neither weights nor KV cache: CUDA context and
# library workspaces (~1 GiB), the activation peak of vLLM's profiling run (1-2 GiB at default batch
# sizes) and CUDA graphs (~0.5-1 GiB). The OS itself lives in the (1 - util) share; see OS_MIN_GIB.
RESERVE_GIB = 4.0
# Below this much memory outside vLLM's share, DGX OS + page cache + sshd get squeezed and hosts
# have frozen under load (vllm #46307); the estimate warns.
OS_MIN_GIB = 8.0

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


@dataclass
class FitInput:
    label: str
    arch: Arch
    weights_bytes: float | None = None  # exact bytes (safetensors) when known
    notes: list[str] = field(default_factory=list)


@dataclass
class FitResult:
    model: str
    nodes: int
    tensor_parallel: int
    pipeline_parallel: int
    attention: str | None
    params: float | None
    weight_dtype: str | None
    weights_gib_total: float | None
    weights_gib_per_node: float | None
    kv_dtype: str | None
    kv_bytes_per_token: int | None
    kv_bytes_per_token_per_node: int | None
    max_model_len: int | None
    kv_gib_per_node: float | None
    recurrent_state_gib_per_node: float | None
    capacity_gib: float
    gpu_memory_util: float
    reserve_gib: float
    usable_gib_per_node: float
    os_headroom_gib: float
    max_context_tokens: int | None
    model_max_context: int | None
    fits: bool | None
    verdict: str
    unknown: list[str]
    notes: list[str]

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        for key, value in out.items():
            if isinstance(value, float):
                out[key] = round(value, 4)
        return out


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def estimate(inp: FitInput, *, tp: int = 1, pp: int = 1, max_model_len: int | None = None,
             gpu_memory_util: float = 0.85, kv_cache_dtype: str = "auto", params: float | None = None,
             capacity_gib: float = GB10_CAPACITY_GIB, reserve_gib: float = RESERVE_GIB) -> FitResult:
    """The estimate. ``max_model_len`` None = the model's own maximum context."""
    a = replace(inp.arch, params=params) if params else inp.arch
    notes, unknown = list(inp.notes), []
    nodes = tp * pp

    # Weights: measured bytes > checkpoint size > params x bytes per param.
    bpp = a.bytes_per_param or dtype_bytes(a.weight_dtype)
    if params:
        weights = params * bpp if bpp else None
    elif inp.weights_bytes:
        weights = inp.weights_bytes
    elif a.checkpoint_gib:
        weights = a.checkpoint_gib * GIB
    elif a.params and bpp:
        weights = a.params * bpp
    else:
        weights = None
    if weights is None:
        unknown.append("params" if not a.params and not params else "weight_dtype")
    weights_total = weights / GIB if weights is not None else None
    weights_node = weights_total / nodes if weights_total is not None else None
    if weights_total is not None and nodes > 1:
        notes.append("weights split evenly across nodes (replicated embeddings and norms ignored)")

    # KV cache bytes per token, whole model and per node.
    kv_dtype = (a.kv_dtype or a.weight_dtype) if kv_cache_dtype in ("", "auto") else kv_cache_dtype
    if kv_cache_dtype in ("", "auto") and not a.kv_dtype and dtype_bytes(a.weight_dtype) not in (2.0, 4.0):
        kv_dtype = None  # a quantized checkpoint does not tell us its activation dtype
    kvb = dtype_bytes(kv_dtype)
    if kv_cache_dtype not in ("", "auto") and kvb is None:
        raise UsageError(f"unknown --kv-cache-dtype {kv_cache_dtype!r}", fix="use auto, bf16, fp16, fp8 or fp8_e5m2")
    kv_total = kv_node = None
    state_node = None
    layers_node = _ceil_div(a.layers, pp) if a.layers else None
    if kvb is None:
        unknown.append("kv_dtype")
    elif a.attention == "mla":
        if a.layers and a.kv_lora_rank is not None and a.qk_rope_head_dim is not None:
            per_layer = (a.kv_lora_rank + a.qk_rope_head_dim) * kvb
            kv_total = int(per_layer * a.layers)
            kv_node = int(per_layer * layers_node)  # the latent is replicated on every TP rank
            notes.append("MLA: latent KV (kv_lora_rank + qk_rope_head_dim) is replicated on every TP rank")
        else:
            unknown.append("mla_dims")
    elif a.attention in ("dense", "hybrid"):
        attn_layers = a.attention_layers if a.attention == "hybrid" else a.layers
        if attn_layers and a.kv_heads and a.head_dim:
            kv_total = int(2 * attn_layers * a.kv_heads * a.head_dim * kvb)
            kv_node = int(2 * _ceil_div(attn_layers, pp) * _ceil_div(a.kv_heads, tp) * a.head_dim * kvb)
            if a.kv_heads < tp:
                notes.append(f"{a.kv_heads} KV heads < TP {tp}: each rank keeps a replica of a KV head")
        else:
            unknown.append("kv_heads/head_dim/layers")
        if a.attention == "hybrid":
            if a.recurrent_state_bytes is not None:
                state_node = a.recurrent_state_bytes / tp / pp / GIB
                notes.append("hybrid: KV counts attention layers only, plus one sequence's recurrent state")
            else:
                unknown.append("recurrent_state_bytes")
                notes.append("hybrid: recurrent state size unknown; max context ignores it")
    else:
        unknown.append("attention")

    target = max_model_len or a.max_position_embeddings
    if max_model_len and a.max_position_embeddings and max_model_len > a.max_position_embeddings:
        notes.append(f"max_model_len {max_model_len} exceeds the model's {a.max_position_embeddings} positions")
    kv_gib = kv_node * target / GIB if kv_node is not None and target else None

    usable = capacity_gib * gpu_memory_util - reserve_gib
    os_headroom = capacity_gib * (1 - gpu_memory_util)
    if os_headroom < OS_MIN_GIB:
        notes.append(f"GPU memory util {gpu_memory_util} leaves {os_headroom:.1f} GiB for the OS "
                     f"(< {OS_MIN_GIB:g} GiB): hosts have frozen under load; 0.85 is safer")
    max_ctx = None
    if weights_node is not None and kv_node:
        room = (usable - weights_node - (state_node or 0.0)) * GIB
        max_ctx = max(0, math.floor(room / kv_node))

    if weights_node is None:
        fits, verdict = None, "unknown: weight size unknown (give --params, or a directory with safetensors)"
    elif weights_node > usable:
        fits = False
        verdict = (f"does not fit: weights need {weights_node:.1f} GiB per node, {usable:.1f} GiB usable; "
                   "use more nodes (--nodes) or a smaller quantization")
    elif max_ctx is None:
        fits = None
        verdict = (f"weights fit ({weights_node:.1f} of {usable:.1f} GiB per node); KV cache size unknown "
                   f"({', '.join(unknown)})")
    elif not target:
        fits = None
        verdict = f"weights fit; room for {max_ctx} tokens of KV; max_model_len unknown"
    elif max_ctx < target:
        fits = False
        verdict = (f"does not fit: room for {max_ctx} tokens of KV per node, max_model_len is {target}; "
                   f"lower --max-model-len to {max_ctx}, use fp8 KV or more nodes")
    else:
        fits = True
        verdict = f"fits: room for {max_ctx} tokens of KV ({max_ctx / target:.1f}x max_model_len {target})"

    return FitResult(
        model=inp.label, nodes=nodes, tensor_parallel=tp, pipeline_parallel=pp, attention=a.attention,
        params=a.params, weight_dtype=a.weight_dtype, weights_gib_total=weights_total,
        weights_gib_per_node=weights_node, kv_dtype=kv_dtype, kv_bytes_per_token=kv_total,
        kv_bytes_per_token_per_node=kv_node, max_model_len=target, kv_gib_per_node=kv_gib,
        recurrent_state_gib_per_node=state_node, capacity_gib=capacity_gib, gpu_memory_util=gpu_memory_util,
        reserve_gib=reserve_gib, usable_gib_per_node=usable, os_headroom_gib=os_headroom,
        max_context_tokens=max_ctx, model_max_context=a.max_position_embeddings, fits=fits, verdict=verdict,
        unknown=unknown, notes=notes,
    )


# ---- config.json -> Arch ------------------------------------------------------------------------

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


def _safetensors_header(path: Path) -> dict:
    with path.open("rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        return json.loads(fh.read(length))


def fit_input_from_dir(path: Path) -> FitInput:
    """config.json (+ the safetensors index's total_size, or single-file safetensors headers)."""
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise SparkError(f"{path} has no config.json", fix="point at a model directory (a snapshot in the HF cache)")
    try:
        raw = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SparkError(f"cannot read {cfg_file}: {exc}", fix="re-download the model") from None
    arch = arch_from_config(raw)
    inp = FitInput(label=str(path), arch=arch)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        meta = (json.loads(index.read_text(encoding="utf-8")).get("metadata") or {})
        if meta.get("total_size"):
            inp.weights_bytes = float(meta["total_size"])
            inp.notes.append("weight bytes from the safetensors index (metadata.total_size)")
        if meta.get("total_parameters"):
            inp.arch = replace(inp.arch, params=float(meta["total_parameters"]))
    else:
        files = sorted(path.glob("*.safetensors"))
        if files:
            total_bytes, total_params = 0, 0
            for f in files:
                for name, t in _safetensors_header(f).items():
                    if name == "__metadata__":
                        continue
                    start, end = t["data_offsets"]
                    total_bytes += end - start
                    total_params += math.prod(t["shape"])
            inp.weights_bytes = float(total_bytes)
            inp.arch = replace(inp.arch, params=float(total_params))
            inp.notes.append("weights and parameter count from the safetensors headers")
    return inp
