#!/usr/bin/env python3
"""Ground-truth OpenAI-compatible streaming server: known TTFT and per-token interval.

Usage: perf/truth_server.py [--port 8199] [--ttft-ms 200] [--itl-ms 20] [--tokens N] [--cpu N]
                            [--close-after-stream-ms MS]

Every request gets its first token TTFT ms after the server received it, then one token every ITL ms,
each deadline absolute from arrival (no drift), then a usage chunk and [DONE]. ``--tokens`` fixes the
reply length (default: the request's max_tokens). Listens on 127.0.0.1 only. ``--close-after-stream-ms``
closes a connection that long after a streamed reply ended, without saying so (no ``Connection: close``),
as llama.cpp's server closes one after each stream: a client that reuses it meanwhile loses its request.

The server records, per request, when its first bytes were read from the socket (its arrival: the
server's own queue of requests landing at once counts as its lateness) and when it actually wrote the
first and the last token (``time.perf_counter``: CLOCK_MONOTONIC, the same clock as a client on this
machine). ``GET /stats`` gives its own lateness (served TTFT and TPOT against the truth, per-token
lateness) and the window from the first arrival to the last write (to charge a client's CPU to its load
only); ``GET /requests`` the raw records; ``POST /reset`` clears them. A client's error minus the
server's lateness is the client's share.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from dataclasses import asdict, dataclass

from aiohttp import web, web_protocol

# A deterministic "book" of common words (one token each in a word-level tokenizer).
BOOK = "\n".join(" ".join(f"w{(i * 31 + j * 7) % 997}" for j in range(12)) + "." for i in range(20000))


@dataclass
class Served:
    """One streamed request as the server wrote it (seconds, perf_counter)."""

    arrival: float
    first: float = 0.0  # the first token's write returned
    last: float = 0.0  # the last token's write returned
    tokens: int = 0
    late_sum_ms: float = 0.0  # per-token lateness against its deadline, summed
    late_max_ms: float = 0.0


REQUESTS: list[Served] = []


SEEN: dict[int, float | None] = {}  # id(connection) -> first read of its next request; None: one is in hand


def stamp_arrivals() -> None:
    """A request's arrival is when its first bytes were read from the socket, not when its handler ran:
    128 requests landing at once are parsed one after another, and that queue is the server's own
    lateness, never the client's. A read on a connection with no request in hand starts the next one
    (HTTP/1.1 clients send the next request only after the previous answer); ``arrival_middleware``
    marks a connection busy while a request (any route, a 404 too) is handled. aiohttp's RequestHandler
    has __slots__: the stamps live in SEEN, dropped when the connection closes."""
    handler = web_protocol.RequestHandler
    received, lost = handler.data_received, handler.connection_lost

    def data_received(self, data: bytes) -> None:  # noqa: ANN001
        if id(self) not in SEEN:
            SEEN[id(self)] = time.perf_counter()
        received(self, data)

    def connection_lost(self, exc: BaseException | None) -> None:  # noqa: ANN001
        SEEN.pop(id(self), None)
        lost(self, exc)

    handler.data_received, handler.connection_lost = data_received, connection_lost


@web.middleware
async def arrival_middleware(request: web.Request, handler) -> web.StreamResponse:  # noqa: ANN001
    key = id(request.protocol)
    seen = SEEN.get(key)
    request["arrival"] = seen if seen is not None else time.perf_counter()
    SEEN[key] = None  # busy: the rest of this request's bytes are not the next one's
    try:
        return await handler(request)
    finally:
        SEEN.pop(key, None)


def sse(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def _pct(xs: list[float], p: float) -> float:
    if not xs:
        return 0.0
    xs = sorted(xs)
    rank = (len(xs) - 1) * p / 100.0
    lo = int(rank)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (rank - lo)


def summarize(served: list[Served], ttft_ms: float, itl_ms: float) -> dict:
    """The server's own timing over the finished requests: what it served against the truth."""
    done = [s for s in served if s.tokens > 0]
    ttfts = [(s.first - s.arrival) * 1000.0 for s in done]
    tpots = [(s.last - s.first) * 1000.0 / (s.tokens - 1) for s in done if s.tokens > 1]
    tokens = sum(s.tokens for s in done)
    mean = (lambda xs: sum(xs) / len(xs) if xs else 0.0)  # noqa: E731
    return {
        "requests": len(done), "tokens": tokens,
        "ttft_mean_ms": mean(ttfts), "ttft_p50_ms": _pct(ttfts, 50), "ttft_p99_ms": _pct(ttfts, 99),
        "ttft_late_mean_ms": mean(ttfts) - ttft_ms if ttfts else 0.0,
        "ttft_late_p50_ms": _pct(ttfts, 50) - ttft_ms if ttfts else 0.0,
        "tpot_mean_ms": mean(tpots), "tpot_late_mean_ms": mean(tpots) - itl_ms if tpots else 0.0,
        "late_mean_ms": sum(s.late_sum_ms for s in done) / tokens if tokens else 0.0,
        "late_max_ms": max((s.late_max_ms for s in done), default=0.0),
        "window_start": min((s.arrival for s in done), default=0.0),
        "window_end": max((s.last for s in done), default=0.0),
    }


