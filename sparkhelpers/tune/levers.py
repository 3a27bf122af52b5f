"""The first-tier levers and their legal values, per runtime: what the rule-based search tries and what an
oracle's proposal is checked against (``legal_schema``, ``check_value``).

A lever is one engine argument with the values worth trying for this workload. The values depend on the
objective's cell (parallel sequences around its concurrency, batched tokens around its prompt length), so
the same lever list serves a chat model at c=1 and a batch job at c=64.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sparkhelpers.errors import UsageError
from sparkhelpers.tune.objective import Point

NGRAM = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4, "prompt_lookup_min": 2}
LOADERS = ("auto", "safetensors", "fastsafetensors", "runai_streamer")
KV_DTYPES = ("auto", "fp8", "fp8_e4m3", "fp8_e5m2")
LLAMA_KV_TYPES = ("f16", "q8_0", "q4_0")


@dataclass(frozen=True)
class Lever:
    name: str  # what the trail calls it
    key: str  # the engine argument it sets
    values: tuple[Any, ...]  # in the order the adaptive search tries them
    why: str


def _ladder(low: int, high: int) -> list[int]:
    out, v = [], 1
    while v <= high:
        if v >= low:
            out.append(v)
        v *= 2
    return out


def vllm_levers(point: Point) -> list[Lever]:
    c = point.concurrency
    seqs = _ladder(max(1, c // 2), max(2 * c, 2))
    batched = sorted({max(2048, point.input_len), 8192, 16384})
    return [
        Lever("max_num_seqs", "max_num_seqs", tuple(seqs), "parallel sequences: the batch at the objective's "
              "concurrency"),
        Lever("prefix_caching", "enable_prefix_caching", (True, False), "reuse of shared prompt prefixes "
              "(cached TTFT)"),
        Lever("kv_cache_dtype", "kv_cache_dtype", ("fp8",), "FP8 KV cache: twice the tokens in the same memory"),
        Lever("chunked_prefill", "enable_chunked_prefill", (True, False), "prefill interleaved with decode"),
        Lever("max_num_batched_tokens", "max_num_batched_tokens", tuple(batched), "tokens per scheduler step"),
        Lever("ngram_spec", "speculative_config", (dict(NGRAM),), "n-gram speculative decoding (no draft model)"),
        Lever("loader", "load_format", ("fastsafetensors",), "weight loader (start time)"),
    ]


def llama_levers(point: Point) -> list[Lever]:
    c = point.concurrency
    return [
        Lever("parallel", "parallel", tuple(_ladder(max(1, c // 2), max(2 * c, 2))), "parallel slots"),
        Lever("batch_size", "batch_size", (512, 2048), "logical batch (prompt processing)"),
        Lever("kv_cache_type", "cache_type_k", ("q8_0",), "quantized K cache"),
        Lever("flash_attn", "flash_attn", ("on", "off"), "flash attention"),
        Lever("loader", "no_mmap", (True,), "read the weights instead of mmap (loader)"),
    ]


def levers_for(runtime: str, point: Point) -> list[Lever]:
    return llama_levers(point) if runtime == "llama-cpp" else vllm_levers(point)


def parse_value(lever: Lever, text: str) -> Any:
    """A value given on the command line (``--lever max_num_seqs=4,8``) in the lever's type."""
    sample = lever.values[0]
    if isinstance(sample, bool):
        if text.lower() in ("true", "on", "1", "yes"):
            return True
        if text.lower() in ("false", "off", "0", "no"):
            return False
        raise UsageError(f"--lever {lever.name}={text}: not true or false", fix=f"e.g. --lever {lever.name}=true")
    if isinstance(sample, int):
        if not text.isdigit():
            raise UsageError(f"--lever {lever.name}={text}: not a whole number", fix=f"e.g. --lever {lever.name}=8")
        return int(text)
    if isinstance(sample, dict):
        if text in ("ngram", "on"):
            return dict(NGRAM)
        raise UsageError(f"--lever {lever.name}={text}: only ngram is built in", fix=f"--lever {lever.name}=ngram")
    return text


