"""API keys and usage in one SQLite file (stdlib sqlite3, WAL, mode 0600) under SPARK_STATE_DIR/gateway.

A key is ``sk-spark-`` + 43 url-safe characters (256 random bits), shown once when created or rotated; only its
sha256 is stored (a key this long needs no slow hash). Names and ids are what logs, metrics and reports show.

Usage is write-ahead: a request's row goes into ``inflight`` (committed) before the client gets a byte, and moves
into the per key x model x day ``usage`` totals in one transaction when it ends. A gateway killed with SIGKILL
loses nothing committed (WAL survives a process crash); on the next start, rows left in ``inflight`` are counted
as interrupted requests (errors).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import secrets
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from sparkhelpers.errors import SparkError, UsageError

PREFIX = "sk-spark-"
SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
  id TEXT PRIMARY KEY, name TEXT NOT NULL, hash TEXT NOT NULL UNIQUE, models TEXT NOT NULL DEFAULT '[]',
  rpm INTEGER, tpm INTEGER, max_parallel INTEGER, tokens_per_day INTEGER, expires TEXT,
  admin INTEGER NOT NULL DEFAULT 0, internal INTEGER NOT NULL DEFAULT 0,
  created TEXT NOT NULL, rotated TEXT, revoked TEXT);
CREATE UNIQUE INDEX IF NOT EXISTS keys_active_name ON keys(name) WHERE revoked IS NULL;
CREATE TABLE IF NOT EXISTS usage (
  day TEXT NOT NULL, key_id TEXT NOT NULL, key_name TEXT NOT NULL, model TEXT NOT NULL,
  requests INTEGER NOT NULL DEFAULT 0, errors INTEGER NOT NULL DEFAULT 0,
  prompt_tokens INTEGER NOT NULL DEFAULT 0, completion_tokens INTEGER NOT NULL DEFAULT 0,
  latency_ms_sum REAL NOT NULL DEFAULT 0, ttft_ms_sum REAL NOT NULL DEFAULT 0,
  PRIMARY KEY (day, key_id, model));
CREATE TABLE IF NOT EXISTS inflight (
  req_id TEXT PRIMARY KEY, day TEXT NOT NULL, key_id TEXT NOT NULL, key_name TEXT NOT NULL,
  model TEXT NOT NULL, started REAL NOT NULL);
"""
UPSERT = """
INSERT INTO usage (day, key_id, key_name, model, requests, errors, prompt_tokens, completion_tokens,
                   latency_ms_sum, ttft_ms_sum)
VALUES (?, ?, ?, ?, 1, ?, ?, ?, ?, ?)
ON CONFLICT (day, key_id, model) DO UPDATE SET requests = requests + 1, errors = errors + excluded.errors,
  prompt_tokens = prompt_tokens + excluded.prompt_tokens,
  completion_tokens = completion_tokens + excluded.completion_tokens,
  latency_ms_sum = latency_ms_sum + excluded.latency_ms_sum, ttft_ms_sum = ttft_ms_sum + excluded.ttft_ms_sum
"""


@dataclass
class KeyInfo:
    id: str
    name: str
    models: list[str] = field(default_factory=list)
    rpm: int | None = None
    tpm: int | None = None
    max_parallel: int | None = None
    tokens_per_day: int | None = None
    expires: str | None = None
    admin: bool = False
    internal: bool = False
    created: str = ""
    revoked: str | None = None

    def allows(self, model: str) -> bool:
        return self.admin or not self.models or model in self.models

    def expired(self, now: dt.datetime | None = None) -> bool:
        if not self.expires:
            return False
        now = now or dt.datetime.now(dt.timezone.utc)
        return now >= dt.datetime.fromisoformat(self.expires)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_secret() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def today() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")


def parse_expiry(value: str) -> str:
    """DATE (YYYY-MM-DD: end of that day UTC), an ISO time, or a duration like 30d / 12h."""
    value = value.strip()
    now = dt.datetime.now(dt.timezone.utc)
    units = {"d": "days", "h": "hours", "m": "minutes"}
    if value[:-1].isdigit() and value[-1:] in units:
        return (now + dt.timedelta(**{units[value[-1]]: int(value[:-1])})).isoformat(timespec="seconds")
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(f"--expires {value!r} is not a date", fix="use YYYY-MM-DD, an ISO time or 30d/12h") from None
    if len(value) == 10:
        when = when + dt.timedelta(days=1)
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.isoformat(timespec="seconds")


