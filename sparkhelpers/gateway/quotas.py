"""Per-key limits: requests and tokens per minute (sliding 60 s window), requests in parallel, tokens per UTC day.

Counters live in the gateway process (one process serves the cluster); the daily budget starts from the usage
database, so it survives a restart. A refusal carries the seconds until the limit frees up (Retry-After).
"""

from __future__ import annotations

import collections
import datetime as dt
import math
import time
from dataclasses import dataclass, field

from sparkhelpers.gateway.keys import KeyInfo

WINDOW_S = 60.0


class QuotaExceeded(Exception):
    def __init__(self, message: str, retry_after: float, limit: str) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = max(1, math.ceil(retry_after))
        self.limit = limit


@dataclass
class KeyCounters:
    requests: collections.deque = field(default_factory=collections.deque)  # start times
    tokens: collections.deque = field(default_factory=collections.deque)  # (time, tokens)
    tokens_in_window: int = 0
    parallel: int = 0
    day: str = ""
    day_tokens: int = 0


def seconds_to_midnight(now: dt.datetime | None = None) -> float:
    now = now or dt.datetime.now(dt.timezone.utc)
    tomorrow = (now + dt.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (tomorrow - now).total_seconds()


class Quotas:
    def __init__(self, tokens_today) -> None:  # noqa: ANN001 - tokens_today(key_id) -> int, from the database
        self.counters: dict[str, KeyCounters] = {}
        self.tokens_today = tokens_today

    def _counters(self, key: KeyInfo, now: float) -> KeyCounters:
        c = self.counters.setdefault(key.id, KeyCounters())
        while c.requests and now - c.requests[0] >= WINDOW_S:
            c.requests.popleft()
        while c.tokens and now - c.tokens[0][0] >= WINDOW_S:
            c.tokens_in_window -= c.tokens.popleft()[1]
        day = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
        if c.day != day:
            c.day, c.day_tokens = day, (self.tokens_today(key.id) if key.tokens_per_day else 0)
        return c

    def admit(self, key: KeyInfo, now: float | None = None) -> None:
        """Count one request start, or raise QuotaExceeded naming the limit it hit."""
        now = time.monotonic() if now is None else now
        c = self._counters(key, now)
        if key.max_parallel and c.parallel >= key.max_parallel:
            raise QuotaExceeded(f"key {key.name}: {key.max_parallel} requests in parallel at most", 1, "parallel")
        if key.rpm and len(c.requests) >= key.rpm:
            raise QuotaExceeded(f"key {key.name}: {key.rpm} requests per minute at most",
                                WINDOW_S - (now - c.requests[0]), "rpm")
        if key.tpm and c.tokens_in_window >= key.tpm:
            raise QuotaExceeded(f"key {key.name}: {key.tpm} tokens per minute at most",
                                WINDOW_S - (now - c.tokens[0][0]), "tpm")
        if key.tokens_per_day and c.day_tokens >= key.tokens_per_day:
            raise QuotaExceeded(f"key {key.name}: {key.tokens_per_day} tokens per day used up",
                                seconds_to_midnight(), "tokens_per_day")
        c.requests.append(now)
        c.parallel += 1

    def done(self, key: KeyInfo, tokens: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        c = self.counters.setdefault(key.id, KeyCounters())
        c.parallel = max(0, c.parallel - 1)
        if tokens:
            c.tokens.append((now, tokens))
            c.tokens_in_window += tokens
            c.day_tokens += tokens
