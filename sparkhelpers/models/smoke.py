"""Wait for the serving engine to be healthy, then prove it answers one chat request.

Bounded in count and time; the API key travels in a header, never on a command line.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sparkhelpers.errors import SparkError


@dataclass
class SmokeResult:
    url: str
    model: str
    reply: str
    completion_tokens: int
    seconds_to_healthy: float
    seconds_to_answer: float


def smoke(url: str, *, key: str = "", expect_model: str = "", timeout_s: float = 1800,
          interval_s: float = 2.0, echo=None) -> SmokeResult:  # noqa: ANN001
    import requests

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    t0 = time.monotonic()
    last = "no answer"
    next_note = t0 + 30
    while True:
        try:
            r = requests.get(f"{url}/health", headers=headers, timeout=5)
            if r.status_code == 200:
                break
            last = f"HTTP {r.status_code}"
        except requests.RequestException as exc:
            last = type(exc).__name__
        if time.monotonic() - t0 > timeout_s:
            raise SparkError(f"{url}/health did not answer 200 within {timeout_s:g} s (last: {last})",
                             fix="read the engine log (the start script prints where it is)")
        if echo and time.monotonic() > next_note:
            echo(f"waiting for {url}/health ({time.monotonic() - t0:.0f} s, last: {last})")
            next_note += 30
        time.sleep(interval_s)
    healthy = time.monotonic() - t0
    try:
        r = requests.get(f"{url}/v1/models", headers=headers, timeout=30)
        r.raise_for_status()
        ids = [m["id"] for m in r.json().get("data", [])]
    except (requests.RequestException, ValueError, KeyError) as exc:
        raise SparkError(f"{url}/v1/models failed: {exc}", fix="check API_KEY and the engine log") from None
    if not ids:
        raise SparkError(f"{url}/v1/models lists no model", fix="read the engine log")
    model = expect_model if expect_model in ids else ids[0]
    if expect_model and expect_model not in ids:
        raise SparkError(f"the engine serves {', '.join(ids)}, not {expect_model}",
                         fix="restart the cluster so it picks up MODEL (./stop_cluster.sh && ./start_cluster.sh)")
    t1 = time.monotonic()
    body = {"model": model, "messages": [{"role": "user", "content": "Say OK"}], "max_tokens": 8,
            "temperature": 0}
    try:
        r = requests.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=300)
        r.raise_for_status()
        data = r.json()
        reply = data["choices"][0]["message"].get("content") or ""
        tokens = int((data.get("usage") or {}).get("completion_tokens") or 0)
    except (requests.RequestException, ValueError, KeyError, IndexError) as exc:
        raise SparkError(f"smoke chat request to {model} failed: {exc}", fix="read the engine log") from None
    if not reply.strip() and tokens == 0:
        raise SparkError(f"{model} answered with no tokens", fix="read the engine log")
    return SmokeResult(url, model, reply.strip(), tokens, round(healthy, 2), round(time.monotonic() - t1, 2))