def db_path(state_dir: Path) -> Path:
    return state_dir / "gateway" / "gateway.db"


class Store:
    """The keys and usage database. One connection; every write is one committed transaction."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            os.chmod(path.parent, 0o700)
        if not path.exists():
            fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
        os.chmod(path, 0o600)
        old = os.umask(0o077)  # the -wal and -shm files SQLite creates next to it
        try:
            self.db = sqlite3.connect(str(path), timeout=10, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across a process crash
            self.db.executescript(SCHEMA)
        finally:
            os.umask(old)

    def close(self) -> None:
        self.db.close()

    def data_version(self) -> int:
        return self.db.execute("PRAGMA data_version").fetchone()[0]

    # ---- keys ------------------------------------------------------------------------------------------------
    def create(self, name: str, *, models: list[str] | None = None, rpm: int | None = None, tpm: int | None = None,
               max_parallel: int | None = None, tokens_per_day: int | None = None, expires: str | None = None,
               admin: bool = False, internal: bool = False) -> tuple[KeyInfo, str]:
        """A new key; returns its record and the secret (shown once, never stored)."""
        if not name or len(name) > 64 or not all(c.isalnum() or c in "._-@" for c in name):
            raise UsageError(f"bad key name {name!r}", fix="use up to 64 letters, digits and . _ - @")
        secret = new_secret()
        info = KeyInfo(id=uuid.uuid4().hex[:12], name=name, models=models or [], rpm=rpm, tpm=tpm,
                       max_parallel=max_parallel, tokens_per_day=tokens_per_day, expires=expires, admin=admin,
                       internal=internal, created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
        try:
            self.db.execute("INSERT INTO keys (id, name, hash, models, rpm, tpm, max_parallel, tokens_per_day, "
                            "expires, admin, internal, created) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                            (info.id, name, hash_key(secret), json.dumps(info.models), rpm, tpm, max_parallel,
                             tokens_per_day, expires, int(admin), int(internal), info.created))
        except sqlite3.IntegrityError:
            raise SparkError(f"a key named {name} exists",
                             fix=f"pick another name or: sparkhelpers keys rotate {name}") from None
        return info, secret

    def _find(self, name_or_id: str) -> sqlite3.Row | tuple:
        row = self.db.execute("SELECT id, name FROM keys WHERE revoked IS NULL AND (name = ? OR id = ?)",
                              (name_or_id, name_or_id)).fetchone()
        if not row:
            raise SparkError(f"no active key named {name_or_id}", fix="see sparkhelpers keys list")
        return row

    def revoke(self, name_or_id: str) -> str:
        key_id, _ = self._find(name_or_id)
        self.db.execute("UPDATE keys SET revoked = ? WHERE id = ?",
                        (dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), key_id))
        return key_id

    def rotate(self, name_or_id: str) -> tuple[str, str]:
        """A new secret for the same key (id, name, limits, usage kept); the old secret stops working."""
        key_id, _ = self._find(name_or_id)
        secret = new_secret()
        self.db.execute("UPDATE keys SET hash = ?, rotated = ? WHERE id = ?",
                        (hash_key(secret), dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), key_id))
        return key_id, secret

    def all_keys(self, include_revoked: bool = False) -> list[KeyInfo]:
        sql = ("SELECT id, name, models, rpm, tpm, max_parallel, tokens_per_day, expires, admin, internal, created, "
               "revoked FROM keys" + ("" if include_revoked else " WHERE revoked IS NULL") + " ORDER BY created, name")
        return [_info(row) for row in self.db.execute(sql)]

    def by_hash(self) -> dict[str, KeyInfo]:
        rows = self.db.execute("SELECT id, name, models, rpm, tpm, max_parallel, tokens_per_day, expires, admin, "
                               "internal, created, revoked, hash FROM keys WHERE revoked IS NULL")
        return {row[12]: _info(row[:12]) for row in rows}

    def ensure_internal(self, path: Path) -> str:
        """The engines' key: kept in a 0600 file the launcher passes by path; recreated when missing."""
        with contextlib.suppress(OSError):
            secret = path.read_text().strip()
            if secret:
                return secret
        secret = new_secret()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secret + "\n")
        return secret

    # ---- usage -----------------------------------------------------------------------------------------------
    def begin(self, key: KeyInfo, model: str) -> str:
        row = begin_row(key, model)
        self.apply([row], [])
        return row[0]

    def finish(self, req_id: str, key: KeyInfo, model: str, **figures) -> None:  # noqa: ANN003 - finish_row's
        self.apply([], [finish_row(req_id, key, model, **figures)])

    def apply(self, begins: list[tuple], finishes: list[tuple]) -> None:
        """Many requests' write-ahead rows and finished totals in one transaction (the ledger's group commit).
        ``begins``: (req_id, day, key_id, key_name, model, started); ``finishes``: (req_id, key_id, key_name,
        model, error, prompt, completion, latency_ms, ttft_ms). Begins land first: a request may begin and end
        in one batch."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            if begins:
                self.db.executemany("INSERT INTO inflight VALUES (?,?,?,?,?,?)", begins)
            for req_id, key_id, key_name, model, *figures in finishes:
                row = self.db.execute("DELETE FROM inflight WHERE req_id = ? RETURNING day", (req_id,)).fetchone()
                self.db.execute(UPSERT, (row[0] if row else today(), key_id, key_name, model, *figures))

    def recover(self) -> int:
        """Count requests a killed gateway left in flight as interrupted (errors, no tokens known)."""
        rows = self.db.execute("SELECT req_id, day, key_id, key_name, model, started FROM inflight").fetchall()
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            for req_id, day, key_id, key_name, model, _ in rows:
                self.db.execute(UPSERT, (day, key_id, key_name, model, 1, 0, 0, 0.0, 0.0))
                self.db.execute("DELETE FROM inflight WHERE req_id = ?", (req_id,))
        return len(rows)

    def tokens_today(self, key_id: str) -> int:
        row = self.db.execute("SELECT COALESCE(SUM(prompt_tokens + completion_tokens), 0) FROM usage "
                              "WHERE day = ? AND key_id = ?", (today(), key_id)).fetchone()
        return int(row[0])

    def usage_rows(self, since: str = "", until: str = "") -> list[dict]:
        sql = ("SELECT day, key_id, key_name, model, requests, errors, prompt_tokens, completion_tokens, "
               "latency_ms_sum, ttft_ms_sum FROM usage WHERE day >= ? AND day <= ? ORDER BY day, key_name, model")
        cols = ["day", "key_id", "key", "model", "requests", "errors", "prompt_tokens", "completion_tokens",
                "latency_ms_sum", "ttft_ms_sum"]
        return [dict(zip(cols, row, strict=True)) for row in self.db.execute(sql, (since or "0000", until or "9999"))]


def begin_row(key: KeyInfo, model: str) -> tuple:
    """A request's write-ahead row for ``Store.apply``: a new request id first."""
    return (uuid.uuid4().hex, today(), key.id, key.name, model, time.time())


def finish_row(req_id: str, key: KeyInfo, model: str, *, prompt: int, completion: int, error: bool,
               latency_ms: float, ttft_ms: float) -> tuple:
    """A finished request's totals for ``Store.apply``."""
    return (req_id, key.id, key.name, model, int(error), prompt, completion, latency_ms, ttft_ms)


def _info(row) -> KeyInfo:  # noqa: ANN001
    (key_id, name, models, rpm, tpm, par, tpd, expires, admin, internal, created, revoked) = row
    return KeyInfo(id=key_id, name=name, models=json.loads(models or "[]"), rpm=rpm, tpm=tpm, max_parallel=par,
                   tokens_per_day=tpd, expires=expires, admin=bool(admin), internal=bool(internal), created=created,
                   revoked=revoked)
