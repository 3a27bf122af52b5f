"""The one cluster lock: start, stop, switch and the benchmark sweep never run at the same time.

The lock is ``flock(2)`` on ``$SPARK_STATE_DIR/cluster.lock``. The shell side (``spark_lock`` in
``lib/common.sh``) locks the same file, so a script holding the lock and a Python command that wants it
exclude each other. The kernel releases a flock when its holder dies, so a killed run never leaves a
stale lock behind; the file's content (pid, command, time) is only there to say who holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from sparkhelpers.config import Config, state_dir
from sparkhelpers.errors import SparkError

LOCK_NAME = "cluster.lock"
# Set by holders for their children: a child of the holder must not wait for its own parent's lock.
HELD_ENV = "SPARK_CLUSTER_LOCK_HELD"


def lock_path(cfg: Config | None = None) -> Path:
    return state_dir(cfg) / LOCK_NAME


def holder(path: Path) -> str:
    """Who holds (or last held) the lock, as written by the holder: 'pid 123 (start_cluster.sh) since ...'."""
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        return ""


@contextlib.contextmanager
def cluster_lock(cfg: Config | None = None, *, what: str = "sparkhelpers", wait_s: float = 0.0,
                 path: Path | None = None) -> Iterator[Path]:
    """Hold the cluster lock for the block. Waits up to ``wait_s`` seconds, then fails naming the holder.

    Re-entrant across processes through ``SPARK_CLUSTER_LOCK_HELD``: when a parent (a script that took
    the lock with ``spark_lock``) already holds this very file, the child does not lock again.
    """
    path = path or lock_path(cfg)
    if os.environ.get(HELD_ENV) == str(path):
        yield path
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    who = holder(path) or "another sparkhelpers command"
                    raise SparkError(f"the cluster is busy: {who} holds {path}",
                                     fix="wait for it to finish (the lock frees itself when it exits)") from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} ({what}) since {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n".encode())
        previous = os.environ.get(HELD_ENV)
        os.environ[HELD_ENV] = str(path)
        try:
            yield path
        finally:
            if previous is None:
                os.environ.pop(HELD_ENV, None)
            else:
                os.environ[HELD_ENV] = previous
    finally:
        os.close(fd)  # closing the descriptor releases the flock
