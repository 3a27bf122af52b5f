"""Serving metrics exactly as ``vllm bench serve`` defines them, as pure functions.

Definitions (see docs/benchmarks.md and shared benchmark-definitions §1):
- TTFT: first SSE message whose ``choices`` is non-empty, minus the request's ``start``.
- ITL: gaps between consecutive ``choices``-bearing messages (per chunk, pooled over requests).
- E2EL: last ``choices``-bearing message minus ``start`` (usage chunk and ``[DONE]`` excluded).
- TPOT: (E2EL - TTFT) / (output_tokens - 1), only for requests with more than one output token.
- Throughputs divide by ``duration`` (start of dispatch to the last completion); failed requests count
  only in ``failed``. Statistics use numpy's conventions: population std, linear-interpolated percentiles,
  and 0 for an empty list (vLLM's ``np.mean(x or 0)``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sparkhelpers.errors import UsageError

METRICS = ("ttft", "tpot", "itl", "e2el")
DEFAULT_PERCENTILES = (50.0, 90.0, 95.0, 99.0)  # vLLM's own default is 99 alone
DEFAULT_PERCENTILE_METRICS = ("ttft", "tpot", "itl", "e2el")  # vLLM's default omits e2el
GOODPUT_METRICS = ("ttft", "tpot", "e2el")


@dataclass
class RequestRecord:
    """One request as the client saw it. Times are seconds (``perf_counter``), relative to the run start."""

    index: int
    prompt_len: int  # approximate (word count) unless the server's usage.prompt_tokens replaced it
    max_tokens: int
    start: float = 0.0  # taken just before the request is sent, after the concurrency slot is acquired
    queue_time: float = 0.0  # waiting for a concurrency slot
    ttft: float = 0.0
    ttft_content: float | None = None  # first non-empty content (or reasoning) delta
    itl: list[float] = field(default_factory=list)
    latency: float = 0.0  # E2EL
    output_tokens: int = 0
    token_count_source: str = ""  # usage | stream_chunks
    prompt_len_source: str = "approx_words"  # approx_words | tokenizer | usage
    chunks: int = 0
    finish_reason: str | None = None
    success: bool = False
    error: str = ""
    http_status: int = 0
    retries: int = 0  # resent once after a stale pooled connection failed before reaching the server
    generated_text: str = ""

    def tpot(self) -> float:
        """vLLM's per-request TPOT (0 when the request produced one token or fewer)."""
        if self.output_tokens > 1:
            return (self.latency - self.ttft) / (self.output_tokens - 1)
        return 0.0


def percentile(values: Sequence[float], p: float) -> float:
    """numpy.percentile with linear interpolation; 0.0 for an empty list (as vLLM's ``x or 0``)."""
    if not values:
        return 0.0
    xs = sorted(values)
    rank = (len(xs) - 1) * p / 100.0
    lo = math.floor(rank)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (rank - lo)


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def std(values: Sequence[float]) -> float:
    """Population standard deviation (numpy's ddof=0)."""
    if not values:
        return 0.0
    m = mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / len(values))


def percentile_label(p: float) -> str:
    """vLLM's key spelling: 99 -> '99', 99.9 -> '99.9'."""
    return str(int(p)) if float(p).is_integer() else str(p)


def parse_percentiles(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--metric-percentiles {text!r} is not a comma-separated list of numbers",
                         fix="for example --metric-percentiles 50,90,99") from None
    if not values or any(not 0 < v < 100 for v in values):
        raise UsageError(f"--metric-percentiles {text!r}: each value must be between 0 and 100 (exclusive)",
                         fix="for example --metric-percentiles 50,90,99")
    return values


def parse_percentile_metrics(text: str) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    bad = [n for n in names if n not in METRICS]
    if bad or not names:
        raise UsageError(f"--percentile-metrics: unknown metric {', '.join(bad) or '(none)'}",
                         fix=f"choose from {','.join(METRICS)}")
    return names


def parse_goodput(items: Iterable[str]) -> dict[str, float]:
    """``["ttft:200", "tpot:50"]`` (or one space-separated string) -> {"ttft": 200.0, "tpot": 50.0} in ms."""
    slo: dict[str, float] = {}
    for item in (part for text in items for part in text.split()):
        name, sep, value = item.partition(":")
        if not sep or name not in GOODPUT_METRICS:
            raise UsageError(f"--goodput {item!r} is not METRIC:MILLISECONDS",
                             fix="for example --goodput ttft:500 --goodput tpot:50 (metrics: ttft, tpot, e2el)")
        try:
            slo[name] = float(value)
        except ValueError:
            raise UsageError(f"--goodput {item!r}: {value!r} is not a number of milliseconds",
                             fix="for example --goodput ttft:500") from None
        if slo[name] < 0:
            raise UsageError(f"--goodput {item!r}: the SLO must not be negative", fix="use milliseconds >= 0")
    return slo


def is_good(record: RequestRecord, slo_ms: dict[str, float]) -> bool:
    """A request meets every given SLO (value <= SLO); TPOT is 0 for requests of one token or fewer."""
    values = {"ttft": record.ttft, "tpot": record.tpot(), "e2el": record.latency}
    return all(values[name] * 1000.0 <= limit for name, limit in slo_ms.items())


def token_times(record: RequestRecord) -> list[float]:
    """Arrival time of every choices-bearing chunk, reconstructed as vLLM does: start + ttft + cumsum(itl)."""
    t = record.start + record.ttft
    times = [t]
    for gap in record.itl:
        t += gap
        times.append(t)
    return times