def make_app(ttft_ms: float, itl_ms: float, fixed_tokens: int | None,
             close_after_stream_ms: float | None = None) -> web.Application:
    async def models(_request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "truth", "object": "model"}]})

    async def stats(_request: web.Request) -> web.Response:
        return web.json_response(summarize(REQUESTS, ttft_ms, itl_ms))

    async def requests(_request: web.Request) -> web.Response:
        return web.json_response([asdict(s) for s in REQUESTS if s.tokens])

    async def reset(_request: web.Request) -> web.Response:
        REQUESTS.clear()
        return web.json_response({"ok": True})

    async def generate(request: web.Request) -> web.StreamResponse:
        arrival = request["arrival"]
        body = await request.json()
        chat = request.path.endswith("/chat/completions")
        n = fixed_tokens or int(body.get("max_completion_tokens") or body.get("max_tokens") or 16)
        if body.get("stream") is not True:  # non-streaming: the whole answer after the last deadline
            await asyncio.sleep(max(0.0, arrival + (ttft_ms + (n - 1) * itl_ms) / 1000.0 - time.perf_counter()))
            return web.json_response(whole_answer(chat, n))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await stream_tokens(resp, chat, n, arrival, ttft_ms, itl_ms)
        if close_after_stream_ms is not None and request.transport is not None:
            asyncio.get_running_loop().call_later(close_after_stream_ms / 1000.0, request.transport.close)
        return resp

    async def book(_request: web.Request) -> web.Response:  # prompt text for llama-benchy (--book-url)
        return web.Response(text=BOOK, content_type="text/plain")

    app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[arrival_middleware])
    app.router.add_get("/book.txt", book)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/stats", stats)
    app.router.add_get("/requests", requests)
    app.router.add_post("/reset", reset)
    app.router.add_post("/v1/completions", generate)
    app.router.add_post("/v1/chat/completions", generate)
    return app


def whole_answer(chat: bool, n: int) -> dict:
    text = " tok" * n
    choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}
              if chat else {"index": 0, "text": text, "finish_reason": "length"})
    return {"id": "cmpl-truth", "model": "truth", "choices": [choice],
            "usage": {"prompt_tokens": 10, "completion_tokens": n, "total_tokens": 10 + n}}


def token_chunks(chat: bool) -> tuple[bytes, bytes, bytes]:
    """The three SSE messages a reply is made of (built once: the server's own work per token stays small)."""
    base = {"id": "cmpl-truth", "object": "chat.completion.chunk" if chat else "text_completion", "model": "truth"}

    def choice(finish: str | None) -> dict:
        return ({"index": 0, "delta": {"content": " tok"}, "finish_reason": finish} if chat
                else {"index": 0, "text": " tok", "finish_reason": finish})

    return sse({**base, "choices": [choice(None)]}), sse({**base, "choices": [choice("length")]}), sse(base)


CHUNKS = {chat: token_chunks(chat) for chat in (False, True)}


async def stream_tokens(resp: web.StreamResponse, chat: bool, n: int, arrival: float, ttft_ms: float,
                        itl_ms: float) -> None:
    middle, final, base = CHUNKS[chat]
    rec = Served(arrival)
    REQUESTS.append(rec)
    for i in range(n):
        deadline = arrival + (ttft_ms + i * itl_ms) / 1000.0
        delay = deadline - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await resp.write(final if i == n - 1 else middle)
        now = time.perf_counter()
        if i == 0:
            rec.first = now
        rec.last, rec.tokens = now, i + 1
        late = max(0.0, (now - deadline) * 1000.0)
        rec.late_sum_ms += late
        rec.late_max_ms = max(rec.late_max_ms, late)
    usage = json.loads(base[6:])
    usage.update(choices=[], usage={"prompt_tokens": 10, "completion_tokens": n, "total_tokens": 10 + n})
    await resp.write(sse(usage))
    await resp.write(b"data: [DONE]\n\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8199)
    ap.add_argument("--ttft-ms", type=float, default=200.0)
    ap.add_argument("--itl-ms", type=float, default=20.0)
    ap.add_argument("--tokens", type=int, default=None)
    ap.add_argument("--cpu", type=int, default=None, help="pin the server to this CPU")
    ap.add_argument("--close-after-stream-ms", type=float, default=None,
                    help="close a connection this long after a streamed reply (as llama.cpp's server does)")
    args = ap.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    stamp_arrivals()
    app = make_app(args.ttft_ms, args.itl_ms, args.tokens, args.close_after_stream_ms)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None, backlog=1024)


if __name__ == "__main__":
    main()
