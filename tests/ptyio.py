"""Reading a child's pseudo-terminal in tests (shared by the pty tests)."""

from __future__ import annotations

import os
import select
import signal
import time


def read_chunk(fd: int, wait: float = 0.5) -> bytes | None:
    """What the pty has within `wait` seconds: None when nothing yet, b"" when the child closed it."""
    if not select.select([fd], [], [], wait)[0]:
        return None
    try:
        return os.read(fd, 65536)
    except OSError:  # EIO: the child side is closed
        return b""


def read_until(fd: int, pattern: bytes | None, timeout: float) -> bytes:
    """Read until `pattern` has appeared (None: until the child closes the pty) or `timeout` passes."""
    out, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline and (pattern is None or pattern not in out):
        chunk = read_chunk(fd)
        if chunk == b"":
            break
        out += chunk or b""
    return out


def wait_child(pid: int, fd: int, timeout: float) -> tuple[int, bytes]:
    """Read the pty until the child closes it or ``timeout`` passes, then reap it: its exit code (-9 when it had
    to be killed: a hung child fails the test instead of blocking the run) and what it still wrote."""
    out = read_until(fd, None, timeout)
    deadline = time.monotonic() + 5  # the pty closes a moment before the child can be reaped
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), out
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            return os.waitstatus_to_exitcode(status), out
        time.sleep(0.05)
