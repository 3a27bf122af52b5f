"""Result documents: vllm bench serve's flat --save-result keys, plus ``run``, ``target``, ``workload``, ``extra``.

A document's top level holds exactly the keys ``vllm bench serve --save-result`` writes (``completed``,
``output_throughput``, ``p99_ttft_ms``...), so tools that read vLLM's files read ours. What vLLM does not
have lives in the sections: ``run`` (id, tool, validity), ``target`` (server and cluster configuration),
``workload`` (the exact load), ``extra`` (first-content TTFT, client health, token-count sources).
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from sparkhelpers import __version__
from sparkhelpers.bench.metrics import RequestRecord

SCHEMA = "sparkhelpers.bench.result.v1"
ENGINE_OPTION_KEYS = ("ENABLE_PREFIX_CACHING", "KV_CACHE_DTYPE", "ENABLE_CHUNKED_PREFILL", "MAX_NUM_SEQS",
                      "MAX_NUM_BATCHED_TOKENS", "SPECULATIVE_CONFIG", "LOAD_FORMAT", "GPU_MEMORY_UTIL",
                      "MAX_MODEL_LEN", "EXTRA_ARGS", "LAUNCH_MODE", "RUNTIME")


def cluster_target(cfg, base_url: str, model: str, variant: str = "") -> dict:
    """What was benchmarked, from the configuration: model, nodes, TP/PP (the layout rule of
    sparkhelpers.topology, as a start without flags would choose), image, engine options."""
    from sparkhelpers.errors import SparkError
    from sparkhelpers.models.catalog import resolve_model
    from sparkhelpers.recipes.apply import running_recipe_id
    from sparkhelpers.topology import layout_for

    nodes, tp_value, pp, image = None, None, None, cfg.get("VLLM_IMAGE")
    try:
        spec = resolve_model(cfg)
        lay = layout_for(cfg, spec, check=False)
        nodes, tp_value, pp, image = lay.nodes, lay.tensor_parallel, lay.pipeline_parallel, spec.image or image
    except SparkError:  # an unknown model must not stop a benchmark from being recorded
        pass
    return {
        "base_url": base_url,
        "model": model,
        "configured_model": cfg.get("MODEL"),
        "served_model_name": cfg.get("SERVED_MODEL_NAME"),
        "nodes": nodes,
        "tp": tp_value,
        "pp": pp,
        "image": image,
        "variant": variant or "default",
        "recipe_id": running_recipe_id(cfg),  # what served the run (sparkhelpers.recipes identity)
        "engine_options": {k.lower(): cfg.get(k) for k in ENGINE_OPTION_KEYS if cfg.get(k) != ""},
    }


def new_run_info(framework: str = "sparkhelpers", repeat: int = 1) -> dict:
    return {"id": uuid.uuid4().hex[:12], "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "tool": framework, "tool_version": __version__, "repeat": repeat, "valid": True,
            "invalid_reasons": []}


def vllm_header(*, backend: str, endpoint: str, label: str, model: str, num_prompts: int, request_rate: float,
                burstiness: float, max_concurrency: int | None, metadata: dict[str, str]) -> dict:
    """The run-description keys vllm bench serve writes before its results."""
    head = {
        "date": time.strftime("%Y%m%d-%H%M%S"),
        "endpoint_type": backend,
        "backend": backend,
        "label": label or None,
        "model_id": model,
        "tokenizer_id": None,  # no tokenizer: prompt lengths are approximate, usage gives true counts
        "num_prompts": num_prompts,
    }
    head.update(metadata)
    head.update({"request_rate": "inf" if math.isinf(request_rate) else request_rate,
                 "burstiness": burstiness, "max_concurrency": max_concurrency})
    return head


def result_filename(label: str, request_rate: float, max_concurrency: int | None, model: str, date: str) -> str:
    """vLLM's naming: {label}-{rate}qps[-concurrency{N}]-{model}-{date}.json."""
    rate = "inf" if math.isinf(request_rate) else f"{request_rate:g}"
    conc = f"-concurrency{max_concurrency}" if max_concurrency else ""
    name = f"{label or 'sparkhelpers'}-{rate}qps{conc}-{model.split('/')[-1]}-{date}.json"
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", name)


def default_filename(doc: dict) -> str:
    """vLLM's file name for a result document of ours."""
    rate = doc.get("request_rate")
    return result_filename(doc.get("label") or "", math.inf if rate in (None, "inf") else float(rate),
                           doc.get("max_concurrency"), doc["model_id"], doc["date"])


def detailed_fields(records: Sequence[RequestRecord]) -> dict[str, list]:
    """vllm bench serve --save-detailed's per-request lists (seconds, in request order; failed ones included)."""
    rs = sorted(records, key=lambda r: r.index)
    return {"input_lens": [r.prompt_len for r in rs], "output_lens": [r.output_tokens for r in rs],
            "ttfts": [r.ttft if r.success else 0.0 for r in rs], "itls": [list(r.itl) for r in rs],
            "generated_texts": [r.generated_text for r in rs], "errors": [r.error for r in rs]}


def requests_path(json_path: Path) -> Path:
    return json_path.with_name(json_path.name.removesuffix(".json") + ".requests.jsonl")


def write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=_nan_safe) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _nan_safe(value):  # json cannot hold NaN portably; None is what readers expect
    return None


def clean_floats(data):
    """NaN/inf -> None, recursively (vLLM files can hold NaN; ours never do)."""
    if isinstance(data, float) and (math.isnan(data) or math.isinf(data)):
        return None
    if isinstance(data, dict):
        return {k: clean_floats(v) for k, v in data.items()}
    if isinstance(data, list):
        return [clean_floats(v) for v in data]
    return data


def save_result(doc: dict, records: Sequence[RequestRecord], path: Path) -> tuple[Path, Path]:
    """The JSON document and its per-request JSONL side file (start, ttft, itl list, e2el, tokens, error)."""
    side = requests_path(path)
    doc = clean_floats(doc)
    doc.setdefault("extra", {})["requests_file"] = side.name
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = side.with_name(f".{side.name}.tmp{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as fh:
        for r in records:
            row = asdict(r)
            row["tpot"] = r.tpot()
            fh.write(json.dumps(clean_floats(row)) + "\n")
    os.replace(tmp, side)
    write_json_atomic(path, doc)
    return path, side


def load_json(path: Path) -> dict | list | None:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
