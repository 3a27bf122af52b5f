"""The probe layer: every host fact is read from a snapshot directory.

A snapshot is what ``capture.sh`` writes: ``sys/...`` and ``proc/...`` mirror the real paths,
``cmd/NAME`` holds command outputs and ``cmd/exit-codes.txt`` their exit codes. The live host and
a remote host are read the same way: the capture script runs there (locally, or through
``ssh HOST bash -s`` in ONE round trip) and streams the snapshot back. So live, remote and replay
can never disagree about how a fact is read, and every bug report can carry the exact input.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import tarfile
import tempfile
from pathlib import Path
from typing import Protocol

from sparkhelpers.errors import SparkError
from sparkhelpers.runner import LOCAL, Host, Runner, shell_join

# The command outputs a snapshot may hold (documented in README "Discovery and checks").
COMMAND_FILES = {
    "format-version.txt": "snapshot format version",
    "hostname.txt": "uname -n",
    "uname-r.txt": "uname -r",
    "id.txt": "id (user, uid, groups)",
    "ulimit-l.txt": "ulimit -l (memlock)",
    "ip-addr.json": "ip -j addr",
    "ip-route.json": "ip -j route",
    "nvidia-smi.csv": "nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader",
    "ibdev2netdev.txt": "ibdev2netdev",
    "dev-infiniband.txt": "ls /dev/infiniband",
    "ethtool-IFACE.txt": "ethtool IFACE (physical Ethernet interfaces)",
    "docker-info.json": "docker info --format '{{json .}}' (proxy settings and URL credentials redacted)",
    "docker-image-id.txt": "docker image inspect --format '{{.Id}}' VLLM_IMAGE",
    "hf-cache-path.txt": "the HF_CACHE path probed",
    "hf-cache-existing.txt": "the HF cache path, or its nearest existing parent",
    "df-hf-cache.txt": "df -PB1 on the HF cache",
    "stat-hf-cache.txt": "stat -c '%U %u %a' on the HF cache",
    "hf-cache-foreign.txt": "up to 5 paths in the HF cache not owned by the user",
    "exit-codes.txt": "NAME RC for every command (127 = not installed)",
    "scope.txt": "all, or fabric: only what the start's fabric gate and NCCL discovery read",
}

# Patterns that must never survive into a snapshot (defence in depth: capture.sh reads no secrets).
_SECRET_PATTERNS = [
    (re.compile(r"hf_[A-Za-z0-9]{20,}"), "<redacted>"),
    (re.compile(r"://[^/@\s\"]+@"), "://<redacted>@"),
    (re.compile(r"((?:TOKEN|API_KEY|SECRET|PASSWORD)[A-Z_]*=)\S+"), r"\1<redacted>"),
]


class Probe(Protocol):
    """What the fact parser needs from a host: files by their real path, and command outputs."""

    def read(self, path: str) -> str | None: ...
    def listdir(self, path: str) -> list[str]: ...
    def cmd(self, name: str) -> str | None: ...
    def exit_code(self, name: str) -> int | None: ...


class Snapshot:
    """A captured host: ``read("/sys/class/net/eth0/mtu")`` reads ``DIR/sys/class/net/eth0/mtu``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise SparkError(f"snapshot {self.root} is not a directory",
                             fix="pass a directory written by `sparkhelpers discover capture DIR`")
        if not (self.root / "cmd").is_dir():
            raise SparkError(f"{self.root} is not a snapshot (no cmd/ directory)",
                             fix="pass a directory written by `sparkhelpers discover capture DIR`")
        self._codes: dict[str, int] | None = None

    def _path(self, path: str) -> Path:
        rel = path.lstrip("/")
        if ".." in Path(rel).parts:
            raise ValueError(f"path escapes the snapshot: {path}")
        return self.root / rel

    def read(self, path: str) -> str | None:
        p = self._path(path)
        try:
            return p.read_text(errors="replace").strip()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def listdir(self, path: str) -> list[str]:
        p = self._path(path)
        return sorted(c.name for c in p.iterdir()) if p.is_dir() else []

    def exists(self, path: str) -> bool:
        return self._path(path).exists()

    def cmd(self, name: str) -> str | None:
        return self.read(f"/cmd/{name}")

    def cmd_err(self, name: str) -> str:
        return self.read(f"/cmd/{name}.err") or ""

    def exit_code(self, name: str) -> int | None:
        if self._codes is None:
            self._codes = {}
            for line in (self.cmd("exit-codes.txt") or "").splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[1].lstrip("-").isdigit():
                    self._codes[parts[0]] = int(parts[1])
        return self._codes.get(name)


class MemorySnapshot(Snapshot):
    """capture.sh's output read in memory, never written to disk (what the start reads once and drops):
    the same paths, redaction and refusal of entries that would escape, without an extraction."""

    def __init__(self, encoded: str) -> None:  # noqa: D107 -- no super(): there is no directory
        self.root, self._codes = Path("/nonexistent-snapshot"), None
        self.files: dict[str, str] = {}
        self.children: dict[str, set[str]] = {}
        for name, text in _members(encoded):
            self.files[name] = _scrub(text) if text is not None else None
            parts = name.split("/")
            for i in range(1, len(parts)):
                self.children.setdefault("/".join(parts[:i]), set()).add(parts[i])

    def read(self, path: str) -> str | None:
        text = self.files.get(path.strip("/"))
        return text.strip() if text is not None else None

    def listdir(self, path: str) -> list[str]:
        return sorted(self.children.get(path.strip("/"), ()))

    def exists(self, path: str) -> bool:
        rel = path.strip("/")
        return rel in self.files or rel in self.children


