"""The raw relay for streamed answers: an HTTP/1.1 connection of our own to the engine, whose bytes are handed to
the client's transport from the protocol callback, with no task switch, queue or per-chunk await in between.

aiohttp's client costs a request set-up (ClientRequest, connector, timers) of a few hundred µs, and per chunk a
parse into a StreamReader, a wake-up of the handler task and an awaited write. Here a chunk is one
``data_received`` call: the chunked framing is cut off, ``sink.data(payload)`` runs the SSE tap and writes to the
client at once. What must wait (the usage commit before the client sees the end, a client that reads slowly)
pauses the engine's connection and wakes the handler task (``Sink``, in proxy.py), which resumes it.

Connections are kept alive per engine (``Pool``); one that the engine closed while idle is replaced once, before
anything was sent back, so a stale connection never looks like a dead engine.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

CONNECT_TIMEOUT_S = 10.0
MAX_HEAD = 64 * 1024
MAX_IDLE_PER_ENGINE = 256


class Broken(Exception):
    """The engine's connection failed or broke the protocol (``before_head``: nothing came back yet)."""

    def __init__(self, message: str, before_head: bool) -> None:
        super().__init__(message)
        self.before_head = before_head


@dataclass
class Head:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    keep_alive: bool = True

    def get(self, name: str, default: str = "") -> str:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), default)


def parse_head(raw: bytes) -> tuple[Head, int | None, bool]:
    """(head, content length or None, chunked?) of an HTTP/1.x response head (without the blank line)."""
    lines = raw.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    if not version.startswith("HTTP/1.") or not rest[:3].isdigit():
        raise Broken(f"not an HTTP/1.x answer: {lines[0][:80]!r}", before_head=True)
    head = Head(int(rest[:3]), keep_alive=version != "HTTP/1.0")
    length, chunked = None, False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name, value = name.strip(), value.strip()
        low = name.lower()
        if low == "content-length":
            length = int(value)
        elif low == "transfer-encoding":
            chunked = "chunked" in value.lower()
        elif low == "connection":
            head.keep_alive = "close" not in value.lower() and (head.keep_alive or "keep-alive" in value.lower())
        head.headers.append((name, value))
    return head, (None if chunked else length), chunked


class Upstream(asyncio.Protocol):
    """One connection to an engine, one request at a time. ``sink`` gets data(bytes), end() and lost(exc)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.sink = None
        self.head_future: asyncio.Future | None = None
        self.buf = b""
        self.left: int | None = None  # body bytes still due (Content-Length), None: chunked or until close
        self.chunked = False
        self.in_body = False
        self.done = True
        self.closed = False
        self.head: Head | None = None
        self.early = b""  # body bytes that came with the head, before a sink was attached

    # ---- asyncio.Protocol ------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.done:
            return
        self.done = True
        why = Broken(f"the engine closed the connection{': ' + str(exc) if exc else ''}", not self.in_body)
        if self.head_future is not None and not self.head_future.done():
            self.head_future.set_exception(why)
        elif self.sink is not None:
            if self.left is None and not self.chunked:  # an answer that ends with the connection: complete
                self.sink.end()
            else:
                self.sink.lost(why)

    def data_received(self, data: bytes) -> None:
        if self.done:
            return
        if not self.in_body:
            self.buf += data
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD:
                    self._fail(Broken("the engine's answer head is too long", before_head=True))
                return
            try:
                self.head, self.left, self.chunked = parse_head(self.buf[:end])
            except (Broken, ValueError) as exc:
                self._fail(exc if isinstance(exc, Broken) else Broken(f"bad answer head: {exc}", True))
                return
            data, self.buf, self.in_body = self.buf[end + 4:], b"", True
            self.head_future.set_result(self.head)
        try:
            payload = self._body(data)
        except ValueError:
            self.close()
            if self.sink is not None:
                self.sink.lost(Broken("the engine's chunked framing is broken", before_head=False))
            return
        if payload and self.sink is not None:
            self.sink.data(payload)
        elif payload:
            self.early += payload
        if self.done and self.sink is not None:
            self.sink.end()

    # ---- the request ---------------------------------------------------------------------------------------
    def send(self, request: bytes) -> asyncio.Future:
        """Writes one request; the future gives its answer's Head."""
        self.head_future = asyncio.get_running_loop().create_future()
        self.buf, self.in_body, self.done, self.head, self.sink, self.early = b"", False, False, None, None, b""
        self.transport.write(request)
        return self.head_future

    def attach(self, sink) -> None:  # noqa: ANN001
        """Body bytes go to ``sink`` from now on (those that came with the head first)."""
        self.sink, early, self.early = sink, self.early, b""
        if early:
            sink.data(early)
        if self.done:
            sink.end()

    def reusable(self) -> bool:
        return self.done and not self.closed and self.head is not None and self.head.keep_alive \
            and not self.buf and self.transport is not None and not self.transport.is_closing()

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def close(self) -> None:
        self.done = True
        if self.transport is not None:
            self.transport.close()

    def _fail(self, exc: Broken) -> None:
        self.close()
        if self.head_future is not None and not self.head_future.done():
            self.head_future.set_exception(exc)

    def _body(self, data: bytes) -> bytes:
        """The payload in ``data`` (framing removed); sets ``done`` at the end of the answer."""
        if not self.chunked:
            if self.left is None:
                return data
            data = data[: self.left]
            self.left -= len(data)
            self.done = self.left == 0
            return data
        buf, out, pos = self.buf + data, [], 0
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            size = int(buf[pos:eol].split(b";", 1)[0] or b"0", 16)
            if size == 0:  # the last chunk: no trailers expected from an engine
                if len(buf) < eol + 4:
                    break
                self.done, pos = True, len(buf)
                break
            if len(buf) < eol + 2 + size + 2:
                break
            out.append(buf[eol + 2: eol + 2 + size])
            pos = eol + 2 + size + 2
        self.buf = buf[pos:]
        return b"".join(out)


