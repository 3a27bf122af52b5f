#!/usr/bin/env python3
"""A recording relay for the gateway tests: forwards every request to a real engine and writes what the engine
sent back, chunk by chunk, to a JSONL file (one line per response: path, status, base64 chunks, whether the
client hung up). The gateway treats it as the engine, so a test can compare what a client got with what the
engine sent.

Usage: tests/gateway_relay.py PORT UPSTREAM_URL RECORD_FILE
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys

import aiohttp
from aiohttp import web


def main() -> None:
    port, upstream, record = int(sys.argv[1]), sys.argv[2].rstrip("/"), sys.argv[3]
    state: dict = {}

    async def relay(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "authorization")}
        entry = {"path": request.path, "request": body.decode(errors="replace"), "chunks": [], "hung_up": False}
        try:
            async with state["session"].request(request.method, upstream + request.path_qs, data=body or None,
                                                headers=headers) as up:
                entry["status"] = up.status
                resp = web.StreamResponse(status=up.status,
                                          headers={"Content-Type": up.headers.get("Content-Type", "text/plain")})
                await resp.prepare(request)
                async for chunk in up.content.iter_any():
                    entry["chunks"].append(base64.b64encode(chunk).decode())
                    await resp.write(chunk)
                await resp.write_eof()
                return resp
        except (asyncio.CancelledError, ConnectionResetError):
            entry["hung_up"] = True
            raise
        finally:
            if request.path.startswith("/v1/"):
                with open(record, "a") as fh:
                    fh.write(json.dumps(entry) + "\n")

    async def startup(app: web.Application) -> None:
        state["session"] = aiohttp.ClientSession(auto_decompress=False)

    async def cleanup(app: web.Application) -> None:
        await state["session"].close()

    app = web.Application()
    app.on_startup.append(startup)
    app.on_cleanup.append(cleanup)
    app.router.add_route("*", "/{tail:.*}", relay)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, handler_cancellation=True)


if __name__ == "__main__":
    main()
