"""The one place that runs processes: local commands, SSH to nodes, in parallel, or --dry-run.

Command builders (``build_ssh_cmd``, ``shell_join``) are pure and tested by list equality. Every
side effect goes through a ``Runner``; with ``dry_run=True`` it prints what it would run and runs
nothing. Results are ``RunResult`` objects; nothing here raises on a non-zero exit unless asked to
(``RunResult.check``). Secrets travel in ``env`` or ``input``, never in argv.

SSH connections are shared (OpenSSH multiplexing) when the ``Host`` carries a ``Multiplex``: the first
call to a node opens a master connection whose socket sits in a private control directory (mode 0700,
under SPARK_STATE_DIR); later calls open a channel on it instead of a TCP connection and a handshake,
and the master goes away ``persist_s`` seconds after its last session. Before running a command that
names a control socket, the Runner makes the directory (0700, ours) and replaces a master that does not
answer within a second, so a stale or wedged master never hangs a call. ``close_masters`` ends them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
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
class Multiplex:
    """SSH connection sharing: masters' sockets in ``control_dir`` (see ``control_dir``), each master
    kept ``persist_s`` seconds after its last session."""

    control_dir: str
    persist_s: int = 30


@dataclass(frozen=True)
class Host:
    """A node we reach by SSH; ``address == "local"`` means this machine, without SSH. ``mux`` shares
    connections (None: one connection per call); ``bulk_cipher`` is preferred for bulk copies."""

    address: str
    user: str = ""
    key: str = ""
    options: tuple[str, ...] = ()
    connect_timeout: int = 5
    mux: Multiplex | None = None
    bulk_cipher: str = ""

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


# ---- SSH: pure builders ------------------------------------------------------------------------

SUN_PATH_MAX = 107  # bytes of a unix socket path (sockaddr_un.sun_path, 108 with the NUL)
SSH_BIND_SUFFIX = 17  # ssh binds "<ControlPath>.<16 random characters>" first, then links it into place
SOCKET_NAME_LEN = 11  # "c" or "b" and 10 hex digits
_SAFE_DIR = re.compile(r"^/[A-Za-z0-9._+@/-]*$")  # no quoting, no ssh %-tokens, no spaces for rsync -e
_CONTROL_PATH = re.compile(r"ControlPath=(/[A-Za-z0-9._+@/-]*/[bc][0-9a-f]{10})\b")
BULK_ALIVE = (15, 4)  # keepalive every 15 s, give up after 4 unanswered: a busy disk or link is not dead


def control_dir(state_dir: str | Path) -> str:
    """The private control directory for ``state_dir``: STATE/ssh, or when that path is too long for a
    unix socket (or needs quoting) ``$XDG_RUNTIME_DIR`` or /tmp + ``sparkhelpers-ssh-UID-HASH``."""
    preferred = os.path.join(str(state_dir), "ssh")
    if _fits(preferred):
        return preferred
    tag = f"sparkhelpers-ssh-{os.getuid()}-{hashlib.sha256(preferred.encode()).hexdigest()[:8]}"
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    return f"{runtime}/{tag}" if runtime and _fits(f"{runtime}/{tag}") else f"/tmp/{tag}"


def _fits(directory: str) -> bool:
    return bool(_SAFE_DIR.match(directory)) and len(directory) + 1 + SOCKET_NAME_LEN + SSH_BIND_SUFFIX <= SUN_PATH_MAX


def control_path(host: Host, *, bulk: bool = False) -> str:
    """The master socket for ``host``: one per target, key, options and (bulk) cipher, so calls that
    would negotiate a different connection never share one; a short name (the socket path limit)."""
    assert host.mux is not None
    what = repr((host.target, host.key, host.options, host.connect_timeout, bulk and host.bulk_cipher))
    return f"{host.mux.control_dir}/{'b' if bulk else 'c'}{hashlib.sha256(what.encode()).hexdigest()[:10]}"


def control_alive(connect_timeout: int) -> tuple[int, int]:
    """(ServerAliveInterval, ServerAliveCountMax) of a shared control connection: a dead peer is noticed
    in about ConnectTimeout, as an unshared call would notice it, not after a minute of silence."""
    return max(1, connect_timeout // 2), 2


def ssh_transport(host: Host, *, tty: bool = False, bulk: bool = False, multiplex: bool = True) -> list[str]:
    """The ssh command and options for ``host``, without target or command (rsync's ``-e`` wants this).
    ``bulk``: a large copy (the bulk cipher first, its own shared connection, patient keepalives).
    ``multiplex=False``: a connection of its own (a command that runs on another machine, where our
    control directory does not exist, or parallel streams that must not share one TCP connection)."""
    cmd = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={host.connect_timeout}",
           "-o", "StrictHostKeyChecking=accept-new"]
    shared = host.mux is not None and multiplex
    alive = control_alive(host.connect_timeout) if shared and not bulk else BULK_ALIVE
    cmd += ["-o", f"ServerAliveInterval={alive[0]}", "-o", f"ServerAliveCountMax={alive[1]}"]
    if bulk and host.bulk_cipher:
        cmd += ["-o", f"Ciphers=^{host.bulk_cipher}"]  # first choice; the defaults stay as fallback
    if shared:
        cmd += ["-o", "ControlMaster=auto", "-o", f"ControlPath={control_path(host, bulk=bulk)}",
                "-o", f"ControlPersist={host.mux.persist_s}s"]
    elif host.mux is not None:
        cmd += ["-o", "ControlMaster=no", "-o", "ControlPath=none"]
    if tty:
        cmd.append("-t")
    if host.key:
        cmd += ["-i", host.key, "-o", "IdentitiesOnly=yes"]
    return cmd + list(host.options)


def build_ssh_cmd(host: Host, remote: Sequence[str] | str, *, tty: bool = False, bulk: bool = False,
                  multiplex: bool = True) -> list[str]:
    """ssh argv running ``remote`` on ``host``. A list is quoted word by word; a string is sent as is."""
    remote_cmd = remote if isinstance(remote, str) else shell_join(remote)
    return [*ssh_transport(host, tty=tty, bulk=bulk, multiplex=multiplex), host.target, "--", remote_cmd]


def rsync_shell(host: Host, *, bulk: bool = True, multiplex: bool = True) -> str:
    """rsync's ``-e`` value for ``host`` (a bulk copy by default): the same transport as every ssh call."""
    return shell_join(ssh_transport(host, bulk=bulk, multiplex=multiplex))


def master_cmd(socket_path: str, op: str = "stop") -> list[str]:
    """``ssh -O op`` for one master. ``stop``: no new sessions; the master leaves when its last one
    ends (a concurrent command's call is not cut off, as ``exit`` would)."""
    return ["ssh", "-o", f"ControlPath={socket_path}", "-O", op, "sparkhelpers-master"]


def control_paths(argv: Sequence[str]) -> list[str]:
    """The control sockets ``argv`` names (also inside a script: rsync -e, a ``| ssh`` pipeline)."""
    return sorted({m.group(1) for arg in argv for m in _CONTROL_PATH.finditer(str(arg))})


# ---- SSH: side effects ----------------------------------------------------------------------------

def ensure_control_dir(directory: str) -> None:
    """Create the control directory mode 0700, or check an existing one is ours, a directory, private."""
    path = Path(directory)
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.lstat()
    except OSError as exc:
        raise SparkError(f"cannot create the SSH control directory {directory}: {exc.strerror}",
                         fix="set SPARK_STATE_DIR to a writable directory, or SSH_CONTROL_PERSIST=0") from None
    import stat

    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise SparkError(f"SSH control directory {directory} is not a directory of this user",
                         fix=f"remove it (rm -rf {shell_quote(directory)}) or set SPARK_STATE_DIR elsewhere")
    if st.st_mode & 0o077:
        os.chmod(directory, 0o700)


def master_answers(socket_path: str, wait_s: float = 1.0) -> bool | None:
    """True: a master answers on ``socket_path`` (it greets every client at once); False: a socket or
    file is there but nothing answers in ``wait_s`` (a stopped or wedged master, a stale file); None:
    no socket."""
    if not os.path.lexists(socket_path):
        return None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(wait_s)
        try:
            sock.connect(socket_path)
            return len(sock.recv(12)) > 0
        except OSError:
            return False


def prepare_control(argv: Sequence[str], warn: Callable[[str], None] | None = None) -> None:
    """Before a command that shares SSH connections: its control directory exists (0700), and a master
    that does not answer is removed, so ssh starts a fresh one instead of waiting on it for ever."""
    for path in control_paths(argv):
        ensure_control_dir(os.path.dirname(path))
        if master_answers(path) is False:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            if warn:
                warn(f"the SSH master at {path} did not answer; replaced by a new connection")


@lru_cache(maxsize=4)
def ssh_ciphers(ssh: str = "ssh") -> tuple[str, ...]:
    """The ciphers this machine's ssh supports (``ssh -Q cipher``); () when ssh cannot say."""
    try:
        out = subprocess.run([ssh, "-Q", "cipher"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ()
    return tuple(line.strip() for line in out.stdout.splitlines() if line.strip()) if out.returncode == 0 else ()


@dataclass
class Runner:
    """Runs commands, or with ``dry_run`` prints them (``echo``) and pretends they succeeded."""

    dry_run: bool = False
    echo: Callable[[str], None] = field(default=lambda line: print(line, file=sys.stderr))
    default_timeout: float | None = None
    warn: Callable[[str], None] = field(default=lambda msg: print(f"sparkhelpers: warning: {msg}", file=sys.stderr))

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
        prepare_control(argv, self.warn)
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
        prepare_control(argv, self.warn)
        full_env = {**os.environ, **env} if env else None
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    env=full_env, cwd=cwd, start_new_session=True)
        return proc.pid

    def on(self, host: Host, argv: Sequence[str] | str, *, bulk: bool = False, multiplex: bool = True,
           **kwargs) -> RunResult:
        """Run on a node: locally for the local host, else over SSH (a string is a shell snippet);
        ``bulk``/``multiplex`` as in ``ssh_transport``."""
        if host.is_local:
            local = ["bash", "-c", argv] if isinstance(argv, str) else list(argv)
            return self.run(local, host=host.label, **kwargs)
        return self.run(build_ssh_cmd(host, argv, bulk=bulk, multiplex=multiplex), host=host.label, **kwargs)

    def open_early(self, hosts: Sequence[Host]) -> list[threading.Thread]:
        """Open the shared connections to ``hosts`` in the background (one ``true`` each, not waited for),
        so the handshakes overlap other work and a later call finds its master open. Nothing under
        --dry-run, for the local host or without sharing; a failure here is left to the real call."""
        if self.dry_run:
            return []
        threads = [threading.Thread(target=self.on, args=(h, ["true"]), daemon=True,
                                    kwargs={"timeout": h.connect_timeout + 10, "mutating": False})
                   for h in hosts if h.mux is not None and not h.is_local]
        for thread in threads:
            thread.start()
        return threads

    def close_masters(self, directory: str) -> int:
        """End every SSH master in ``directory`` (``ssh -O stop``: sessions still running finish first)
        and remove the directory. Returns how many masters answered. Idempotent."""
        if not os.path.isdir(directory):
            return 0
        sockets = sorted(str(p) for p in Path(directory).iterdir() if re.fullmatch(r"[bc][0-9a-f]{10}", p.name))
        if self.dry_run:
            for path in sockets:
                self.echo(f"[dry-run] local: {shell_join(master_cmd(path))}")
            return 0
        live = [p for p in sockets if master_answers(p, wait_s=0.5)]
        self.parallel(lambda p: self.run(master_cmd(p), timeout=5), live)
        import shutil

        shutil.rmtree(directory, ignore_errors=True)
        return len(live)

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
        prepare_control(argv, self.warn)
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
        try:
            tail = _pump_lines(proc.stdout, on_output)
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
        return RunResult(argv, code, tail.decode(errors="replace"), stderr, time.monotonic() - t0, host)

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


def _pump_lines(stdout, on_output: Callable[[str], None]) -> bytes:  # noqa: ANN001 - a binary pipe
    """Call ``on_output`` with each non-blank line (ended by \\n or \\r) until EOF; return the last 64 KiB."""
    tail, pending = bytearray(), b""
    while chunk := stdout.read1(65536):
        tail += chunk
        del tail[:-65536]
        pending += chunk
        *lines, pending = re.split(rb"[\r\n]", pending)
        for line in lines:
            if line.strip():
                on_output(line.decode(errors="replace"))
    if pending.strip():
        on_output(pending.decode(errors="replace"))
    return bytes(tail)


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
