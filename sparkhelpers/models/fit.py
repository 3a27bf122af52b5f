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
from sparkhelpers.models.arch import Arch, arch_from_config, dtype_bytes

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


def _weights_bytes(inp: FitInput, a: Arch, params: float | None) -> float | None:
    """Measured bytes > checkpoint size > params x bytes per param (``--params`` overrides all)."""
    bpp = a.bytes_per_param or dtype_bytes(a.weight_dtype)
    if params:
        return params * bpp if bpp else None
    if inp.weights_bytes:
        return inp.weights_bytes
    if a.checkpoint_gib:
        return a.checkpoint_gib * GIB
    if a.params and bpp:
        return a.params * bpp
    return None


def _kv_dtype(a: Arch, kv_cache_dtype: str) -> tuple[str | None, float | None]:
    """The KV cache dtype and its bytes per value; None when it cannot be known."""
    auto = kv_cache_dtype in ("", "auto")
    kv_dtype = (a.kv_dtype or a.weight_dtype) if auto else kv_cache_dtype
    if auto and not a.kv_dtype and dtype_bytes(a.weight_dtype) not in (2.0, 4.0):
        kv_dtype = None  # a quantized checkpoint does not tell us its activation dtype
    kvb = dtype_bytes(kv_dtype)
    if not auto and kvb is None:
        raise UsageError(f"unknown --kv-cache-dtype {kv_cache_dtype!r}", fix="use auto, bf16, fp16, fp8 or fp8_e5m2")
    return kv_dtype, kvb


@dataclass
class _Kv:
    total: int | None = None  # bytes per token, whole model
    node: int | None = None  # bytes per token on one node
    state_gib: float | None = None  # hybrid: one sequence's recurrent state per node


def _kv_per_token(a: Arch, kvb: float | None, tp: int, pp: int, notes: list[str], unknown: list[str]) -> _Kv:
    kv = _Kv()
    if kvb is None:
        unknown.append("kv_dtype")
    elif a.attention == "mla":
        if a.layers and a.kv_lora_rank is not None and a.qk_rope_head_dim is not None:
            per_layer = (a.kv_lora_rank + a.qk_rope_head_dim) * kvb
            kv.total = int(per_layer * a.layers)
            kv.node = int(per_layer * _ceil_div(a.layers, pp))  # the latent is replicated on every TP rank
            notes.append("MLA: latent KV (kv_lora_rank + qk_rope_head_dim) is replicated on every TP rank")
        else:
            unknown.append("mla_dims")
    elif a.attention in ("dense", "hybrid"):
        attn_layers = a.attention_layers if a.attention == "hybrid" else a.layers
        if attn_layers and a.kv_heads and a.head_dim:
            kv.total = int(2 * attn_layers * a.kv_heads * a.head_dim * kvb)
            kv.node = int(2 * _ceil_div(attn_layers, pp) * _ceil_div(a.kv_heads, tp) * a.head_dim * kvb)
            if a.kv_heads < tp:
                notes.append(f"{a.kv_heads} KV heads < TP {tp}: each rank keeps a replica of a KV head")
        else:
            unknown.append("kv_heads/head_dim/layers")
    else:
        unknown.append("attention")
    if a.attention == "hybrid" and kvb is not None:
        if a.recurrent_state_bytes is not None:
            kv.state_gib = a.recurrent_state_bytes / tp / pp / GIB
            notes.append("hybrid: KV counts attention layers only, plus one sequence's recurrent state")
        else:
            unknown.append("recurrent_state_bytes")
            notes.append("hybrid: recurrent state size unknown; max context ignores it")
    return kv


def _verdict(weights_node: float | None, usable: float, max_ctx: int | None, target: int | None,
             unknown: list[str]) -> tuple[bool | None, str]:
    if weights_node is None:
        return None, "unknown: weight size unknown (give --params, or a directory with safetensors)"
    if weights_node > usable:
        return False, (f"does not fit: weights need {weights_node:.1f} GiB per node, {usable:.1f} GiB usable; "
                       "use more nodes (--nodes) or a smaller quantization")
    if max_ctx is None:
        return None, (f"weights fit ({weights_node:.1f} of {usable:.1f} GiB per node); KV cache size unknown "
                      f"({', '.join(unknown)})")
    if not target:
        return None, f"weights fit; room for {max_ctx} tokens of KV; max_model_len unknown"
    if max_ctx < target:
        return False, (f"does not fit: room for {max_ctx} tokens of KV per node, max_model_len is {target}; "
                       f"lower --max-model-len to {max_ctx}, use fp8 KV or more nodes")
    return True, f"fits: room for {max_ctx} tokens of KV ({max_ctx / target:.1f}x max_model_len {target})"


