"""The one place that runs processes: local commands, SSH to nodes, in parallel, or --dry-run.

Command builders (``build_ssh_cmd``, ``shell_join``) are pure and tested by list equality. Every
side effect goes through a ``Runner``; with ``dry_run=True`` it prints what it would run and runs
nothing. Results are ``RunResult`` objects; nothing here raises on a non-zero exit unless asked to
(``RunResult.check``). Secrets travel in ``env`` or ``input``, never in argv.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from sparkhelpers.errors import SparkError

T = TypeVar("T")
R = TypeVar("R")


def shell_quote(value: object) -> str:
    """The one quoting filter for every value that ends up in generated shell."""
    return shlex.quote(str(value))


def shell_join(argv: Iterable[object]) -> str:
    return " ".join(shell_quote(a) for a in argv)


@dataclass(frozen=True)
class Host:
    """A node we reach by SSH; ``address == "local"`` means this machine, without SSH."""

    address: str
    user: str = ""
    key: str = ""
    options: tuple[str, ...] = ()
    connect_timeout: int = 5

    @property
    def is_local(self) -> bool:
        return self.address in ("local", "")

    @property
    def label(self) -> str:
        return "local" if self.is_local else self.address

    @property
    def target(self) -> str:
        return f"{self.user}@{self.address}" if self.user else self.address


LOCAL = Host("local")


@dataclass(frozen=True)
class RunResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str = ""
    stderr: str = ""
    duration_s: float = 0.0
    host: str = "local"
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def last_line(self) -> str:
        for text in (self.stderr, self.stdout):
            lines = [ln for ln in text.strip().splitlines() if ln.strip()]
            if lines:
                return lines[-1].strip()
        return ""

    def check(self, what: str, fix: str = "") -> RunResult:
        """Raise a SparkError naming ``what`` failed on which host, with the last output line."""
        if not self.ok:
            detail = f": {self.last_line}" if self.last_line else ""
            raise SparkError(f"{what} failed on {self.host} (exit {self.returncode}){detail}", fix=fix)
        return self


# Programs that open a connection to another machine: never run under --dry-run, even read-only.
CONNECTING = frozenset({"ssh", "scp", "rsync"})


def connects(argv: Sequence[str]) -> bool:
    return bool(argv) and os.path.basename(str(argv[0])) in CONNECTING


def ssh_transport(host: Host, *, tty: bool = False) -> list[str]:
    """The ssh command and options for ``host``, without target or command (rsync's ``-e`` wants this)."""
    cmd = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={host.connect_timeout}",
           "-o", "StrictHostKeyChecking=accept-new", "-o", "ServerAliveInterval=15",
           "-o", "ServerAliveCountMax=4"]
    if tty:
        cmd.append("-t")
    if host.key:
        cmd += ["-i", host.key, "-o", "IdentitiesOnly=yes"]
    return cmd + list(host.options)


def build_ssh_cmd(host: Host, remote: Sequence[str] | str, *, tty: bool = False) -> list[str]:
    """ssh argv running ``remote`` on ``host``. A list is quoted word by word; a string is sent as is."""
    remote_cmd = remote if isinstance(remote, str) else shell_join(remote)
    return [*ssh_transport(host, tty=tty), host.target, "--", remote_cmd]


