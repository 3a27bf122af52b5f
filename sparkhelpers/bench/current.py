"""Benchmark what the cluster serves now: a profile's runs against the configured server, saved with the
cluster configuration, and a readable summary (what benchmark_current.sh prints)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sparkhelpers.bench import profiles, results
from sparkhelpers.bench.run import discover_model, execute, fetch_models
from sparkhelpers.errors import SparkError


@dataclass
class RunOutcome:
    plan: profiles.RunPlan
    doc: dict | None
    path: Path | None
    error: str = ""


def configured_url(cfg) -> str:
    """The configured cluster's endpoint (sparkhelpers.topology.endpoint: VLLM_HOST, VLLM_PORT, HEAD_HOST)."""
    from sparkhelpers.topology import endpoint

    return endpoint(cfg)


def gateway_of(base_url: str, api_key: str, model: str) -> dict | None:
    """When base_url is a sparkhelpers gateway (it names itself in a header): what the result should record."""
    import requests

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        resp = requests.get(base_url + "/v1/models", headers=headers, timeout=10)
        version = resp.headers.get("X-Sparkhelpers-Gateway")
        listed = resp.json().get("data", []) if version else []
    except (requests.RequestException, ValueError, AttributeError):
        return None
    if not version:
        return None
    entry = next((m for m in listed if isinstance(m, dict) and (m.get("id") == model or model in m.get("aliases", []))),
                 {})
    return {"url": base_url, "version": version, "model": entry.get("id", model), "aliases": entry.get("aliases", [])}


def pick_model(served: list[str], cfg) -> str:
    """SERVED_MODEL_NAME or MODEL when the server lists it, else the server's first model."""
    for wanted in (cfg.get("SERVED_MODEL_NAME"), cfg.get("MODEL")):
        if wanted and wanted in served:
            return wanted
    if served:
        return served[0]
    wanted = cfg.get("SERVED_MODEL_NAME") or cfg.get("MODEL")
    if wanted:
        return wanted
    raise SparkError("the server lists no model and neither SERVED_MODEL_NAME nor MODEL is set",
                     fix="pass the model with sparkhelpers bench run --model NAME")


def resolve_model(base_url: str, api_key: str, cfg) -> str:
    return pick_model(asyncio.run(fetch_models(base_url, api_key)), cfg)


def group_dir(out_dir: Path, model: str, variant: str, profile: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"{stamp}-{model.split('/')[-1]}-{variant or 'default'}-{profile}"
    return out_dir / "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name)


def run_profile(cfg, profile: profiles.Profile, *, base_url: str, model: str, out_dir: Path, variant: str = "",
                api_key: str = "", timeout_s: float = 0.0, echo: Callable[[str], None] = print,
                target_extra: dict | None = None) -> tuple[list[RunOutcome], bool]:
    """Every run of the profile; returns the outcomes and whether the time budget ran out."""
    from sparkhelpers.bench.node_memory import cluster_nodes

    plans = profiles.plan_runs(profile)
    nodes = cluster_nodes(cfg, base_url)  # their memory low-water mark is sampled during every run
    target = results.cluster_target(cfg, base_url, model, variant)
    target.update(target_extra or {})
    folder = group_dir(out_dir, model, variant, profile.name)
    salt = folder.name
    outcomes: list[RunOutcome] = []
    t0 = time.monotonic()
    for i, plan in enumerate(plans, 1):
        remaining = timeout_s - (time.monotonic() - t0) if timeout_s else 0.0
        if timeout_s and remaining <= 0:
            return outcomes, True
        echo(f"[{i}/{len(plans)}] {plan.cell.name} concurrency {plan.concurrency} repeat {plan.repeat}: "
             f"{plan.num_prompts} requests")
        opts = profiles.run_options(plan, profile, base_url=base_url, model=model, label=profile.name, salt=salt)
        opts.metadata = {"profile": profile.name, "cell": plan.cell.name, "variant": variant or "default"}
        run_info = results.new_run_info(repeat=plan.repeat)
        try:
            doc, records = execute(opts, api_key=api_key, target=target, run_info=run_info,
                                   deadline_s=remaining or None, nodes=nodes)
        except TimeoutError:
            outcomes.append(RunOutcome(plan, None, None, f"timeout: the {timeout_s:g} s budget ran out"))
            return outcomes, True
        except SparkError as exc:
            outcomes.append(RunOutcome(plan, None, None, exc.message))
            continue
        doc["workload"].update(profile=profile.name, cell=plan.cell.name)
        name = results.result_filename(f"{plan.cell.name}-r{plan.repeat}", opts.request_rate, plan.concurrency,
                                       model, doc["date"])
        path, _ = results.save_result(doc, records, folder / name)
        outcomes.append(RunOutcome(plan, doc, path))
    return outcomes, False


def summary_rows(outcomes: list[RunOutcome]) -> list[list]:
    rows = []
    for o in outcomes:
        d = o.doc
        if d is None:
            rows.append([o.plan.cell.name, o.plan.concurrency, o.plan.repeat, "-", "-", "-", "-", "-", "-",
                         "ERROR: " + o.error[:60]])
            continue
        per_user = d["extra"].get("tpot_per_user_tok_s")
        rows.append([o.plan.cell.name, o.plan.concurrency, o.plan.repeat, f"{d['completed']}/{d['failed']}",
                     round(d["output_throughput"], 1), round(per_user, 1) if per_user else "-",
                     round(d.get("median_ttft_ms") or 0, 1), round(d.get("p99_ttft_ms") or 0, 1),
                     round(d.get("p99_tpot_ms") or 0, 2),
                     "yes" if d["run"]["valid"] else "NO: " + "; ".join(d["run"]["invalid_reasons"])[:60]])
    return rows


SUMMARY_HEADERS = ["cell", "conc", "rep", "ok/failed", "output tok/s", "per-user tok/s", "TTFT p50 ms",
                   "TTFT p99 ms", "TPOT p99 ms", "valid"]


def format_summary(outcomes: list[RunOutcome], model: str, base_url: str) -> str:
    from tabulate import tabulate

    return f"model {model} at {base_url}\n" + tabulate(summary_rows(outcomes), headers=SUMMARY_HEADERS,
                                                        tablefmt="simple", disable_numparse=True)


def failures(outcomes: list[RunOutcome]) -> list[str]:
    bad = []
    for o in outcomes:
        if o.doc is None:
            bad.append(f"{o.plan.key}: {o.error}")
        elif o.doc["failed"]:
            errs = ", ".join(f"{k} x{v}" for k, v in o.doc["extra"].get("error_counts", {}).items())
            bad.append(f"{o.plan.key}: {o.doc['failed']} of {o.doc['num_prompts']} requests failed ({errs})")
    return bad


__all__ = ["configured_url", "discover_model", "resolve_model", "run_profile", "format_summary", "failures"]
