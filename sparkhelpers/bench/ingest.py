"""Read result files of any kind into our document shape: ours, ``vllm bench serve --save-result``, llama-benchy.

vLLM files keep their flat keys (they are already ours); their ``--metadata`` pairs fill ``target`` and
``workload``. A llama-benchy file holds mean/std/values per cell over synchronized bursts; each run of each
cell becomes one document (so repeats get a confidence interval), mapped onto vLLM's names where the
definitions agree (``ttfr`` is vLLM's TTFT; ``e2e_ttft`` is our first-content TTFT) and marked as such.
"""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

from sparkhelpers.bench import results
from sparkhelpers.errors import SparkError

VLLM_ARRAYS = ("input_lens", "output_lens", "ttfts", "itls", "generated_texts", "errors", "latencies",
               "queue_times", "start_times")
VLLM_RUN_KEYS = {"date", "endpoint_type", "backend", "label", "model_id", "tokenizer_id", "num_prompts",
                 "request_rate", "burstiness", "max_concurrency", "ramp_up_strategy", "ramp_up_start_rps",
                 "ramp_up_end_rps"}
TARGET_META = {"variant", "config", "nodes", "tp", "pp", "image", "engine_version", "quantization", "kv_cache_dtype"}


def detect_kind(data) -> str:
    if not isinstance(data, dict):
        return ""
    if data.get("schema") == results.SCHEMA:
        return "sparkhelpers"
    if isinstance(data.get("benchmarks"), list) and "latency_mode" in data:
        return "llama-benchy"
    if "completed" in data and "output_throughput" in data and "model_id" in data:
        return "vllm"
    return ""


def _result_keys(data: dict) -> set[str]:
    return {k for k in data if re.fullmatch(r"(mean|median|std|p[\d.]+)_\w+_ms", k)} | {
        "duration", "completed", "failed", "total_input_tokens", "total_output_tokens", "request_throughput",
        "request_goodput", "output_throughput", "total_token_throughput", "max_output_tokens_per_s",
        "max_concurrent_requests", "rtfx"}


def from_vllm(data: dict, source: str) -> dict:
    doc = {k: v for k, v in data.items() if k not in VLLM_ARRAYS}
    meta = {k: v for k, v in data.items() if k not in VLLM_RUN_KEYS and k not in _result_keys(data)
            and k not in VLLM_ARRAYS}
    completed = data.get("completed") or 0
    in_len = round(data.get("total_input_tokens", 0) / completed) if completed else None
    out_len = round(data.get("total_output_tokens", 0) / completed) if completed else None
    cell = meta.get("cell") or (f"{in_len}/{out_len}" if in_len else "unknown")
    target = {"model": data.get("model_id"), "variant": str(meta.get("variant") or meta.get("config") or "default")}
    target.update({k: v for k, v in meta.items() if k in TARGET_META and k not in ("variant", "config")})
    median_tpot = data.get("median_tpot_ms")
    doc.update({
        "schema": results.SCHEMA,
        "run": {"id": Path(source).stem[-12:], "started_at": data.get("date"), "tool": "vllm bench serve",
                "repeat": int(meta.get("repeat", 1) or 1), "valid": True, "invalid_reasons": [],
                "note": "client health not recorded by vllm bench serve"},
        "target": target,
        "workload": {"dataset": meta.get("dataset", "unknown"), "input_len": in_len, "output_len": out_len,
                     "cell": cell, "profile": meta.get("profile", ""), "max_concurrency": data.get("max_concurrency"),
                     "request_rate": data.get("request_rate"), "burstiness": data.get("burstiness"),
                     "num_prompts": data.get("num_prompts"), "backend": data.get("backend")},
        "extra": {"tpot_per_user_tok_s": 1000.0 / median_tpot if median_tpot else None,
                  "token_count_source": "usage", "source_file": Path(source).name, "metadata": meta},
    })
    return doc


def _metric(b: dict, name: str, i: int, runs: int, c: int) -> float | None:
    """Run i's value: llama-benchy keeps one value per run for throughputs and one per request for
    latencies (c per run), so a latency is the mean over run i's requests."""
    m = b.get(name)
    if not isinstance(m, dict):
        return None
    values = [v for v in m.get("values") or [] if isinstance(v, (int, float))]
    if len(values) == runs:
        return values[i]
    if len(values) == runs * c:
        part = values[i * c:(i + 1) * c]
        return sum(part) / len(part)
    return m.get("mean")


