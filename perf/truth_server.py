#!/usr/bin/env python3
"""Ground-truth OpenAI-compatible streaming server: known TTFT and per-token interval.

Usage: perf/truth_server.py [--port 8199] [--ttft-ms 200] [--itl-ms 20] [--tokens N] [--cpu N]

Every request gets its first token TTFT ms after the server received it, then one token every ITL ms,
each deadline absolute from arrival (no drift), then a usage chunk and [DONE]. ``--tokens`` fixes the
reply length (default: the request's max_tokens). Listens on 127.0.0.1 only. GET /stats returns how late
the server itself wrote its tokens (its own error, which is not the client's).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

from aiohttp import web

LATE: list[float] = []  # ms each token was written after its deadline
# A deterministic "book" of common words (one token each in a word-level tokenizer).
BOOK = "\n".join(" ".join(f"w{(i * 31 + j * 7) % 997}" for j in range(12)) + "." for i in range(20000))


def sse(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def make_app(ttft_ms: float, itl_ms: float, fixed_tokens: int | None) -> web.Application:
    async def models(_request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "truth", "object": "model"}]})

    async def stats(_request: web.Request) -> web.Response:
        xs = sorted(LATE)
        p99 = xs[int(0.99 * (len(xs) - 1))] if xs else 0.0
        return web.json_response({"tokens": len(xs), "late_mean_ms": sum(xs) / len(xs) if xs else 0.0,
                                  "late_p99_ms": p99, "late_max_ms": xs[-1] if xs else 0.0})

    async def reset(_request: web.Request) -> web.Response:
        LATE.clear()
        return web.json_response({"ok": True})

    async def generate(request: web.Request) -> web.StreamResponse:
        arrival = time.perf_counter()
        body = await request.json()
        chat = request.path.endswith("/chat/completions")
        n = fixed_tokens or int(body.get("max_completion_tokens") or body.get("max_tokens") or 16)
        if body.get("stream") is not True:  # non-streaming: the whole answer after the last deadline
            await asyncio.sleep(max(0.0, arrival + (ttft_ms + (n - 1) * itl_ms) / 1000.0 - time.perf_counter()))
            text = " tok" * n
            choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}
                      if chat else {"index": 0, "text": text, "finish_reason": "length"})
            return web.json_response({"id": "cmpl-truth", "model": "truth", "choices": [choice],
                                      "usage": {"prompt_tokens": 10, "completion_tokens": n, "total_tokens": 10 + n}})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        base = {"id": "cmpl-truth", "object": "chat.completion.chunk" if chat else "text_completion",
                "model": "truth"}
        for i in range(n):
            deadline = arrival + (ttft_ms + i * itl_ms) / 1000.0
            delay = deadline - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            finish = "length" if i == n - 1 else None
            choice = ({"index": 0, "delta": {"content": " tok"}, "finish_reason": finish} if chat
                      else {"index": 0, "text": " tok", "finish_reason": finish})
            await resp.write(sse({**base, "choices": [choice]}))
            LATE.append(max(0.0, (time.perf_counter() - deadline) * 1000.0))
        await resp.write(sse({**base, "choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": n,
                                                              "total_tokens": 10 + n}}))
        await resp.write(b"data: [DONE]\n\n")
        return resp

    async def book(_request: web.Request) -> web.Response:  # prompt text for llama-benchy (--book-url)
        return web.Response(text=BOOK, content_type="text/plain")

    app = web.Application()
    app.router.add_get("/book.txt", book)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/stats", stats)
    app.router.add_post("/reset", reset)
    app.router.add_post("/v1/completions", generate)
    app.router.add_post("/v1/chat/completions", generate)
    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8199)
    ap.add_argument("--ttft-ms", type=float, default=200.0)
    ap.add_argument("--itl-ms", type=float, default=20.0)
    ap.add_argument("--tokens", type=int, default=None)
    ap.add_argument("--cpu", type=int, default=None, help="pin the server to this CPU")
    args = ap.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    web.run_app(make_app(args.ttft_ms, args.itl_ms, args.tokens), host="127.0.0.1", port=args.port,
                print=None, access_log=None, backlog=1024)


if __name__ == "__main__":
    main()
