"""The one cluster lock: start, stop, switch, cluster run, tune jobs and the benchmark sweep never run at once.

Only Python takes it (the entry scripts ``exec`` the core, so the PID the lock names is the process that
holds it, and a ``kill`` of that PID ends the holder). The lock is ``flock(2)`` on
``$SPARK_STATE_DIR/cluster.lock``; the kernel releases it when its holder dies, however it dies. The
file's content (pid, command, time) says who holds it; a clean release empties it, so content left
behind by a dead holder is a stale record, taken over with a note.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from sparkhelpers.config import Config, state_dir
from sparkhelpers.errors import SparkError

LOCK_NAME = "cluster.lock"
# Set for the holder's own process (nested calls, e.g. switch -> start) and children it runs.
HELD_ENV = "SPARK_CLUSTER_LOCK_HELD"
END_IT = "stop_cluster.sh --force"


def lock_path(cfg: Config | None = None) -> Path:
    return state_dir(cfg) / LOCK_NAME


def holder(path: Path) -> str:
    """Who holds (or last held) the lock, as written by the holder: 'pid 123 (start_cluster.sh) since ...'."""
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def recorded_pid(text: str) -> int | None:
    m = re.match(r"pid (\d+)\b", text)
    return int(m.group(1)) if m else None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kernel_holder(path: Path) -> int | None:
    """The PID the kernel says holds the flock on ``path`` (from /proc/locks), if any."""
    try:
        ino = path.stat().st_ino
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split()
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5].rsplit(":", 1)[-1] == str(ino):
            return int(parts[4])
    return None


def holder_pid(path: Path) -> int | None:
    """The live process holding the lock: the recorded PID when the kernel agrees (or cannot say)."""
    recorded, kernel = recorded_pid(holder(path)), kernel_holder(path)
    if kernel and alive(kernel):
        return kernel
    return recorded if recorded and alive(recorded) else None


def busy_error(path: Path) -> SparkError:
    text = holder(path) or "another sparkhelpers command"
    pid = holder_pid(path)
    recorded = recorded_pid(text)
    if pid and recorded != pid:
        text = f"pid {pid} (recorded: {text})"
    end = f"{END_IT} (ends pid {pid} and removes the containers)" if pid else END_IT
    return SparkError(f"the cluster is busy: {text} holds {path}",
                      fix=f"wait for it to finish, or end it: {end}")


@contextlib.contextmanager
def cluster_lock(cfg: Config | None = None, *, what: str = "sparkhelpers", wait_s: float = 0.0,
                 path: Path | None = None, note: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Hold the cluster lock for the block. Waits up to ``wait_s`` seconds, then fails naming the holder.

    Re-entrant: inside a holder (same process, e.g. the switch calling the start, or a child it runs with
    ``SPARK_CLUSTER_LOCK_HELD`` set) the lock is not taken again.
    """
    path = path or lock_path(cfg)
    if os.environ.get(HELD_ENV) == str(path):
        yield path
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        _acquire(fd, path, wait_s)
        stale = holder(path)
        if stale and recorded_pid(stale) != os.getpid():
            (note or _note)(f"taking over the cluster lock from {stale}, which ended without releasing it")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} ({what}) since {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n".encode(), 0)
        previous = os.environ.get(HELD_ENV)
        os.environ[HELD_ENV] = str(path)
        try:
            yield path
        finally:
            if previous is None:
                os.environ.pop(HELD_ENV, None)
            else:
                os.environ[HELD_ENV] = previous
            os.ftruncate(fd, 0)  # a clean release leaves no record; a record left behind means a dead holder
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def _acquire(fd: int, path: Path, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise busy_error(path) from None
            time.sleep(0.2)


def _note(message: str) -> None:
    from sparkhelpers.appkit import info

    info(message)


def end_holder(path: Path, *, grace_s: float = 20.0, say: Callable[[str], None] = _note) -> int | None:
    """SIGTERM the process holding the lock (it cleans up as for Ctrl-C) and wait for the lock to free.

    Returns the PID signalled, or None when nobody held it. Used by ``stop_cluster.sh --force``.
    """
    pid = holder_pid(path)
    if pid is None or pid == os.getpid() or os.environ.get(HELD_ENV) == str(path):
        return None
    say(f"--force: ending the lock holder {holder(path) or f'pid {pid}'} (SIGTERM)")
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return pid
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and alive(pid) and kernel_holder(path) == pid:
        time.sleep(0.2)
    if alive(pid) and kernel_holder(path) == pid:
        say(f"pid {pid} still holds the lock after {grace_s:g} s; removing the containers anyway")
    return pid