def from_llama_benchy(data: dict, source: str) -> list[dict]:
    docs = []
    model = data.get("model") or "unknown"
    for b in data.get("benchmarks") or []:
        if b.get("is_context_prefill_phase"):
            continue
        c = int(b.get("concurrency") or 1)
        depth = int(b.get("context_size") or 0)
        pp, tg = int(b.get("prompt_size") or 0), int(b.get("response_size") or 0)
        runs = len((b.get("tg_throughput") or {}).get("values") or []) or 1
        cell = f"{pp}/{tg}" + (f"@d{depth}" if depth else "")
        for i in range(runs):
            tg_total = _metric(b, "tg_throughput", i, runs, c)
            tg_req = _metric(b, "tg_req_throughput", i, runs, c) or tg_total
            ttfr, e2e = _metric(b, "ttfr", i, runs, c), _metric(b, "e2e_ttft", i, runs, c)
            tpot = 1000.0 / tg_req if tg_req else None
            doc = {
                "date": data.get("timestamp"), "backend": "openai-chat", "label": "llama-benchy", "model_id": model,
                "num_prompts": c, "request_rate": "inf", "burstiness": None, "max_concurrency": c,
                "completed": c, "failed": None, "output_throughput": tg_total,
                "max_output_tokens_per_s": _metric(b, "peak_throughput", i, runs, c),
                "mean_ttft_ms": ttfr, "median_ttft_ms": None, "p99_ttft_ms": None, "mean_tpot_ms": tpot,
                "median_tpot_ms": None, "p99_tpot_ms": None,
                "schema": results.SCHEMA,
                "run": {"id": f"{Path(source).stem[-8:]}-{c}-{i + 1}", "started_at": data.get("timestamp"),
                        "tool": f"llama-benchy {data.get('version', '')}".strip(), "repeat": i + 1, "valid": True,
                        "invalid_reasons": [],
                        "note": "one synchronized burst per run; means only, no percentiles"},
                "target": {"model": model, "variant": "default"},
                "workload": {"dataset": "llama-benchy", "input_len": pp + depth, "output_len": tg, "cell": cell,
                             "profile": "llama-benchy", "max_concurrency": c, "request_rate": "inf",
                             "prefix_caching": data.get("prefix_caching_enabled")},
                "extra": {"ttft_content_ms": {"mean": e2e}, "tpot_per_user_tok_s": tg_req,
                          "token_count_source": "llama-benchy", "source_file": Path(source).name,
                          "pp_throughput": _metric(b, "pp_throughput", i, runs, c)},
            }
            docs.append(doc)
    return docs


def normalize(data, source: str) -> list[dict]:
    """Any supported file's content -> our documents ([] when it is not a result file)."""
    kind = detect_kind(data)
    if kind == "sparkhelpers":
        return [data]
    if kind == "vllm":
        return [results.clean_floats(from_vllm(data, source))]
    if kind == "llama-benchy":
        return [results.clean_floats(d) for d in from_llama_benchy(data, source)]
    return []


def ingest_files(paths: list[Path], store: Path, *, variant: str = "") -> list[Path]:
    """Copy result files into the store as our documents (store/ingested/), originals kept beside them."""
    written = []
    for path in paths:
        data = results.load_json(path)
        if data is None:
            raise SparkError(f"{path} is not a readable JSON file", fix="pass vllm bench serve or llama-benchy JSON")
        docs = normalize(data, str(path))
        if not docs:
            raise SparkError(f"{path} is neither a vllm bench serve --save-result file, a llama-benchy JSON "
                             "file nor one of ours", fix="check the file (llama-benchy needs --format json)")
        dest_dir = store / "ingested" / path.stem
        dest_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest_dir / ("original-" + path.name))
        for i, doc in enumerate(docs, 1):
            if variant:
                doc["target"]["variant"] = variant
            out = dest_dir / (f"{path.stem}.json" if len(docs) == 1 else f"{path.stem}-{i:03d}.json")
            results.write_json_atomic(out, doc)
            written.append(out)
    return written


def load_dir(root: Path) -> list[tuple[Path, dict]]:
    """Every result document under ``root`` (any kind), skipping sweep state, side files and originals."""
    found = []
    for path in sorted(Path(root).rglob("*.json")):
        if path.name.startswith((".", "original-")) or path.name in ("sweep-state.json",):
            continue
        data = results.load_json(path)
        for doc in normalize(data, str(path)) if data is not None else []:
            found.append((path, doc))
    return found


def is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and not math.isnan(x)
