"""The data plane: /v1/chat/completions, /v1/completions, /v1/embeddings through the model manager to an engine.

Per request: authenticate (key hash lookup), route by model or alias, check the key's models and quotas, get a
ready replica (starting the model when cold; 503 + Retry-After past the wait limit, 429 past the concurrency
limit), send the request upstream while its usage row is written ahead (ledger.py: a group commit on a writer
thread, awaited before the client gets a byte), forward the body (re-encoded only when the gateway adds
include_usage or renames the model), pass the answer through chunk by chunk (over the raw relay, relay.py; an
https engine over aiohttp's client), and account for it (committed before the client sees the end).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
import urllib.parse
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from sparkhelpers.gateway import manager as mgr
from sparkhelpers.gateway import relay
from sparkhelpers.gateway.keys import KeyInfo
from sparkhelpers.gateway.quotas import QuotaExceeded
from sparkhelpers.gateway.sse import SSETap, usage_of

log = logging.getLogger("sparkhelpers.gateway")
HOP_HEADERS = {"content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding", "date",
               "server"}
STALE_CONNECTION = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)


def error(status: int, message: str, type_: str, code: str | None = None, retry_after: int | None = None,
          ) -> web.Response:
    """An OpenAI-style error body."""
    headers = {"Retry-After": str(retry_after)} if retry_after else None
    return web.json_response({"error": {"message": message, "type": type_, "param": None, "code": code}},
                             status=status, headers=headers)


class UpstreamDown(Exception):
    """The engine could not be reached; nothing was sent to the client yet."""


@dataclass
class Outcome:
    status: int = 0
    prompt: int = 0
    completion: int = 0
    error: bool = False
    ttft_s: float = 0.0
    commit: object = None  # records the request (usage row, quotas, metrics) once
    committed: bool = False
    durable: object = None  # the write-ahead row's commit: awaited before the client gets a byte


def parse_body(raw: bytes) -> dict | web.Response:
    try:
        body = json.loads(raw)
    except ValueError:
        return error(400, "the request body is not JSON", "invalid_request_error")
    if not isinstance(body, dict) or not isinstance(body.get("model"), str) or not body["model"]:
        return error(400, "the request names no model", "invalid_request_error", "model_required")
    return body


def upstream_payload(body: dict, raw: bytes, path: str, upstream_model: str) -> tuple[bytes, bool, bool]:
    """(bytes to send, stream?, strip the usage event?). The client's bytes unless something must change."""
    stream = body.get("stream") is True
    opts = body.get("stream_options") if isinstance(body.get("stream_options"), dict) else {}
    wants_usage = bool(opts.get("include_usage"))
    changed = False
    if stream and not wants_usage and not path.endswith("/embeddings"):
        body["stream_options"] = {**opts, "include_usage": True}
        changed = True
    if upstream_model and body["model"] != upstream_model:
        body["model"] = upstream_model
        changed = True
    payload = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode() if changed else raw
    return payload, stream, stream and not wants_usage


