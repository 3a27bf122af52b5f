"""The engine's own view of a run: its Prometheus ``/metrics`` (vLLM's names), read before, during and after.

Parsed with prometheus_client's text parser. Counters are compared before and after the run (the delta
is the run's: prefix-cache hit rate, preemptions, speculative-decoding acceptance, server-side TTFT and
ITL from the histograms); gauges are sampled while it runs (peak KV-cache use, peak waiting and running
requests). Label sets (engines, models) are summed. An engine without ``/metrics`` gives
``{"available": false, "reason": ...}``, never a failed benchmark.
"""

from __future__ import annotations

import http.client
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_USAGE = "vllm:kv_cache_usage_perc"  # a fraction 0-1 despite the name
KV_USAGE_OLD = "vllm:gpu_cache_usage_perc"  # before vLLM 0.10
PREFIX_QUERIES = "vllm:prefix_cache_queries"
PREFIX_HITS = "vllm:prefix_cache_hits"
PREEMPTIONS = "vllm:num_preemptions"
SPEC_DRAFTS = "vllm:spec_decode_num_drafts"
SPEC_DRAFT_TOKENS = "vllm:spec_decode_num_draft_tokens"
SPEC_ACCEPTED = "vllm:spec_decode_num_accepted_tokens"
TTFT = "vllm:time_to_first_token_seconds"
ITL = ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds")  # new name, old name
PROMPT_TOKENS = "vllm:prompt_tokens"
GENERATION_TOKENS = "vllm:generation_tokens"
GAUGES = (RUNNING, WAITING, KV_USAGE, KV_USAGE_OLD)


@dataclass
class Snapshot:
    """One scrape: each family summed over its label sets. Counters under the family name (no _total)."""

    values: dict[str, float] = field(default_factory=dict)
    histograms: dict[str, tuple[float, float]] = field(default_factory=dict)  # name -> (sum, count)
    at: float = 0.0

    def get(self, *names: str) -> float | None:
        for name in names:
            if name in self.values:
                return self.values[name]
        return None

    def kv_usage(self) -> float | None:
        return self.get(KV_USAGE, KV_USAGE_OLD)


def parse(text: str) -> Snapshot:
    """Prometheus text exposition -> Snapshot. Raises ValueError for text that is not the format."""
    from prometheus_client.parser import text_string_to_metric_families

    snap = Snapshot(at=time.monotonic())
    for family in text_string_to_metric_families(text):
        if family.type == "histogram":
            total = sum(s.value for s in family.samples if s.name.endswith("_sum"))
            count = sum(s.value for s in family.samples if s.name.endswith("_count"))
            snap.histograms[family.name] = (total, count)
            continue
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            # counters by family name (vllm:prefix_cache_hits); untyped samples lose _total the same way
            name = family.name if family.type == "counter" else sample.name
            if family.type in ("counter", "unknown"):
                name = name.removesuffix("_total")
            snap.values[name] = snap.values.get(name, 0.0) + float(sample.value)
    return snap


def metrics_url(base_url: str) -> str:
    return base_url.rstrip("/") + "/metrics"


def scrape(base_url: str, timeout_s: float = 3.0, api_key: str = "") -> Snapshot:
    """GET /metrics (plain http.client: no proxy from the environment), with the API key when one is set
    (vLLM serves /metrics without it; a gateway may not). Raises OSError/ValueError."""
    parts = urlsplit(metrics_url(base_url))
    conn_cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = conn_cls(parts.hostname, parts.port, timeout=timeout_s)
    try:
        conn.request("GET", parts.path, headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
        resp = conn.getresponse()
        body = resp.read().decode("utf-8", "replace")
    finally:
        conn.close()
    if resp.status != 200:
        raise ValueError(f"HTTP {resp.status}")
    return parse(body)


class Watcher:
    """Scrapes before the run, every ``interval_s`` during it (gauge peaks) and after it (counter deltas)."""

    def __init__(self, base_url: str, interval_s: float = 0.5, api_key: str = "") -> None:
        self.base_url, self.interval_s, self._key = base_url, interval_s, api_key
        self.before: Snapshot | None = None
        self.reason = ""
        self.peaks: dict[str, float] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _take(self) -> Snapshot | None:
        try:
            snap = scrape(self.base_url, api_key=self._key)
        except (OSError, ValueError) as exc:
            self.reason = self.reason or f"{metrics_url(self.base_url)}: {type(exc).__name__}: {exc}"[:200]
            return None
        self.samples += 1
        for name in GAUGES:
            if name in snap.values:
                self.peaks[name] = max(self.peaks.get(name, 0.0), snap.values[name])
        return snap

    def start(self) -> Watcher:
        self.before = self._take()
        if self.before is not None:
            self._thread = threading.Thread(target=self._loop, name="engine-metrics", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._take()

    def stop(self) -> dict:
        """The run's engine section for the result document."""
        self._stop.set()
        if self._thread:
            self._thread.join(5)
        after = self._take() if self.before is not None else None
        if self.before is None or after is None:
            return {"available": False, "reason": self.reason or "no /metrics"}
        return summarize(self.before, after, self.peaks, self.samples)


def _delta(before: Snapshot, after: Snapshot, *names: str) -> float | None:
    a, b = after.get(*names), before.get(*names)
    if a is None:
        return None
    return max(0.0, a - (b or 0.0))  # a restarted engine resets its counters: never a negative delta


def _hist_mean_ms(before: Snapshot, after: Snapshot, *names: str) -> float | None:
    for name in names:
        if name in after.histograms:
            s1, c1 = after.histograms[name]
            s0, c0 = before.histograms.get(name, (0.0, 0.0))
            return round(1000.0 * (s1 - s0) / (c1 - c0), 3) if c1 > c0 else None
    return None


def summarize(before: Snapshot, after: Snapshot, peaks: dict[str, float], samples: int = 2) -> dict:
    queries, hits = _delta(before, after, PREFIX_QUERIES), _delta(before, after, PREFIX_HITS)
    drafted, accepted = _delta(before, after, SPEC_DRAFT_TOKENS), _delta(before, after, SPEC_ACCEPTED)
    kv_peak = peaks.get(KV_USAGE, peaks.get(KV_USAGE_OLD))
    out = {
        "available": True,
        "samples": samples,
        "prefix_cache_queries": queries,
        "prefix_cache_hits": hits,
        "prefix_cache_hit_rate": round(hits / queries, 4) if queries and hits is not None else None,
        "preemptions": _delta(before, after, PREEMPTIONS),
        "peak_kv_cache_usage": round(kv_peak, 4) if kv_peak is not None else None,
        "peak_requests_waiting": peaks.get(WAITING),
        "peak_requests_running": peaks.get(RUNNING),
        "prompt_tokens": _delta(before, after, PROMPT_TOKENS),
        "generation_tokens": _delta(before, after, GENERATION_TOKENS),
        "server_mean_ttft_ms": _hist_mean_ms(before, after, TTFT),
        "server_mean_itl_ms": _hist_mean_ms(before, after, *ITL),
    }
    if drafted:
        out.update(spec_decode_drafts=_delta(before, after, SPEC_DRAFTS), spec_decode_draft_tokens=drafted,
                   spec_decode_accepted_tokens=accepted,
                   spec_decode_acceptance_rate=round((accepted or 0.0) / drafted, 4))
    return out
