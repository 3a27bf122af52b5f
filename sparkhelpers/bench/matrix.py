"""The benchmark matrix: rows = model x configuration variant, columns = workload cell x concurrency.

Each matrix cell summarizes the repeats that landed in it: output tok/s, per-user tok/s (1000 / median
TPOT), median and p99 TTFT, p99 TPOT and failures, as a mean with a 95% confidence half-width
(Student's t, n-1 degrees of freedom). Runs marked invalid by their client are left out of the
statistics while a valid run exists, and a cell made only of invalid runs is shown, marked invalid.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from sparkhelpers.bench.ingest import is_number

# Two-sided 95% Student's t quantiles by degrees of freedom (1..30); 1.96 beyond.
T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
       2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]
FIELDS = ("output_tok_s", "per_user_tok_s", "ttft_p50_ms", "ttft_p99_ms", "tpot_p99_ms")
# From the engine's /metrics around each run (None when the engine or the tool gave none).
ENGINE_FIELDS = ("prefix_hit_pct", "preemptions", "kv_peak_pct", "waiting_peak")
# The nodes' memory low-water mark during each run: the lowest MemAvailable of any node (GiB).
NODE_FIELDS = ("mem_low_gib",)


def t95(df: int) -> float:
    return T95[df - 1] if 1 <= df <= len(T95) else 1.96


def mean_ci(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and the 95% confidence half-width (None for a single value)."""
    xs = [v for v in values if is_number(v)]
    if not xs:
        return None, None
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, None
    s = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))
    return m, t95(len(xs) - 1) * s / math.sqrt(len(xs))


@dataclass
class Stat:
    mean: float | None
    half_width: float | None = None


@dataclass
class Cell:
    runs: int = 0
    valid_runs: int = 0
    failures: int | None = 0  # None: the tool does not report failures (llama-benchy)
    requests: int = 0
    invalid: bool = False
    reasons: list[str] = field(default_factory=list)
    tools: list[str] = field(default_factory=list)
    stats: dict[str, Stat] = field(default_factory=dict)
    best: bool = False
    delta_pct: float | None = None  # output tok/s against the baseline row


@dataclass
class Matrix:
    rows: list[tuple[str, str]]
    cols: list[tuple[str, int]]
    cells: dict[tuple[tuple[str, str], tuple[str, int]], Cell]
    baseline: str = ""
    meta: dict[tuple[str, str], dict] = field(default_factory=dict)  # per row: images, hashes, layouts, dates


def row_key(doc: dict) -> tuple[str, str]:
    t = doc.get("target") or {}
    return str(t.get("model") or doc.get("model_id") or "unknown"), str(t.get("variant") or "default")


def col_key(doc: dict) -> tuple[str, int]:
    w = doc.get("workload") or {}
    cell = w.get("cell") or (f"{w.get('input_len')}/{w.get('output_len')}" if w.get("input_len") else "unknown")
    conc = doc.get("max_concurrency") or w.get("max_concurrency") or 0
    return str(cell), int(conc)


def doc_values(doc: dict) -> dict[str, float | None]:
    extra = doc.get("extra") or {}
    per_user = extra.get("tpot_per_user_tok_s")
    if per_user is None and is_number(doc.get("median_tpot_ms")) and doc["median_tpot_ms"] > 0:
        per_user = 1000.0 / doc["median_tpot_ms"]
    engine = doc.get("engine_metrics") or {}

    def pct(key: str) -> float | None:
        return 100.0 * engine[key] if is_number(engine.get(key)) else None

    memory = doc.get("node_memory") or {}
    return {"mem_low_gib": memory.get("min_mem_available_gib") if memory.get("available") else None,
            "prefix_hit_pct": pct("prefix_cache_hit_rate"), "preemptions": engine.get("preemptions"),
            "kv_peak_pct": pct("peak_kv_cache_usage"), "waiting_peak": engine.get("peak_requests_waiting"),
            "output_tok_s": doc.get("output_throughput"), "per_user_tok_s": per_user,
            "ttft_p50_ms": doc.get("median_ttft_ms") if doc.get("median_ttft_ms") is not None
            else doc.get("mean_ttft_ms"),
            "ttft_p99_ms": doc.get("p99_ttft_ms"), "tpot_p99_ms": doc.get("p99_tpot_ms")}