def select(levers: list[Lever], asked: list[str]) -> list[Lever]:
    """The levers ``--lever NAME[=v1,v2]`` picked (all when none), values replaced when given."""
    if not asked:
        return levers
    by_name = {lv.name: lv for lv in levers} | {lv.key: lv for lv in levers}
    out = []
    for item in asked:
        name, _, values = item.partition("=")
        lever = by_name.get(name.strip())
        if lever is None:
            raise UsageError(f"--lever {name!r} is not a lever of this runtime",
                             fix=f"levers: {', '.join(lv.name for lv in levers)}")
        if values:
            lever = Lever(lever.name, lever.key, tuple(parse_value(lever, v.strip()) for v in values.split(",")
                                                       if v.strip()), lever.why)
        out.append(lever)
    return out


# ---- the legal-values schema (what an oracle may propose) ------------------------------------------

def legal_schema(runtime: str) -> dict[str, dict]:
    """Engine argument -> JSON-schema fragment of its legal values (the oracle is shown exactly this)."""
    if runtime == "llama-cpp":
        return {
            "parallel": {"type": "integer", "minimum": 1, "maximum": 64},
            "batch_size": {"type": "integer", "minimum": 32, "maximum": 8192},
            "ubatch_size": {"type": "integer", "minimum": 32, "maximum": 8192},
            "cache_type_k": {"enum": list(LLAMA_KV_TYPES)},
            "cache_type_v": {"enum": list(LLAMA_KV_TYPES)},
            "flash_attn": {"enum": ["on", "off", "auto"]},
            "no_mmap": {"type": "boolean"},
        }
    return {
        "max_num_seqs": {"type": "integer", "minimum": 1, "maximum": 1024},
        "enable_prefix_caching": {"type": "boolean"},
        "kv_cache_dtype": {"enum": list(KV_DTYPES)},
        "enable_chunked_prefill": {"type": "boolean"},
        "max_num_batched_tokens": {"type": "integer", "minimum": 256, "maximum": 131072},
        "speculative_config": {"type": ["object", "null"], "properties": {
            "method": {"enum": ["ngram"]}, "num_speculative_tokens": {"type": "integer", "minimum": 1, "maximum": 8},
            "prompt_lookup_max": {"type": "integer", "minimum": 1, "maximum": 8},
            "prompt_lookup_min": {"type": "integer", "minimum": 1, "maximum": 8}}},
        "load_format": {"enum": list(LOADERS)},
    }


def _type_ok(value: Any, kind: str | list) -> bool:
    kinds = kind if isinstance(kind, list) else [kind]
    checks = {"integer": lambda x: isinstance(x, int) and not isinstance(x, bool),
              "boolean": lambda x: isinstance(x, bool), "object": lambda x: isinstance(x, dict),
              "null": lambda x: x is None, "number": lambda x: isinstance(x, (int, float)) and not isinstance(x, bool)}
    return any(checks[k](value) for k in kinds)


def check_value(schema: dict[str, dict], key: str, value: Any) -> str:
    """Why ``key: value`` is not legal ("" when it is)."""
    rule = schema.get(key)
    if rule is None:
        return f"{key} is not a tunable lever (legal: {', '.join(schema)})"
    if "enum" in rule and value not in rule["enum"]:
        return f"{key}={value!r} is not one of {', '.join(map(str, rule['enum']))}"
    if "type" in rule and not _type_ok(value, rule["type"]):
        return f"{key}={value!r} is not of type {rule['type']}"
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if number and (value < rule.get("minimum", value) or value > rule.get("maximum", value)):
        return f"{key}={value} is outside {rule.get('minimum')}-{rule.get('maximum')}"
    if isinstance(value, dict):
        props = rule.get("properties", {})
        for sub, sub_value in value.items():
            if sub not in props:
                return f"{key}.{sub} is not allowed (allowed: {', '.join(props)})"
            why = check_value(props, sub, sub_value)
            if why:
                return f"{key}.{why}"
    return ""
