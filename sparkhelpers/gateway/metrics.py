"""Prometheus metrics of the gateway (prometheus-client, its own registry) and the engines' own, scraped.

Labels carry model names and key *names* only, never a key. Each ready engine's /metrics is fetched when
/metrics is scraped and appended with ``model`` and ``replica`` labels added to every sample.
"""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        p = "sparkhelpers_gateway_"
        self.requests = Counter(p + "requests", "Requests answered, by model, key name and HTTP status.",
                                ["model", "key", "code"], registry=r)
        self.tokens = Counter(p + "tokens", "Tokens from the engines' usage, by model, key name and kind.",
                              ["model", "key", "kind"], registry=r)
        self.ttft = Histogram(p + "time_to_first_byte_seconds", "Seconds from request to the first byte upstream "
                              "sent (first token for a stream).", ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.duration = Histogram(p + "request_duration_seconds", "Seconds from request to the last byte.",
                                  ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge(p + "requests_in_flight", "Requests in flight.", ["model"], registry=r)
        self.loads = Counter(p + "model_loads", "Engine starts that became ready.", ["model"], registry=r)
        self.evictions = Counter(p + "model_evictions", "Engines stopped while ready (ttl, swap, unload).",
                                 ["model", "reason"], registry=r)
        self.failures = Counter(p + "model_failures", "Engines that failed to start or died.", ["model", "kind"],
                                registry=r)
        self.state = Gauge(p + "replica_up", "1 when the replica is ready.", ["model", "replica"], registry=r)
        self.refused = Counter(p + "refused", "Requests refused before any engine saw them, by reason.",
                               ["reason"], registry=r)

    # ModelManager hooks
    def on_load(self, model: str) -> None:
        self.loads.labels(model).inc()

    def on_evict(self, model: str, reason: str) -> None:
        self.evictions.labels(model, reason).inc()

    def on_failure(self, model: str, kind: str) -> None:
        self.failures.labels(model, kind).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?(\s.*)$")


def relabel(text: str, labels: dict[str, str], seen_meta: set[str]) -> str:
    """An engine's exposition text with ``labels`` added to each sample; HELP/TYPE lines kept once per family."""
    extra = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                tag = f"{parts[1]} {parts[2]}"
                if tag in seen_meta:
                    continue
                seen_meta.add(tag)
            out.append(line)
            continue
        m = SAMPLE_RE.match(line)
        if not m:
            continue
        name, existing, rest = m.groups()
        inner = existing[1:-1] if existing else ""
        out.append(f"{name}{{{extra}{',' + inner if inner else ''}}}{rest}")
    return "\n".join(out) + ("\n" if out else "")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