def estimate(inp: FitInput, *, tp: int = 1, pp: int = 1, max_model_len: int | None = None,
             gpu_memory_util: float = 0.85, kv_cache_dtype: str = "auto", params: float | None = None,
             capacity_gib: float = GB10_CAPACITY_GIB, reserve_gib: float = RESERVE_GIB) -> FitResult:
    """The estimate. ``max_model_len`` None = the model's own maximum context."""
    a = replace(inp.arch, params=params) if params else inp.arch
    notes, unknown = list(inp.notes), []
    nodes = tp * pp
    weights = _weights_bytes(inp, a, params)
    if weights is None:
        unknown.append("params" if not a.params and not params else "weight_dtype")
    weights_total = weights / GIB if weights is not None else None
    weights_node = weights_total / nodes if weights_total is not None else None
    if weights_total is not None and nodes > 1:
        notes.append("weights split evenly across nodes (replicated embeddings and norms ignored)")
    kv_dtype, kvb = _kv_dtype(a, kv_cache_dtype)
    kv = _kv_per_token(a, kvb, tp, pp, notes, unknown)

    target = max_model_len or a.max_position_embeddings
    if max_model_len and a.max_position_embeddings and max_model_len > a.max_position_embeddings:
        notes.append(f"max_model_len {max_model_len} exceeds the model's {a.max_position_embeddings} positions")
    kv_gib = kv.node * target / GIB if kv.node is not None and target else None
    usable = capacity_gib * gpu_memory_util - reserve_gib
    os_headroom = capacity_gib * (1 - gpu_memory_util)
    if os_headroom < OS_MIN_GIB:
        notes.append(f"GPU memory util {gpu_memory_util} leaves {os_headroom:.1f} GiB for the OS "
                     f"(< {OS_MIN_GIB:g} GiB): hosts have frozen under load; 0.85 is safer")
    max_ctx = None
    if weights_node is not None and kv.node:
        room = (usable - weights_node - (kv.state_gib or 0.0)) * GIB
        max_ctx = max(0, math.floor(room / kv.node))
    fits, verdict = _verdict(weights_node, usable, max_ctx, target, unknown)
    return FitResult(
        model=inp.label, nodes=nodes, tensor_parallel=tp, pipeline_parallel=pp, attention=a.attention,
        params=a.params, weight_dtype=a.weight_dtype, weights_gib_total=weights_total,
        weights_gib_per_node=weights_node, kv_dtype=kv_dtype, kv_bytes_per_token=kv.total,
        kv_bytes_per_token_per_node=kv.node, max_model_len=target, kv_gib_per_node=kv_gib,
        recurrent_state_gib_per_node=kv.state_gib, capacity_gib=capacity_gib, gpu_memory_util=gpu_memory_util,
        reserve_gib=reserve_gib, usable_gib_per_node=usable, os_headroom_gib=os_headroom,
        max_context_tokens=max_ctx, model_max_context=a.max_position_embeddings, fits=fits, verdict=verdict,
        unknown=unknown, notes=notes,
    )


# safetensors dtype names -> ours
SAFETENSORS_DTYPES = {"BF16": "bf16", "F16": "fp16", "F32": "fp32", "F8_E4M3": "fp8", "F8_E5M2": "fp8_e5m2",
                      "I8": "int8", "U8": "uint8", "F64": "fp64", "I16": "int16", "I32": "int32", "I64": "int64",
                      "BOOL": "bool"}


def _safetensors_header(path: Path) -> dict:
    with path.open("rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        return json.loads(fh.read(length))


def apply_headers(inp: FitInput, headers: list[dict], source: str) -> FitInput:
    """Exact weight bytes, parameter count and the dominant dtype from safetensors headers."""
    total_bytes, by_dtype = 0, {}
    for header in headers:
        for name, t in header.items():
            if name == "__metadata__":
                continue
            start, end = t["data_offsets"]
            total_bytes += end - start
            by_dtype[t["dtype"]] = by_dtype.get(t["dtype"], 0) + math.prod(t["shape"])
    if not by_dtype:
        return inp
    dominant = max(by_dtype, key=by_dtype.get)
    inp.weights_bytes = float(total_bytes)
    inp.arch = replace(inp.arch, params=float(sum(by_dtype.values())))
    dtype = SAFETENSORS_DTYPES.get(dominant, dominant.lower())
    if not inp.arch.weight_dtype or (dtype_bytes(inp.arch.weight_dtype) or 0) >= 2:  # unquantized: the files say
        inp.arch = replace(inp.arch, weight_dtype=dtype)
    mix = ", ".join(f"{SAFETENSORS_DTYPES.get(k, k)} {v / 1e9:.3g}B" for k, v in sorted(by_dtype.items(),
                                                                                       key=lambda kv: -kv[1]))
    inp.notes.append(f"weights, parameter count and dtype from {source} ({mix} parameters)")
    return inp


def fit_input_from_dir(path: Path) -> FitInput:
    """config.json plus the safetensors headers of every shard present (else the index's total_size)."""
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise SparkError(f"{path} has no config.json", fix="point at a model directory (a snapshot in the HF cache)")
    try:
        raw = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SparkError(f"cannot read {cfg_file}: {exc}", fix="re-download the model") from None
    inp = FitInput(label=str(path), arch=arch_from_config(raw))
    index = path / "model.safetensors.index.json"
    meta, shards = {}, sorted(path.glob("*.safetensors"))
    if index.is_file():
        data = json.loads(index.read_text(encoding="utf-8"))
        meta = data.get("metadata") or {}
        wanted = set((data.get("weight_map") or {}).values())
        if wanted and not wanted <= {f.name for f in shards}:
            shards = []  # an incomplete snapshot: the index's totals are the better answer
    if shards:
        try:
            return apply_headers(inp, [_safetensors_header(f) for f in shards], "the safetensors headers")
        except (OSError, ValueError, KeyError, struct.error):
            pass  # a truncated shard: fall back to the index
    if meta.get("total_size"):
        inp.weights_bytes = float(meta["total_size"])
        inp.notes.append("weight bytes from the safetensors index (metadata.total_size)")
    if meta.get("total_parameters"):
        inp.arch = replace(inp.arch, params=float(meta["total_parameters"]))
    return inp
