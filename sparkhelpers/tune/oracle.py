"""Candidates proposed by an LLM at any OpenAI-compatible endpoint (ORACLE_URL, ORACLE_MODEL, the key from
ORACLE_KEY_FILE under the one secret-file policy), given the model's facts, the hardware profile, the
objective and the legal-values schema. Every proposal is validated (the schema, then the recipe rules and
the memory fit); an invalid one becomes a refused candidate with the reason and is never run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from sparkhelpers.config import Config
from sparkhelpers.errors import SparkError
from sparkhelpers.recipes.schema import Recipe
from sparkhelpers.tune import candidates as cd
from sparkhelpers.tune import levers as lv
from sparkhelpers.tune.objective import Guard, Objective

MAX_PROPOSALS = 3
SYSTEM = ("You tune inference-engine recipes for NVIDIA DGX Spark clusters. Propose engine-argument changes "
          "that improve the objective without breaking the guard. Use only the arguments and values of "
          "legal_values. Answer with one JSON object and nothing else: "
          '{"candidates": [{"name": "short-name", "engine_args": {"arg": value}, "why": "one sentence"}]}')


def hardware_profile(recipe: Recipe) -> dict:
    from sparkhelpers.models.fit import GB10_CAPACITY_GIB

    return {"gpu": "NVIDIA GB10 (DGX Spark), one per node, unified memory", "memory_gib_per_node": GB10_CAPACITY_GIB,
            "nodes": recipe.nodes, "tensor_parallel": recipe.tensor_parallel,
            "pipeline_parallel": recipe.pipeline_parallel, "interconnect": "ConnectX-7 200 Gb/s RoCE",
            "cpu": "20-core Arm (aarch64)"}


def prompt(recipe: Recipe, objective: Objective, guard: Guard | None, schema: dict, count: int) -> dict:
    """The user message's content: everything the oracle is told (no secret, no host name)."""
    arch = recipe.metadata.get("arch") if isinstance(recipe.metadata, dict) else None
    return {"model": {"repo": recipe.model, "runtime": recipe.runtime, "engine_version": recipe.engine_version or
                      "default", "engine_args": recipe.engine_args, "architecture": arch or "unknown"},
            "hardware": hardware_profile(recipe),
            "objective": {"text": objective.text, "metric": objective.metric,
                          "higher_is_better": objective.higher_is_better, "concurrency": objective.point.concurrency,
                          "input_tokens": objective.point.input_len, "output_tokens": objective.point.output_len},
            "guard": guard.text if guard else "none", "legal_values": schema, "count": count}


def endpoint(url: str) -> str:
    url = url.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    return url + ("/chat/completions" if url.endswith("/v1") else "/v1/chat/completions")


def oracle_key(cfg: Config) -> str:
    """The key from ORACLE_KEY_FILE (mode 0600, one value), "" when no file is configured."""
    from sparkhelpers.secrets import read_secret_file

    path = cfg.get("ORACLE_KEY_FILE").strip()
    return read_secret_file(Path(path).expanduser(), "ORACLE_KEY") if path else ""


def ask(cfg: Config, message: dict, *, timeout_s: float = 120.0) -> str:
    """The oracle's answer text (one chat completion, temperature 0)."""
    import requests

    url, model = cfg.get("ORACLE_URL").strip(), cfg.get("ORACLE_MODEL").strip()
    if not url or not model:
        raise SparkError("--oracle needs ORACLE_URL and ORACLE_MODEL",
                         fix="set ORACLE_URL (an OpenAI-compatible endpoint) and ORACLE_MODEL in config.local.env")
    key = oracle_key(cfg)
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    body = {"model": model, "temperature": 0, "messages": [
        {"role": "system", "content": SYSTEM}, {"role": "user", "content": json.dumps(message, sort_keys=True)}]}
    target = endpoint(url)
    try:
        resp = requests.post(target, json=body, headers=headers, timeout=timeout_s)
    except requests.RequestException as exc:
        raise SparkError(f"the oracle at {target} cannot be reached: {type(exc).__name__}",
                         fix="check ORACLE_URL, or run without --oracle") from None
    if resp.status_code == 401:
        raise SparkError(f"the oracle at {target} refused the key (HTTP 401)", fix="check ORACLE_KEY_FILE")
    if resp.status_code != 200:
        raise SparkError(f"the oracle at {target} answered HTTP {resp.status_code}",
                         fix="check its log and ORACLE_MODEL")
    try:
        return str(resp.json()["choices"][0]["message"]["content"])
    except (ValueError, KeyError, IndexError, TypeError):
        raise SparkError(f"the oracle at {target} did not answer an OpenAI chat completion",
                         fix="point ORACLE_URL at an OpenAI-compatible server") from None


def parse_answer(text: str) -> list[Any]:
    """The proposals in the answer: a JSON object (code fences and prose around it tolerated)."""
    m = re.search(r"\{.*\}", text, re.S)
    if not m:
        raise SparkError("the oracle's answer holds no JSON object", fix="use a model that follows the JSON format")
    try:
        data = json.loads(m.group(0))
    except ValueError as exc:
        raise SparkError(f"the oracle's answer is not valid JSON ({exc.msg})",
                         fix="use a model that follows the JSON format") from None
    items = data.get("candidates") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise SparkError('the oracle\'s answer has no "candidates" list', fix="use a model that follows the format")
    return items


def validate(items: list[Any], base: Recipe, objective: Objective, schema: dict) -> list[cd.Candidate]:
    """Each proposal as a candidate: refused with the reason unless every argument is legal and it fits."""
    from sparkhelpers.recipes.flags import flag_key

    out = []
    for i, item in enumerate(items[:MAX_PROPOSALS * 2], 1):
        label = f"oracle-{i}"
        if not isinstance(item, dict) or not isinstance(item.get("engine_args"), dict) or not item["engine_args"]:
            out.append(cd.Candidate(label, {}, "oracle", refused="not an object with a non-empty engine_args map"))
            continue
        why = str(item.get("why") or "")[:300]
        args = {flag_key(str(k)): val for k, val in item["engine_args"].items()}
        reasons = [r for r in (lv.check_value(schema, k, val) for k, val in args.items()) if r]
        if reasons:
            out.append(cd.Candidate(f"{label}:{cd.name_of(args)}"[:120], args, "oracle", refused=
                                    "illegal: " + "; ".join(reasons), why=why))
            continue
        out.append(cd.build(base, args, "oracle", objective.point, why=why))
    return out


def propose(cfg: Config, base: Recipe, objective: Objective, guard: Guard | None,
            count: int = MAX_PROPOSALS) -> tuple[list[cd.Candidate], dict]:
    """(candidates, the exchange for the job record: what was asked, the raw answer)."""
    schema = lv.legal_schema(base.runtime)
    message = prompt(base, objective, guard, schema, count)
    answer = ask(cfg, message)
    return validate(parse_answer(answer), base, objective, schema), {"asked": message, "answer": answer[:4000],
                                                                      "url": cfg.get("ORACLE_URL"),
                                                                      "model": cfg.get("ORACLE_MODEL")}
