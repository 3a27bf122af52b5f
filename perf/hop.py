#!/usr/bin/env python3
"""The floor of a proxy written in Python: one extra loopback hop and nothing else (perf/gateway.py's `hop` path).

Usage: perf/hop.py LISTEN_PORT UPSTREAM_PORT

Each client connection gets its own connection to 127.0.0.1:UPSTREAM_PORT, and bytes are copied both ways from
the protocol callbacks on uvloop (asyncio's own loop without it): no parsing, no auth, no accounting. What the
gateway adds over this is what its HTTP handling, keys, quotas and usage rows cost; what this adds over direct
is what any proxy on this host pays for the hop (two more sockets, two more wake-ups per chunk).
"""

from __future__ import annotations

import asyncio
import socket
import sys


class Pipe(asyncio.Protocol):
    """One side of a connection pair: what it receives goes to its peer's transport."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: Pipe | None = None
        self.pending: list[bytes] = []  # received before the peer connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as a proxy does

    def data_received(self, data: bytes) -> None:
        if self.peer and self.peer.transport:
            self.peer.transport.write(data)
        else:
            self.pending.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer and self.peer.transport:
            self.peer.transport.close()


def serve(listen: int, upstream: int) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()

        def client() -> Pipe:
            down = Pipe()

            async def connect() -> None:
                try:
                    _, up = await loop.create_connection(Pipe, "127.0.0.1", upstream)
                except OSError:
                    down.transport.close()
                    return
                if down.transport.is_closing():  # the client left while we connected
                    up.transport.close()
                    return
                up.peer, down.peer = down, up
                for data in down.pending:
                    up.transport.write(data)
                down.pending.clear()

            loop.create_task(connect())
            return down

        server = await loop.create_server(client, "127.0.0.1", listen)
        await server.serve_forever()

    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__.split("\n\n")[1])
    serve(int(sys.argv[1]), int(sys.argv[2]))
