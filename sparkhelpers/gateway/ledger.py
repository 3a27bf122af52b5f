"""Group commit of the usage rows, on a writer thread of its own: every request begun or finished while the
previous commit ran is written in the next SQLite transaction, instead of one commit (a WAL append each) per
request and per end; the event loop never waits for the database (a writer holding it, such as a long ``keys``
command, stalls only the requests whose rows wait, not the streams in flight, /health or /metrics).

The write-ahead guarantee is kept, not loosened: ``begin()`` hands back the request's id and a future that is done
when its row is committed, and the data plane awaits it before the client gets a byte (the commit overlaps
the engine's work on the answer's head); ``finish()``'s future is done when the totals are committed, and the
data plane awaits it before the client sees the end of the answer. So a gateway killed at any point loses
nothing a client received; at c=64 the 64 commits of a burst of requests become one.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from sparkhelpers.gateway import keys
from sparkhelpers.gateway.keys import KeyInfo, Store


class Ledger:
    def __init__(self, store: Store) -> None:
        self.store = store  # used by the writer thread only while the ledger runs (its own connection)
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="ledger")
        self._begins: list[tuple] = []
        self._finishes: list[tuple] = []
        self._waiters: list[asyncio.Future] = []
        self._scheduled = False
        self._writing = False

    def begin(self, key: KeyInfo, model: str) -> tuple[str, asyncio.Future]:
        """A new request's id, and the future of its write-ahead row (await it before the client gets a byte)."""
        row = keys.begin_row(key, model)
        self._begins.append(row)
        return row[0], self._queued()

    def finish(self, req_id: str, key: KeyInfo, model: str, **figures) -> asyncio.Future:  # noqa: ANN003
        """Moves the request into the day's totals (``keys.finish_row``'s figures); done when committed."""
        self._finishes.append(keys.finish_row(req_id, key, model, **figures))
        return self._queued()

    def _queued(self) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._waiters.append(future)
        if not self._scheduled and not self._writing:  # else the commit in progress starts the next one
            self._scheduled = True
            loop.call_soon(self._write)
        return future

    def _take(self) -> tuple[list[tuple], list[tuple], list[asyncio.Future]]:
        batch = self._begins, self._finishes, self._waiters
        self._begins, self._finishes, self._waiters = [], [], []
        return batch

    def _write(self) -> None:
        """After the loop's turn: hand what is queued to the writer thread."""
        self._scheduled = False
        begins, finishes, waiters = self._take()
        if not (begins or finishes):
            return
        self._writing = True
        done = asyncio.get_running_loop().run_in_executor(self._writer, self.store.apply, begins, finishes)
        done.add_done_callback(lambda f: self._written(f, waiters))

    def _written(self, done: asyncio.Future, waiters: list[asyncio.Future]) -> None:
        self._writing = False
        exc = done.exception()  # every request of the batch sees the database's error
        for future in waiters:
            if future.done():
                continue
            if exc:
                future.set_exception(exc)
            else:
                future.set_result(None)
        if self._begins or self._finishes:  # queued while this commit ran: the next group
            self._write()

    def close(self) -> None:
        """At shutdown: the commit in progress ends, whatever is still queued is committed here, the
        connection closed."""
        self._writer.shutdown(wait=True)
        begins, finishes, waiters = self._take()
        try:
            if begins or finishes:
                self.store.apply(begins, finishes)
        finally:
            self.store.close()
        for future in waiters:
            if not future.done():
                future.set_result(None)