def build(docs: Sequence[dict], baseline: str = "") -> Matrix:
    groups: dict[tuple, list[dict]] = {}
    for d in docs:
        groups.setdefault((row_key(d), col_key(d)), []).append(d)
    rows = sorted({k[0] for k in groups})
    cols = sorted({k[1] for k in groups}, key=lambda c: (c[0], c[1]))
    cells: dict = {}
    for key, ds in groups.items():
        valid = [d for d in ds if (d.get("run") or {}).get("valid", True)]
        use = valid or ds
        cell = Cell(runs=len(ds), valid_runs=len(valid), invalid=not valid,
                    failures=None if any(d.get("failed") is None for d in ds)
                    else sum(int(d["failed"]) for d in ds),
                    requests=sum(int(d.get("completed") or 0) + int(d.get("failed") or 0) for d in ds),
                    tools=sorted({str((d.get("run") or {}).get("tool", "")) for d in ds}))
        for d in ds:
            cell.reasons += [r for r in (d.get("run") or {}).get("invalid_reasons", []) if r not in cell.reasons]
        values = [doc_values(d) for d in use]
        cell.stats = {f: Stat(*mean_ci([v[f] for v in values])) for f in (*FIELDS, *ENGINE_FIELDS, *NODE_FIELDS)}
        cells[key] = cell
    for col in cols:  # best output tok/s per column among cells with valid runs
        candidates = [(cells[(r, col)].stats["output_tok_s"].mean, r) for r in rows
                      if (r, col) in cells and not cells[(r, col)].invalid
                      and cells[(r, col)].stats["output_tok_s"].mean is not None]
        if len(candidates) > 1:
            cells[(max(candidates)[1], col)].best = True
    if baseline:
        apply_baseline(rows, cols, cells, baseline)
    return Matrix(rows, cols, cells, baseline, meta=row_metadata(docs))


def config_hash(target: dict) -> str:
    """The target's own hash (recipe id or config hash) when it has one, else 12 hex of its configuration."""
    import hashlib

    for key in ("recipe_id", "config_hash"):
        if target.get(key):
            return str(target[key])
    rest = {k: v for k, v in target.items() if k not in ("base_url", "model", "variant")}
    return hashlib.sha256(json.dumps(rest, sort_keys=True, default=str).encode()).hexdigest()[:12]


def row_metadata(docs: Sequence[dict]) -> dict[tuple[str, str], dict]:
    """What each row was run on: image, config hash, nodes, TP/PP, tools, first and last run date."""
    meta: dict[tuple[str, str], dict] = {}
    for d in docs:
        t, run = d.get("target") or {}, d.get("run") or {}
        m = meta.setdefault(row_key(d), {"images": [], "config_hashes": [], "nodes": [], "layouts": [], "tools": [],
                                         "first": None, "last": None})
        layout = f"TP{t.get('tp') or '?'}/PP{t.get('pp') or '?'}" if t.get("tp") or t.get("pp") else None
        for key, value in (("images", t.get("image")), ("config_hashes", config_hash(t) if t else None),
                           ("nodes", t.get("nodes")), ("layouts", layout), ("tools", run.get("tool"))):
            if value is not None and value not in m[key]:
                m[key].append(value)
        lows = m.setdefault("mem_low_gib", {})  # per node: the lowest MemAvailable over the row's runs
        for node, n in ((d.get("node_memory") or {}).get("nodes") or {}).items():
            if is_number(n.get("mem_available_min_gib")):
                lows[node] = min(lows.get(node, n["mem_available_min_gib"]), n["mem_available_min_gib"])
        when = run.get("started_at") or d.get("date")
        if when:
            m["first"] = min(m["first"] or when, when)
            m["last"] = max(m["last"] or when, when)
    return meta


def apply_baseline(rows, cols, cells, baseline: str) -> None:
    """``variant`` compares each model's rows with that model's baseline variant; ``model:variant`` compares
    every row with that one row."""
    model, sep, variant = baseline.rpartition(":")
    for r in rows:
        base_row = (model, variant) if sep else (r[0], baseline)
        if base_row == r:
            continue
        for c in cols:
            a, b = cells.get((r, c)), cells.get((base_row, c))
            if a and b and a.stats["output_tok_s"].mean and b.stats["output_tok_s"].mean:
                a.delta_pct = 100.0 * (a.stats["output_tok_s"].mean / b.stats["output_tok_s"].mean - 1.0)