@dataclass
class Runner:
    """Runs commands, or with ``dry_run`` prints them (``echo``) and pretends they succeeded."""

    dry_run: bool = False
    echo: Callable[[str], None] = field(default=lambda line: print(line, file=sys.stderr))
    default_timeout: float | None = None

    def run(
        self,
        argv: Sequence[str],
        *,
        input: str | bytes | None = None,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        capture: bool = True,
        host: str = "local",
        mutating: bool = True,
        interactive: bool = False,
        own_group: bool = False,
    ) -> RunResult:
        """Run argv. ``env`` is added to os.environ. ``mutating=False`` runs even under --dry-run
        (read-only probes such as ``docker image inspect``), so a dry run shows real decisions.
        ``interactive`` hands the caller's stdin/stdout/stderr to the command (nothing captured).
        ``own_group`` runs it in its own process group, and on a timeout or an exception here (a
        signal handler raising, Ctrl-C) the whole group is ended before we return or re-raise, so no
        grandchild (a script's own children) keeps working behind our back."""
        argv = tuple(str(a) for a in argv)
        if self.dry_run and (mutating or connects(argv)):
            return self._pretend(argv, host, mutating)
        full_env = {**os.environ, **env} if env else None
        timeout = timeout if timeout is not None else self.default_timeout
        text = not isinstance(input, bytes)
        capture = capture and not interactive
        stdin = None if input is not None or interactive else subprocess.DEVNULL
        t0 = time.monotonic()
        if own_group:
            return self._run_group(argv, input, timeout, full_env, cwd, capture, stdin, text, host, t0)
        try:
            proc = subprocess.run(argv, input=input, env=full_env, cwd=cwd, timeout=timeout, text=text,
                                  stdout=subprocess.PIPE if capture else None,
                                  stderr=subprocess.PIPE if capture else None,
                                  stdin=stdin)
        except FileNotFoundError:
            return RunResult(argv, 127, stderr=f"{argv[0]}: command not found", host=host,
                             duration_s=time.monotonic() - t0)
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            return RunResult(argv, 124, stdout=out, stderr=f"timed out after {timeout:g}s", host=host,
                             duration_s=time.monotonic() - t0)
        return RunResult(argv, proc.returncode, _text(proc.stdout), _text(proc.stderr),
                         time.monotonic() - t0, host)

    def _pretend(self, argv: tuple[str, ...], host: str, mutating: bool) -> RunResult:
        """Under --dry-run: print the command instead of running it. A read-only question to another
        node is printed too (a dry run opens no connection); its answer is empty."""
        what = "" if mutating else "would ask (read-only; not asked in a dry run): "
        self.echo(f"[dry-run] {host}: {what}{shell_join(argv)}")
        return RunResult(argv, 0, host=host, dry_run=True)

    def _run_group(self, argv, input, timeout, env, cwd, capture, stdin, text, host, t0) -> RunResult:  # noqa: ANN001
        pipe = subprocess.PIPE if capture else None
        try:
            proc = subprocess.Popen(argv, env=env, cwd=cwd, text=text, stdout=pipe, stderr=pipe,
                                    stdin=subprocess.PIPE if input is not None else stdin, start_new_session=True)
        except FileNotFoundError:
            return RunResult(argv, 127, stderr=f"{argv[0]}: command not found", host=host,
                             duration_s=time.monotonic() - t0)
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            _end_group(proc)
            out, _ = proc.communicate()
            return RunResult(argv, 124, stdout=_text(out), stderr=f"timed out after {timeout:g}s", host=host,
                             duration_s=time.monotonic() - t0)
        except BaseException:
            _end_group(proc)
            raise
        return RunResult(argv, proc.returncode, _text(out), _text(err), time.monotonic() - t0, host)

    def spawn(self, argv: Sequence[str], *, log_path: str, env: Mapping[str, str] | None = None,
              cwd: str | None = None) -> int:
        """Start argv in the background, detached (own session: it outlives us), output appended
        to ``log_path``. Returns its pid (0 under --dry-run)."""
        argv = tuple(str(a) for a in argv)
        if self.dry_run:
            self.echo(f"[dry-run] local: {shell_join(argv)} >>{log_path} 2>&1 &")
            return 0
        full_env = {**os.environ, **env} if env else None
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    env=full_env, cwd=cwd, start_new_session=True)
        return proc.pid

    def on(self, host: Host, argv: Sequence[str] | str, **kwargs) -> RunResult:
        """Run on a node: locally for the local host, else over SSH (a string is a shell snippet)."""
        if host.is_local:
            local = ["bash", "-c", argv] if isinstance(argv, str) else list(argv)
            return self.run(local, host=host.label, **kwargs)
        return self.run(build_ssh_cmd(host, argv), host=host.label, **kwargs)

    def stream(
        self,
        argv: Sequence[str],
        on_output: Callable[[str], None],
        *,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        host: str = "local",
        mutating: bool = True,
        stop: threading.Event | None = None,
        input: str | bytes | None = None,
    ) -> RunResult:
        """Run argv, calling ``on_output`` with each stdout line as it arrives (a line ends at \\n or
        \\r, so progress meters that redraw in place are seen). Returns the last 64 KiB of stdout.
        Setting ``stop`` ends the command (SIGTERM): for samplers that run until the caller is done;
        the result then has returncode 0 when it ended that way. ``input`` is written to its stdin
        (from a thread, so a large one cannot block the reading)."""
        argv = tuple(str(a) for a in argv)
        if self.dry_run and (mutating or connects(argv)):
            return self._pretend(argv, host, mutating)
        full_env = {**os.environ, **env} if env else None
        t0 = time.monotonic()
        try:
            proc = subprocess.Popen(argv, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    stdin=subprocess.DEVNULL if input is None else subprocess.PIPE)
        except FileNotFoundError:
            return RunResult(argv, 127, stderr=f"{argv[0]}: command not found", host=host)
        if input is not None:
            threading.Thread(target=_feed, args=(proc.stdin, input), daemon=True).start()
        err_chunks: list[bytes] = []
        err_thread = threading.Thread(target=lambda: err_chunks.append(proc.stderr.read()), daemon=True)
        err_thread.start()
        timer = threading.Timer(timeout, proc.kill) if timeout else None
        if timer:
            timer.start()
        if stop is not None:
            threading.Thread(target=_terminate_on, args=(stop, proc), daemon=True).start()
        tail, pending = bytearray(), b""
        try:
            while chunk := proc.stdout.read1(65536):
                tail += chunk
                del tail[:-65536]
                pending += chunk
                *lines, pending = re.split(rb"[\r\n]", pending)
                for line in lines:
                    if line.strip():
                        on_output(line.decode(errors="replace"))
            if pending.strip():
                on_output(pending.decode(errors="replace"))
            code = proc.wait()
        finally:
            if timer:
                timer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        err_thread.join(5)
        stderr = b"".join(err_chunks).decode(errors="replace")
        if timer and code == -9:
            code, stderr = 124, stderr + f"timed out after {timeout:g}s"
        if stop is not None and stop.is_set() and code == -15:
            code = 0  # ended because the caller asked
        return RunResult(argv, code, bytes(tail).decode(errors="replace"), stderr, time.monotonic() - t0, host)

    def stream_on(self, host: Host, snippet: str, on_output: Callable[[str], None], *,
                  stop: threading.Event | None = None, timeout: float | None = None) -> RunResult:
        """``stream`` of a read-only shell snippet on a node: locally, or over one SSH session."""
        argv = ["bash", "-c", snippet] if host.is_local else build_ssh_cmd(host, snippet)
        return self.stream(argv, on_output, host=host.label, mutating=False, stop=stop, timeout=timeout)

    def parallel(self, func: Callable[[T], R], items: Sequence[T], max_workers: int = 8) -> list[R]:
        """``func`` over ``items`` concurrently, results in input order (exceptions propagate)."""
        if len(items) <= 1:
            return [func(i) for i in items]
        with ThreadPoolExecutor(max_workers=min(max_workers, len(items))) as pool:
            return list(pool.map(func, items))