class Pool:
    """Idle keep-alive connections per engine (host, port)."""

    def __init__(self) -> None:
        self.idle: dict[tuple[str, int], list[Upstream]] = {}

    async def request(self, host: str, port: int, request: bytes) -> tuple[Upstream, Head]:
        """Sends ``request``; returns the connection and its answer's head. Raises Broken / OSError."""
        idle = self.idle.get((host, port), [])
        while idle:
            conn = idle.pop()
            if conn.reusable():
                try:
                    return conn, await _answered(conn, request)
                except Broken as exc:  # closed by the engine while idle: once more, on a new connection
                    if not exc.before_head:
                        raise
        loop = asyncio.get_running_loop()
        _, conn = await asyncio.wait_for(loop.create_connection(Upstream, host, port), CONNECT_TIMEOUT_S)
        return conn, await _answered(conn, request)

    def give_back(self, host: str, port: int, conn: Upstream) -> None:
        """Keeps a connection read to the end; closes any other (the engine stops generating)."""
        if not conn.reusable():
            conn.close()
            return
        conn.resume_reading()  # a stream may end while its connection was paused
        conn.sink = None
        idle = self.idle.setdefault((host, port), [])
        if len(idle) >= MAX_IDLE_PER_ENGINE:
            conn.close()
            return
        idle.append(conn)

    def close(self) -> None:
        for conns in self.idle.values():
            for conn in conns:
                conn.close()
        self.idle.clear()


async def _answered(conn: Upstream, request: bytes) -> Head:
    """Sends the request and waits for the head; a failure or a client gone closes the connection (the engine
    stops working on it)."""
    try:
        return await conn.send(request)
    except BaseException:
        conn.close()
        raise


def request_bytes(host: str, port: int, path: str, headers: dict[str, str], body: bytes) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Sink:
    """The client's side of a relayed stream: each payload through the SSE tap, then straight to the client's
    transport (chunk-framed when the answer is chunked). What needs the handler task is queued as an event
    (``usage``: commit before the end is sent, ``drain``: the client reads slowly, ``end``, or the Broken error)
    while the engine's connection is paused and the bytes are held."""

    HIGH_WATER = 256 * 1024

    def __init__(self, transport: asyncio.Transport, chunked: bool, tap, upstream: Upstream) -> None:  # noqa: ANN001
        self.transport, self.chunked, self.tap, self.upstream = transport, chunked, tap, upstream
        self.first_token_at = 0.0
        self.held: list[bytes] | None = None
        self.events: list = []
        self.wakeup: asyncio.Future | None = None
        self.usage_noted = False

    def data(self, payload: bytes) -> None:
        send = self.tap.feed(payload)
        if not self.first_token_at and self.tap.first_token:
            self.first_token_at = time.perf_counter()
        if self.held is not None:
            self.held.append(send)
        elif self.tap.usage.seen and not self.usage_noted:  # recorded before the client sees the end
            self.usage_noted = True
            self._hold([send], "usage")
        else:
            self.write(send)
            if self.transport.get_write_buffer_size() > self.HIGH_WATER:
                self._hold([], "drain")

    def end(self) -> None:
        self._signal("end")

    def lost(self, exc: Exception) -> None:
        self._signal(exc)

    def write(self, data: bytes) -> None:
        if data and not self.transport.is_closing():
            self.transport.write(b"%x\r\n%b\r\n" % (len(data), data) if self.chunked else data)

    def release(self) -> None:
        """Sends what was held and reads from the engine again."""
        held, self.held = self.held or [], None
        self.write(b"".join(held))
        self.upstream.resume_reading()

    async def next_event(self):  # noqa: ANN201 - "usage", "drain", "end" or a Broken
        while not self.events:
            self.wakeup = asyncio.get_running_loop().create_future()
            await self.wakeup
        return self.events.pop(0)

    def _hold(self, held: list[bytes], event: str) -> None:
        self.held = held
        self.upstream.pause_reading()
        self._signal(event)

    def _signal(self, event) -> None:  # noqa: ANN001
        self.events.append(event)
        if self.wakeup is not None and not self.wakeup.done():
            self.wakeup.set_result(None)


class Collector:
    """A whole (non-streamed) answer body."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.future = asyncio.get_running_loop().create_future()

    def data(self, payload: bytes) -> None:
        self.parts.append(payload)

    def end(self) -> None:
        if not self.future.done():
            self.future.set_result(b"".join(self.parts))

    def lost(self, exc: Exception) -> None:
        if not self.future.done():
            self.future.set_exception(exc)
