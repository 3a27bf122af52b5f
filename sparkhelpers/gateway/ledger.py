"""Group commit of the usage rows: every request begun or finished in one turn of the event loop is written in one
SQLite transaction, after the turn, instead of one commit (a WAL append each) per request and per end.

The write-ahead guarantee is kept, not loosened: ``begin()`` hands back the request's id and a future that is done
when its row is committed, and the data plane awaits it before the client gets a byte (the commit overlaps
the engine's work on the answer's head); ``finish()``'s
future is done when the totals are committed, and the data plane awaits it before the client sees the end of
the answer. So a gateway killed at any point loses nothing a client received; at c=64 the 64 commits of a burst
of requests become one.
"""

from __future__ import annotations

import asyncio

from sparkhelpers.gateway import keys
from sparkhelpers.gateway.keys import KeyInfo, Store


class Ledger:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._begins: list[tuple] = []
        self._finishes: list[tuple] = []
        self._waiters: list[asyncio.Future] = []
        self._scheduled = False

    def begin(self, key: KeyInfo, model: str) -> tuple[str, asyncio.Future]:
        """A new request's id, and the future of its write-ahead row (await it before sending upstream)."""
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
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self.flush)
        return future

    def flush(self) -> None:
        """Commits whatever is queued (after the loop's turn; at shutdown, directly)."""
        self._scheduled = False
        begins, finishes, waiters = self._begins, self._finishes, self._waiters
        self._begins, self._finishes, self._waiters = [], [], []
        if not (begins or finishes):
            return
        try:
            self.store.apply(begins, finishes)
        except Exception as exc:  # noqa: BLE001 - every request of the batch sees the database's error
            for future in waiters:
                if not future.done():
                    future.set_exception(exc)
            return
        for future in waiters:
            if not future.done():
                future.set_result(None)