class DataPlane:
    def __init__(self, gw) -> None:  # noqa: ANN001 - the Gateway (server.py)
        self.gw = gw

    async def handle(self, request: web.Request) -> web.StreamResponse:
        t0 = time.perf_counter()
        gw = self.gw
        key = gw.authenticate(request)
        if isinstance(key, web.Response):
            return key
        raw = await request.read()
        body = parse_body(raw)
        if isinstance(body, web.Response):
            return body
        entry = gw.cfg.resolve(body["model"])
        if entry is None:
            gw.metrics.refused.labels("unknown_model").inc()
            return error(404, f"the model {body['model']} does not exist", "invalid_request_error", "model_not_found")
        if not (key.allows(entry.name) or key.allows(body["model"])):
            gw.metrics.refused.labels("model_not_allowed").inc()
            return error(403, f"key {key.name} may not use model {entry.name}", "permission_error",
                         "model_not_allowed")
        try:
            gw.quotas.admit(key)
        except QuotaExceeded as exc:
            gw.metrics.refused.labels(exc.limit).inc()
            return error(429, exc.message, "rate_limit_error", f"rate_limit_{exc.limit}", exc.retry_after)
        return await self._serve(request, key, entry, body, raw, t0)

    async def _acquire(self, entry) -> mgr.ReplicaState | web.Response:  # noqa: ANN001
        gw = self.gw
        wait = gw.cfg.cold_start_wait if entry.cold_start_wait is None else entry.cold_start_wait
        try:
            return await gw.manager.acquire(entry, wait)
        except mgr.ColdStart as exc:
            gw.metrics.refused.labels("cold_start").inc()
            return error(503, str(exc), "service_unavailable", "model_loading", exc.retry_after)
        except mgr.Busy:
            gw.metrics.refused.labels("concurrency").inc()
            return error(429, f"model {entry.name}: {entry.concurrency} requests in flight per replica at most",
                         "rate_limit_error", "concurrency_limit", 1)
        except mgr.StartFailed as exc:
            return error(502, str(exc), "upstream_error", "model_start_failed")

    async def _serve(self, request, key: KeyInfo, entry, body: dict, raw: bytes, t0: float) -> web.StreamResponse:  # noqa: ANN001
        gw = self.gw
        try:
            rs = await self._acquire(entry)
        except BaseException:  # the client left while the model was starting
            gw.quotas.done(key, 0)
            raise
        if isinstance(rs, web.Response):
            gw.quotas.done(key, 0)
            return rs
        payload, stream, strip = upstream_payload(body, raw, request.path, entry.upstream_model)
        out, req_id = Outcome(), ""
        gw.metrics.in_flight.labels(entry.name).inc()
        try:
            req_id, out.durable = gw.ledger.begin(key, entry.name)
            out.durable.add_done_callback(_log_failed_write)  # also when no answer came to await it
            out.commit = lambda: self._account(key, entry.name, req_id, out, t0)
            for attempt in (1, 2):
                try:
                    return await self._forward(request, rs, payload, stream, strip, out, t0)
                except UpstreamDown as exc:  # nothing reached the client yet: a dead engine is started again
                    if attempt == 2 or not await gw.manager.confirm_broken(rs, str(exc)):
                        out.error, out.status = True, 502
                        return error(502, f"the engine for {entry.name} is not answering", "upstream_error",
                                     "engine_down")
                gw.manager.release(rs)
                rs = await self._acquire(entry)
                if isinstance(rs, web.Response):
                    out.error, out.status = True, rs.status
                    return rs
        except asyncio.CancelledError:
            out.error, out.status = True, 499  # the client went away: the upstream request ends with us
            raise
        finally:
            if isinstance(rs, mgr.ReplicaState):
                gw.manager.release(rs)
            gw.metrics.in_flight.labels(entry.name).dec()
            if not out.committed:  # an error or a client gone: recorded with the next group commit
                self._account(key, entry.name, req_id, out, t0).add_done_callback(_log_failed_write)

    def _account(self, key: KeyInfo, model: str, req_id: str, out: Outcome, t0: float) -> asyncio.Future:
        """Quotas and metrics at once; the usage totals with the next group commit (the future)."""
        gw = self.gw
        out.committed = True
        elapsed = time.perf_counter() - t0
        written = gw.ledger.finish(req_id, key, model, prompt=out.prompt, completion=out.completion,
                                   error=out.error, latency_ms=elapsed * 1000.0, ttft_ms=out.ttft_s * 1000.0)
        gw.quotas.done(key, out.prompt + out.completion)
        m = gw.metrics
        m.requests.labels(model, key.name, str(out.status or 502)).inc()
        if out.prompt:
            m.tokens.labels(model, key.name, "prompt").inc(out.prompt)
        if out.completion:
            m.tokens.labels(model, key.name, "completion").inc(out.completion)
        if out.ttft_s:
            m.ttft.labels(model).observe(out.ttft_s)
        m.duration.labels(model).observe(elapsed)
        return written

    async def _forward(self, request, rs, payload: bytes, stream: bool, strip: bool, out: Outcome,  # noqa: ANN001
                       t0: float) -> web.StreamResponse:
        gw = self.gw
        if rs.spec.base_url.startswith("http://"):
            return await self._relay(request, rs, payload, stream, strip, out, t0)
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {gw.internal_key}"}
        url = rs.spec.base_url + request.path
        try:
            try:
                upstream = await gw.upstream.post(url, data=payload, headers=headers)
            except STALE_CONNECTION as exc:
                if isinstance(exc, aiohttp.ClientConnectorError):
                    raise
                # A pooled connection the engine had closed (llama.cpp's server closes one after each stream,
                # any server after its keep-alive timeout): the request never got in, so it goes again once,
                # on a new connection.
                upstream = await gw.upstream_fresh.post(url, data=payload, headers=headers)
        except (aiohttp.ClientConnectionError, OSError, asyncio.TimeoutError) as exc:
            raise UpstreamDown(f"engine for {rs.id} is not answering: {exc}") from None
        try:
            await out.durable  # write-ahead (see _relay)
            out.status = upstream.status
            is_sse = upstream.headers.get("Content-Type", "").startswith("text/event-stream")
            if not (stream and is_sse):
                data = await upstream.read()
                return await self._answer(data, upstream.status, _copy_headers(upstream.headers.items(), rs.id),
                                          out, t0)
            return await self._stream(request, rs, upstream, strip, out, t0)
        finally:
            if upstream.content.at_eof():
                upstream.release()  # read to the end: the connection goes back to the pool
            else:
                upstream.close()  # an unfinished answer closes the upstream connection: the engine stops generating

    async def _answer(self, data: bytes, status: int, headers: dict, out: Outcome, t0: float) -> web.Response:
        """A whole answer, recorded before aiohttp sends it."""
        out.ttft_s = time.perf_counter() - t0
        usage = usage_of(data) if status == 200 else None
        if usage:
            out.prompt, out.completion = usage.prompt, usage.completion
        out.error = status >= 400
        await out.commit()
        return web.Response(body=data, status=status, headers=headers)

    async def _relay(self, request, rs, payload: bytes, stream: bool, strip: bool, out: Outcome,  # noqa: ANN001
                     t0: float) -> web.StreamResponse:
        """A request over the raw relay (relay.py): a streamed answer's bytes reach the client's transport from the
        connection's callback; any other answer is read whole."""
        gw = self.gw
        host, port, prefix = _address(rs.spec.base_url)
        raw = relay.request_bytes(host, port, prefix + request.path, {
            "Content-Type": "application/json", "Authorization": f"Bearer {gw.internal_key}"}, payload)
        try:
            conn, head = await gw.relay_pool.request(host, port, raw)
        except (relay.Broken, OSError, asyncio.TimeoutError) as exc:
            raise UpstreamDown(f"engine for {rs.id} is not answering: {exc}") from None
        try:
            # Write-ahead: the request's row is committed before the client gets a byte, so a kill from then on
            # still counts it. The commit runs while the engine works on the head: it adds nothing to the TTFT.
            await out.durable
            out.status = head.status
            if stream and head.status == 200 and head.get("Content-Type").startswith("text/event-stream"):
                return await self._relay_stream(request, rs, conn, head, strip, out, t0)
            whole = relay.Collector()
            conn.attach(whole)
            try:
                data = await whole.future
            except relay.Broken as exc:
                raise UpstreamDown(f"engine for {rs.id} broke off its answer: {exc}") from None
            return await self._answer(data, head.status, _copy_headers(head.headers, rs.id), out, t0)
        finally:
            gw.relay_pool.give_back(host, port, conn)  # only a connection read to the end is kept: else closed

    async def _relay_stream(self, request, rs, conn, head, strip: bool, out: Outcome,  # noqa: ANN001
                            t0: float) -> web.StreamResponse:
        resp = web.StreamResponse(status=head.status, headers=_copy_headers(head.headers, rs.id))
        await resp.prepare(request)
        await resp.write(b"")  # the head goes now; the body straight to the transport
        tap = SSETap(strip)
        sink = relay.Sink(request.transport, resp.headers.get("Transfer-Encoding") == "chunked", tap, conn)
        conn.attach(sink)
        while (event := await sink.next_event()) != "end":
            out.ttft_s = out.ttft_s or (sink.first_token_at - t0 if sink.first_token_at else 0.0)
            if event == "usage":
                out.prompt, out.completion = tap.usage.prompt, tap.usage.completion
                await out.commit()
            elif event == "drain":
                await _drained(request.transport)
            else:
                sink.release()
                self._broken_off(rs, sink.write, out, event)
                break
            sink.release()
        out.ttft_s = out.ttft_s or (sink.first_token_at - t0 if sink.first_token_at else 0.0)
        sink.write(tap.flush())
        self._tally(tap, out)
        await resp.write_eof()
        return resp

    def _broken_off(self, rs, write, out: Outcome, exc: Exception) -> None:  # noqa: ANN001
        """The engine failed mid-stream: the client gets one error event and the stream ends cleanly."""
        out.error, out.status = True, 502
        self.gw.manager.suspect(rs, f"engine for {rs.id} broke off a stream: {exc}")
        message = f"the engine for {rs.entry.name} failed mid-stream; retry the request"
        event = {"error": {"message": message, "type": "upstream_error", "param": None, "code": "engine_failed"}}
        write(b"data: " + json.dumps(event).encode() + b"\n\n")

    @staticmethod
    def _tally(tap: SSETap, out: Outcome) -> None:
        if tap.usage.seen:
            out.prompt, out.completion = tap.usage.prompt, tap.usage.completion
        elif out.status == 200 and not out.committed:
            out.completion = tap.content_events  # cut short: one token per content event, a lower bound
        out.error = out.error or tap.error_event

    async def _stream(self, request, rs, upstream, strip: bool, out: Outcome, t0: float) -> web.StreamResponse:  # noqa: ANN001
        resp = web.StreamResponse(status=upstream.status, headers=_copy_headers(upstream.headers.items(), rs.id))
        await resp.prepare(request)
        tap = SSETap(strip)
        read, feed, write = upstream.content.readany, tap.feed, resp.write  # the per-token loop: no lookups
        try:
            while chunk := await read():
                send = feed(chunk)
                if not out.ttft_s and tap.first_token:
                    out.ttft_s = time.perf_counter() - t0
                if tap.usage.seen and not out.committed:  # recorded before the client sees the end
                    out.prompt, out.completion = tap.usage.prompt, tap.usage.completion
                    await out.commit()
                if send:
                    await write(send)
            rest = tap.flush()
            if rest:
                await resp.write(rest)
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError,
                asyncio.TimeoutError) as exc:
            errors: list[bytes] = []
            self._broken_off(rs, errors.append, out, exc)
            await resp.write(errors[0])
        self._tally(tap, out)
        await resp.write_eof()
        return resp


def _log_failed_write(future: asyncio.Future) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("a usage row could not be written: %s", future.exception())


def _copy_headers(items, replica: str) -> dict[str, str]:  # noqa: ANN001 - (name, value) pairs
    headers = {k: v for k, v in items if k.lower() not in HOP_HEADERS}
    headers["X-Sparkhelpers-Replica"] = replica
    return headers


async def _drained(transport, low: int = 64 * 1024) -> None:  # noqa: ANN001
    """Until a slow client has read most of what it was sent (or is gone)."""
    while transport.get_write_buffer_size() > low and not transport.is_closing():
        await asyncio.sleep(0.005)


@functools.lru_cache(maxsize=256)
def _address(base_url: str) -> tuple[str, int, str]:
    url = urllib.parse.urlsplit(base_url)
    return url.hostname or "127.0.0.1", url.port or 80, url.path.rstrip("/")