def _members(encoded: str) -> list[tuple[str, str | None]]:
    """(relative path, text or None for a directory) of every entry of capture.sh's base64(tar.gz)."""
    out = []
    try:
        raw = base64.b64decode("".join(encoded.split()), validate=True)
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
            for member in tar.getmembers():
                name = member.name.removeprefix("./").strip("/")
                if not (member.isfile() or member.isdir()) or member.name.startswith("/") or ".." in member.name:
                    raise SparkError(f"the host capture holds an unsafe entry: {member.name}")
                if name:
                    data = tar.extractfile(member).read() if member.isfile() else None
                    out.append((name, data.decode(errors="replace") if data is not None else None))
    except (binascii.Error, tarfile.TarError, EOFError) as exc:
        raise _unreadable(exc) from None
    return out


def _scrub(text: str) -> str:
    for pattern, repl in _SECRET_PATTERNS:
        text = pattern.sub(repl, text)
    return text


def capture_script() -> str:
    return (Path(__file__).parent / "capture.sh").read_text()  # importlib.resources costs 0.1 s to import here


def capture_command(hf_cache: str = "", image: str = "", scope: str = "all") -> str:
    """The one remote command: the script arrives on stdin, so nothing but two paths is in argv."""
    return shell_join(["bash", "-s", "--", hf_cache, image, *([scope] if scope != "all" else [])])


# Between the snapshot (base64: never a '@') and the output of a script run beside the capture.
ALSO_MARK = "@@also@@"


def with_also(script: str, also: str) -> str:
    """``script`` in a subshell, ``also`` beside it in the background (its stdout kept in a private temp
    file, then printed after ALSO_MARK), in one process: one SSH round trip answers both. The
    capture's exit status is the whole's. Each runs in its own subshell, so their variables never mix."""
    return "\n".join([
        '__also="$(mktemp "${TMPDIR:-/tmp}/spark-also.XXXXXX")" || exit 1',
        "{", also, '} >"$__also" 2>/dev/null </dev/null &',
        "(", script, ")", "__rc=$?", "wait",
        f"echo {ALSO_MARK}", 'cat "$__also"', 'rm -f "$__also"', 'exit "$__rc"'])


def redact_tree(root: Path) -> None:
    """Scrub anything token-shaped from every captured file (capture.sh reads no secrets anyway)."""
    for path in root.rglob("*"):
        if path.is_file() and path.stat().st_size < 2_000_000:
            text = path.read_text(errors="replace")
            clean = _scrub(text)
            if clean != text:
                path.write_text(clean)


def _unreadable(exc: Exception) -> SparkError:
    return SparkError(f"the host capture came back unreadable ({exc.__class__.__name__})",
                      fix="run `bash -x sparkhelpers/discover/capture.sh` on that host to see what fails")


def unpack(encoded: str, dest: Path) -> Path:
    """Unpack capture.sh's base64(tar.gz) into ``dest`` (created), refusing paths that escape it."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        raw = base64.b64decode("".join(encoded.split()), validate=True)
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
            for member in tar.getmembers():
                if not (member.isfile() or member.isdir()) or member.name.startswith("/") or ".." in member.name:
                    raise SparkError(f"the host capture holds an unsafe entry: {member.name}")
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, filter="data")
            else:  # Python < 3.11.4: members were vetted above
                tar.extractall(dest)  # noqa: S202
    except (binascii.Error, tarfile.TarError, EOFError) as exc:
        raise _unreadable(exc) from None
    redact_tree(dest)
    return dest


def capture(runner: Runner, dest: str | Path, host: Host = LOCAL, *, hf_cache: str = "",
            image: str = "", timeout: float = 90) -> Path:
    """Capture ``host`` (this machine for LOCAL) into ``dest``: one process locally, one SSH round trip remotely."""
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise SparkError(f"{dest} exists and is not empty", fix="pass a new directory for the snapshot")
    return unpack(capture_with(runner, host, hf_cache=hf_cache, image=image, timeout=timeout)[0], dest)


def capture_with(runner: Runner, host: Host = LOCAL, *, hf_cache: str = "", image: str = "", scope: str = "all",
                 also: str = "", timeout: float = 90) -> tuple[str, str]:
    """Run capture.sh on ``host`` with a ``scope`` and, when ``also`` is given, that read-only script beside it
    in the same round trip: (the snapshot as capture.sh prints it, for ``unpack`` or ``MemorySnapshot``;
    the script's stdout)."""
    script = with_also(capture_script(), also) if also else capture_script()
    result = runner.on(host, capture_command(hf_cache, image, scope), input=script, timeout=timeout,
                       mutating=False)
    snapshot, _, also_out = result.stdout.partition(f"{ALSO_MARK}\n") if also else (result.stdout, "", "")
    if not result.ok or not snapshot.strip():
        what = "ssh" if not host.is_local and result.returncode == 255 else "the capture script"
        fix = (f"check `ssh -o BatchMode=yes {host.target} true` works (key, user, address)"
               if what == "ssh" else "run `bash -x` on the capture script on that host to see what fails")
        raise SparkError(f"could not capture host facts from {host.label}: {what} failed "
                         f"(exit {result.returncode}){': ' + result.last_line if result.last_line else ''}", fix=fix)
    return snapshot, also_out


def capture_remote(runner: Runner, host: Host, dest: str | Path | None = None, **kwargs) -> Path:
    """Snapshot a node over SSH (ONE round trip). Without ``dest`` a fresh temp dir is used."""
    target = Path(dest) if dest is not None else Path(tempfile.mkdtemp(prefix=f"spark-{host.label}-"))
    return capture(runner, target, host, **kwargs)