def max_output_tokens_per_s(records: Sequence[RequestRecord]) -> float:
    """The busiest 1 s bucket of chunk arrivals, buckets counted from the earliest successful start."""
    ok = [r for r in records if r.success]
    if not ok:
        return 0.0
    t0 = min(r.start for r in ok)
    buckets: dict[int, int] = {}
    for r in ok:
        for t in token_times(r):
            b = int(t - t0)
            buckets[b] = buckets.get(b, 0) + 1
    return float(max(buckets.values()))


def max_concurrent_requests(records: Sequence[RequestRecord]) -> int:
    """Exact peak of requests in flight (sweep line over [start, start + latency]) among successes."""
    events: list[tuple[float, int]] = []
    for r in records:
        if r.success:
            events.append((r.start, 1))
            events.append((r.start + r.latency, -1))
    events.sort(key=lambda e: (e[0], e[1]))  # an end at the same instant as a start frees first
    peak = now = 0
    for _, delta in events:
        now += delta
        peak = max(peak, now)
    return peak


def stats_keys(name: str, values_s: Sequence[float], percentiles: Sequence[float]) -> dict[str, float]:
    """mean_/median_/std_/pNN_<name>_ms from values in seconds."""
    ms = [v * 1000.0 for v in values_s]
    out = {f"mean_{name}_ms": mean(ms), f"median_{name}_ms": percentile(ms, 50.0), f"std_{name}_ms": std(ms)}
    for p in percentiles:
        out[f"p{percentile_label(p)}_{name}_ms"] = percentile(ms, p)
    return out


def compute_metrics(
    records: Sequence[RequestRecord],
    duration_s: float,
    *,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    percentile_metrics: Sequence[str] = DEFAULT_PERCENTILE_METRICS,
    goodput_slo_ms: dict[str, float] | None = None,
) -> dict[str, float | int | None]:
    """The result keys of ``vllm bench serve --save-result`` for these requests."""
    ok = [r for r in records if r.success]
    duration_s = duration_s if duration_s > 0 else float("nan")
    total_in = sum(r.prompt_len for r in ok)
    total_out = sum(r.output_tokens for r in ok)
    series = {
        "ttft": [r.ttft for r in ok],
        "tpot": [r.tpot() for r in ok if r.output_tokens > 1],
        "itl": [gap for r in ok for gap in r.itl],
        "e2el": [r.latency for r in ok],
    }
    good = None
    if goodput_slo_ms:
        good = sum(1 for r in ok if is_good(r, goodput_slo_ms)) / duration_s
    out: dict[str, float | int | None] = {
        "duration": duration_s,
        "completed": len(ok),
        "failed": len(records) - len(ok),
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "request_throughput": len(ok) / duration_s,
        "request_goodput": good,
        "output_throughput": total_out / duration_s,
        "total_token_throughput": (total_in + total_out) / duration_s,
        "max_output_tokens_per_s": max_output_tokens_per_s(records),
        "max_concurrent_requests": max_concurrent_requests(records),
    }
    for name in METRICS:  # like vLLM, only the selected metrics get keys at all
        if name in percentile_metrics:
            out.update(stats_keys(name, series[name], percentiles))
    return out


def extra_metrics(records: Sequence[RequestRecord], duration_s: float,
                  percentiles: Sequence[float] = DEFAULT_PERCENTILES) -> dict:
    """What vLLM does not report but users ask for: first-content TTFT, per-user speed, token sources."""
    ok = [r for r in records if r.success]
    content = [r.ttft_content for r in ok if r.ttft_content is not None]
    tpots = [r.tpot() for r in ok if r.output_tokens > 1]
    median_tpot = percentile(tpots, 50.0)
    decode_window = [(r.start + r.ttft, r.start + r.latency) for r in ok if r.output_tokens > 1]
    decode_tokens = sum(r.output_tokens - 1 for r in ok if r.output_tokens > 1)
    decode_span = (max(e for _, e in decode_window) - min(s for s, _ in decode_window)) if decode_window else 0.0
    sources = sorted({r.token_count_source for r in ok if r.token_count_source})
    prompt_sources = sorted({r.prompt_len_source for r in ok})
    groups = error_groups(records)
    return {
        "ttft_content_ms": {k.replace("_ttft_content_ms", ""): v
                            for k, v in stats_keys("ttft_content", content, percentiles).items()},
        "ttft_content_count": len(content),
        "tpot_per_user_tok_s": (1000.0 / (median_tpot * 1000.0)) if median_tpot > 0 else None,
        "decode_throughput": (decode_tokens / decode_span) if decode_span > 0 else None,
        "token_count_source": sources[0] if len(sources) == 1 else ("mixed:" + ",".join(sources) if sources else ""),
        "prompt_len_source": prompt_sources[0] if len(prompt_sources) == 1 else "mixed:" + ",".join(prompt_sources),
        "chunks_per_s": sum(r.chunks for r in ok) / duration_s if duration_s > 0 else 0.0,
        "error_counts": {cause: g["count"] for cause, g in groups.items()},
        "error_examples": {cause: g["examples"] for cause, g in groups.items()},
    }


def error_groups(records: Sequence[RequestRecord], examples: int = 2) -> dict[str, dict]:
    """Failed requests by cause (the error's first word: HTTP 500, timeout, connection...), most frequent
    first, with the first ``examples`` messages of each (in request order)."""
    groups: dict[str, dict] = {}
    for r in sorted(records, key=lambda x: x.index):
        if r.success:
            continue
        cause = r.error.split(":")[0] if r.error else "unknown"
        g = groups.setdefault(cause, {"count": 0, "examples": []})
        g["count"] += 1
        if len(g["examples"]) < examples and r.error not in g["examples"]:
            g["examples"].append(r.error or "no error message")
    return dict(sorted(groups.items(), key=lambda kv: -kv[1]["count"]))