def _fmt(stat: Stat, digits: int = 0) -> str:
    if stat.mean is None:
        return "-"
    text = f"{stat.mean:.{digits}f}"
    if stat.half_width is not None:
        text += f"±{stat.half_width:.{digits}f}"
    return text


def cell_lines(cell: Cell | None) -> list[str]:
    if cell is None:
        return ["-"]
    s = cell.stats
    head = f"{_fmt(s['output_tok_s'])} tok/s" + (" *best*" if cell.best else "")
    if cell.delta_pct is not None:
        head += f" ({cell.delta_pct:+.1f}%)"
    lines = [head, f"{_fmt(s['per_user_tok_s'], 1)} tok/s/user",
             f"TTFT {_fmt(s['ttft_p50_ms'])} / p99 {_fmt(s['ttft_p99_ms'])} ms",
             f"TPOT p99 {_fmt(s['tpot_p99_ms'], 1)} ms",
             f"fail {'?' if cell.failures is None else cell.failures}/{cell.requests} n={cell.runs}"]
    if any(s[f].mean is not None for f in ENGINE_FIELDS):
        lines.append(f"hit {_fmt(s['prefix_hit_pct'])}% kv {_fmt(s['kv_peak_pct'])}% "
                     f"wait {_fmt(s['waiting_peak'])} preempt {_fmt(s['preemptions'])}")
    if s["mem_low_gib"].mean is not None:
        lines.append(f"mem low {_fmt(s['mem_low_gib'], 1)} GiB")
    if cell.invalid:
        lines.insert(0, "[INVALID]")
    return lines


def row_label(r: tuple[str, str]) -> str:
    return f"{r[0]} [{r[1]}]"


def col_label(c: tuple[str, int]) -> str:
    return f"{c[0]} c={c[1]}"


def to_table(m: Matrix, fmt: str = "grid") -> str:
    from tabulate import tabulate

    body = [[row_label(r)] + ["\n".join(cell_lines(m.cells.get((r, c)))) for c in m.cols] for r in m.rows]
    return tabulate(body, headers=["model [variant]"] + [col_label(c) for c in m.cols], tablefmt=fmt,
                    disable_numparse=True)


def to_markdown(m: Matrix) -> str:
    head = "| model [variant] | " + " | ".join(col_label(c) for c in m.cols) + " |"
    lines = [head, "|" + "---|" * (len(m.cols) + 1)]
    for r in m.rows:
        cells = []
        for c in m.cols:
            cl = cell_lines(m.cells.get((r, c)))
            cl = [f"**{x}**" if "*best*" in x else x.replace("[INVALID]", "~~invalid~~") for x in cl]
            cells.append("<br>".join(x.replace("*best*", "(best)") for x in cl))
        lines.append(f"| {row_label(r)} | " + " | ".join(cells) + " |")
    legend = "\nmean±95% CI half-width over repeats; best = highest output tok/s in the column"
    if m.baseline:
        legend += f"; (+x%) = output tok/s against baseline {m.baseline}"
    return "\n".join(lines) + "\n" + legend + "\n"


def long_rows(m: Matrix) -> list[dict]:
    rows = []
    for r in m.rows:
        for c in m.cols:
            cell = m.cells.get((r, c))
            if cell is None:
                continue
            row = {"model": r[0], "variant": r[1], "cell": c[0], "concurrency": c[1], "runs": cell.runs,
                   "valid_runs": cell.valid_runs, "invalid": cell.invalid, "failures": cell.failures,
                   "requests": cell.requests, "best": cell.best, "delta_pct": cell.delta_pct,
                   "tools": ",".join(cell.tools)}
            for f in (*FIELDS, *ENGINE_FIELDS, *NODE_FIELDS):
                row[f] = cell.stats[f].mean
                row[f + "_ci95"] = cell.stats[f].half_width
            rows.append(row)
    return rows


def to_csv(m: Matrix) -> str:
    rows = long_rows(m)
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return buf.getvalue()


def to_json(m: Matrix) -> str:
    return json.dumps({"baseline": m.baseline or None, "cells": long_rows(m)}, indent=2) + "\n"
