"""vLLM's Prometheus /metrics for the stand-in engine, from what its real llama.cpp backend reports.

- running / waiting: requests in the proxy; those beyond the backend's slots wait (as in vLLM's queue).
- KV-cache use: tokens held by the slots that are processing (llama.cpp's /slots) over all slots' context.
- prefix cache: every prompt token is a query; a hit is a token llama.cpp reused from a slot's cache
  (usage.prompt_tokens_details.cached_tokens, else timings.cache_n). With --no-enable-prefix-caching both
  counters stay 0, as in vLLM (its KV manager records no prefix stats then).
- TTFT and inter-token latency histograms measured at this proxy, vLLM's bucket bounds.
- speculative decoding (n-gram, when configured): drafts, draft and accepted tokens from llama.cpp's timings.
- preemptions: llama.cpp never preempts a running sequence, so the counter stays 0 (a true value).
Written as text exposition by hand (the image carries no prometheus_client); names, types and labels
as vLLM's (``engine``, ``model_name``).
"""

from __future__ import annotations

import json
import threading

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
               40.0, 80.0)


class Histogram:
    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds, self.counts, self.sum, self.count = bounds, [0] * len(bounds), 0.0, 0

    def observe(self, value: float) -> None:
        self.sum += value
        self.count += 1
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1

    def lines(self, name: str, labels: str) -> list[str]:
        out = [f'{name}_bucket{{{labels},le="{b}"}} {float(c)}' for b, c in zip(self.bounds, self.counts, strict=True)]
        return out + [f'{name}_bucket{{{labels},le="+Inf"}} {float(self.count)}', f"{name}_sum{{{labels}}} {self.sum}",
                      f"{name}_count{{{labels}}} {float(self.count)}"]


class EngineMetrics:
    """The proxy's counters (``running``/``finished`` under ``lock`` as before) plus vLLM's metric set."""

    def __init__(self, slots: int, kv_tokens: int = 0, prefix_cache: bool = True, speculative: bool = False) -> None:
        self.lock = threading.Lock()
        self.slots = max(1, slots)
        self.kv_tokens = kv_tokens  # the KV pool (0: the sum of the slots' n_ctx)
        self.prefix_cache = prefix_cache
        self.speculative = speculative  # vLLM exports spec-decode counters only when it is configured
        self.drafts = self.draft_tokens = self.accepted_tokens = 0
        self.running = 0  # in the proxy: the backend's slots first, then waiting
        self.finished = 0
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.prefix_queries = 0
        self.prefix_hits = 0
        self.ttft = Histogram(TTFT_BUCKETS)
        self.itl = Histogram(ITL_BUCKETS)

    def count(self, usage: dict | None, timings: dict | None = None) -> None:
        if not usage:
            return
        prompt = int(usage.get("prompt_tokens") or 0)
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        if cached is None:
            cached = (timings or {}).get("cache_n", 0)
        with self.lock:
            self.prompt_tokens += prompt
            self.generation_tokens += int(usage.get("completion_tokens") or 0)
            if self.prefix_cache:  # vLLM records no prefix-cache stats with caching off
                self.prefix_queries += prompt
                self.prefix_hits += min(prompt, int(cached or 0))
            if self.speculative and (timings or {}).get("draft_n"):
                self.drafts += 1
                self.draft_tokens += int(timings["draft_n"])
                self.accepted_tokens += int(timings.get("draft_n_accepted") or 0)

    def token(self, since_start: float, since_last: float | None) -> None:
        with self.lock:
            if since_last is None:
                self.ttft.observe(since_start)
            else:
                self.itl.observe(since_last)

    def render(self, slots_json: bytes | None, model_name: str) -> str:
        kv = kv_usage(slots_json, self.kv_tokens)
        labels = f'engine="0",model_name="{model_name}"'
        with self.lock:
            running, waiting = min(self.running, self.slots), max(0, self.running - self.slots)
            lines = [
                "# HELP vllm:num_requests_running Number of requests in model execution batches.",
                "# TYPE vllm:num_requests_running gauge", f"vllm:num_requests_running{{{labels}}} {float(running)}",
                "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
                "# TYPE vllm:num_requests_waiting gauge", f"vllm:num_requests_waiting{{{labels}}} {float(waiting)}",
                "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.",
                "# TYPE vllm:kv_cache_usage_perc gauge", f"vllm:kv_cache_usage_perc{{{labels}}} {kv}",
            ]
            for name, value, text in (
                    ("vllm:prefix_cache_queries", self.prefix_queries, "Prefix cache queries, in tokens."),
                    ("vllm:prefix_cache_hits", self.prefix_hits, "Prefix cache hits, in tokens."),
                    ("vllm:num_preemptions", 0, "Cumulative number of preemptions from the engine."),
                    ("vllm:prompt_tokens", self.prompt_tokens, "Number of prefill tokens processed."),
                    ("vllm:generation_tokens", self.generation_tokens, "Number of generation tokens processed."),
                    ("vllm:request_success", self.finished, "Count of successfully processed requests.")):
                lines += [f"# HELP {name}_total {text}", f"# TYPE {name}_total counter",
                          f"{name}_total{{{labels}}} {float(value)}"]
            if self.speculative:
                for name, value in (("vllm:spec_decode_num_drafts", self.drafts),
                                    ("vllm:spec_decode_num_draft_tokens", self.draft_tokens),
                                    ("vllm:spec_decode_num_accepted_tokens", self.accepted_tokens)):
                    lines += [f"# TYPE {name}_total counter", f"{name}_total{{{labels}}} {float(value)}"]
            for name, hist, text in (("vllm:time_to_first_token_seconds", self.ttft, "Histogram of time to first "
                                      "token in seconds."),
                                     ("vllm:inter_token_latency_seconds", self.itl, "Histogram of inter-token "
                                      "latency in seconds.")):
                lines += [f"# HELP {name} {text}", f"# TYPE {name} histogram", *hist.lines(name, labels)]
        return "\n".join(lines) + "\n"


def kv_usage(slots_json: bytes | None, pool: int = 0) -> float:
    """Tokens in the slots that are processing over the KV pool (``pool``; 0: all slots' context summed, as
    with llama.cpp's split cache); 0.0 when /slots is unavailable."""
    try:
        slots = json.loads(slots_json or b"[]")
    except ValueError:
        return 0.0
    if not isinstance(slots, list) or not slots:
        return 0.0
    total = pool or sum(int(s.get("n_ctx") or 0) for s in slots if isinstance(s, dict))
    used = 0
    for s in slots:
        if not isinstance(s, dict) or not s.get("is_processing"):
            continue
        nxt = s.get("next_token")
        nxt = nxt[0] if isinstance(nxt, list) and nxt else nxt if isinstance(nxt, dict) else {}
        used += int(s.get("n_prompt_tokens") or 0) + int(nxt.get("n_decoded") or 0)
    return round(min(1.0, used / total), 6) if total else 0.0