def _terminate_on(stop: threading.Event, proc: subprocess.Popen) -> None:
    stop.wait()
    if proc.poll() is None:
        proc.terminate()


def _feed(stdin, data: str | bytes) -> None:  # noqa: ANN001
    with contextlib.suppress(OSError):
        stdin.write(data.encode() if isinstance(data, str) else data)
    with contextlib.suppress(OSError):
        stdin.close()


def _end_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the process group led by ``proc``, SIGKILL what is left after ``grace_s``, reap the leader."""
    import signal

    def group_alive() -> bool:
        proc.poll()  # reap the leader, so only living members keep the group
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return False
        return True

    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        if not group_alive():
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and group_alive():
            time.sleep(0.05)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def _text(value: str | bytes | None) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def end_descendants(sig: int = 15) -> list[int]:
    """Send ``sig`` to every descendant of this process still in our process group (what ``run`` started,
    and their children); detached ones (``spawn``, ``own_group``) are left alone. Returns the PIDs signalled."""
    me, group = os.getpid(), os.getpgrp()
    parent_of: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent_of[int(entry)] = (int(fields[1]), int(fields[2]))  # ppid, pgrp
    ours: set[int] = {me}
    grew = True
    while grew:
        grew = False
        for pid, (ppid, _) in parent_of.items():
            if ppid in ours and pid not in ours:
                ours.add(pid)
                grew = True
    signalled = [pid for pid in ours - {me} if parent_of[pid][1] == group]
    for pid in signalled:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
    return signalled
