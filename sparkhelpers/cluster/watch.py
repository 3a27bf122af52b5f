"""``sparkhelpers status --watch``: the status refreshed in place, with the engine's own numbers.

Each refresh collects the status (containers and memory per node, health) and reads the engine's
Prometheus ``/metrics`` (requests running and waiting, KV-cache use, prefix-cache hit rate, tokens/s from
the generation counter between two refreshes). On a terminal the screen is redrawn in place; with
``--json`` each refresh is one JSON object on one line; off a terminal without ``--json`` it prints once.
Ctrl-C ends it cleanly (exit 0).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable

CLEAR = "\033[H\033[2J"


def engine_numbers(endpoint: str, api_key: str = "") -> dict:
    """The engine's gauges and counters now (``available: false`` with the reason when it has no /metrics)."""
    from sparkhelpers.bench import engine_metrics as em

    try:
        snap = em.scrape(endpoint, timeout_s=2.0, api_key=api_key)
    except (OSError, ValueError) as exc:
        return {"available": False, "reason": f"{type(exc).__name__}: {exc}"[:160]}
    queries, hits = snap.get(em.PREFIX_QUERIES), snap.get(em.PREFIX_HITS)
    return {"available": True, "at": snap.at, "requests_running": snap.get(em.RUNNING),
            "requests_waiting": snap.get(em.WAITING), "kv_cache_usage": snap.kv_usage(),
            "prefix_cache_hit_rate": round(hits / queries, 4) if queries and hits is not None else None,
            "generation_tokens": snap.get(em.GENERATION_TOKENS), "preemptions": snap.get(em.PREEMPTIONS)}


def add_rate(now: dict, before: dict | None) -> dict:
    """tokens/s from the generation counter between two refreshes (None on the first, or after a restart)."""
    now["tokens_per_s"] = None
    if before and before.get("available") and now.get("available"):
        t0, t1 = before.get("generation_tokens"), now.get("generation_tokens")
        dt = now["at"] - before["at"]
        if t0 is not None and t1 is not None and t1 >= t0 and dt > 0:
            now["tokens_per_s"] = round((t1 - t0) / dt, 1)
    return now


def engine_text(e: dict) -> str:
    if not e.get("available"):
        return f"  engine: no /metrics ({e.get('reason', 'unknown')})"

    def num(key: str, scale: float = 1.0, unit: str = "") -> str:
        v = e.get(key)
        return "-" if v is None else f"{v * scale:.0f}{unit}" if scale != 1.0 else f"{v:g}{unit}"

    rate = e.get("tokens_per_s")
    return (f"  engine: {num('requests_running')} running, {num('requests_waiting')} waiting; "
            f"KV cache {num('kv_cache_usage', 100, '%')}; prefix hits {num('prefix_cache_hit_rate', 100, '%')}; "
            f"{'-' if rate is None else f'{rate:g}'} tokens/s; preemptions {num('preemptions')}")


def watch(collect: Callable[[], dict], render: Callable[[dict], str], *, interval_s: float = 2.0,
          as_json: bool = False, count: int = 0, out=None, sleep=time.sleep) -> int:  # noqa: ANN001
    """Refresh until Ctrl-C (or ``count`` refreshes). Returns the number of refreshes shown."""
    out = out or sys.stdout
    tty = bool(getattr(out, "isatty", lambda: False)())
    once = not tty and not as_json
    shown, before = 0, None
    try:
        while True:
            data = collect()
            data["engine"] = add_rate(data.get("engine") or {}, before)
            before = data["engine"]
            shown += 1
            if as_json:
                out.write(json.dumps({"refresh": shown, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                      **data}, default=str) + "\n")
            else:
                stamp = time.strftime("%H:%M:%S")
                head = f"sparkhelpers status --watch: every {interval_s:g} s, refresh {shown}, {stamp} (Ctrl-C stops)\n"
                out.write((CLEAR if tty else "") + (head if tty else "") + render(data))
            out.flush()
            if once or (count and shown >= count):
                return shown
            sleep(interval_s)
    except KeyboardInterrupt:
        if tty and not as_json:
            out.write("\n")
        return shown
