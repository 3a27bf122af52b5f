"""Shared helpers of the sparksim engine: vLLM-style logs, faults, HF cache lookups, local addresses."""

from __future__ import annotations

import inspect
import os
import socket
import sys
import time
from pathlib import Path

MODEL_FILE = Path(os.environ.get("SPARKSIM_MODEL", "/opt/sparksim/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
FAULT_FILE = ".sparksim-fault"


def log(level: str, message: str) -> None:
    """One line in vLLM's format: ``INFO 11-22 09:40:01 [file.py:123] message``."""
    frame = inspect.stack()[1]
    where = f"{Path(frame.filename).name}:{frame.lineno}"
    stamp = time.strftime("%m-%d %H:%M:%S")
    print(f"{level} {stamp} [{where}] {message}", file=sys.stderr, flush=True)


def hf_hub_dirs() -> list[Path]:
    """Where huggingface_hub would look for ``models--org--name`` in this container."""
    env = os.environ
    home = Path(env.get("HF_HOME", str(Path.home() / ".cache" / "huggingface")))
    dirs = [Path(env["HF_HUB_CACHE"])] if env.get("HF_HUB_CACHE") else []
    dirs += [home / "hub", home, Path("/root/.cache/huggingface/hub"), Path("/root/.cache/huggingface")]
    seen, out = set(), []
    for d in dirs:
        if str(d) not in seen:
            seen.add(str(d))
            out.append(d)
    return out


def model_snapshot(model: str) -> Path | None:
    """The snapshot directory of ``org/name`` in the HF cache (or the local path), if complete."""
    if model.startswith("/") or model.startswith("."):
        return Path(model) if Path(model).exists() else None
    folder = "models--" + model.replace("/", "--")
    for hub in hf_hub_dirs():
        snaps = hub / folder / "snapshots"
        if snaps.is_dir():
            for snap in sorted(snaps.iterdir()):
                if snap.is_dir() and any(snap.iterdir()):
                    return snap
    return None


def fault() -> tuple[str, int]:
    """The engine fault asked for by the test harness: env SPARKSIM_FAULT or a `.sparksim-fault` file
    in the mounted HF cache. Kinds: crash-load, hang-load, crash-after N. ("", 0) when none."""
    text = os.environ.get("SPARKSIM_FAULT", "")
    if not text:
        for d in hf_hub_dirs():
            for candidate in (d / FAULT_FILE, d.parent / FAULT_FILE):
                if candidate.is_file():
                    text = candidate.read_text().strip()
                    break
            if text:
                break
    words = text.split()
    if not words:
        return "", 0
    return words[0], int(words[1]) if len(words) > 1 and words[1].isdigit() else 0


def local_ipv4() -> set[str]:
    """IPv4 addresses of this network namespace (from /proc/net/fib_trie; no `ip` in the image)."""
    addrs: set[str] = {"127.0.0.1"}
    try:
        lines = Path("/proc/net/fib_trie").read_text().splitlines()
    except OSError:
        return addrs
    for prev, line in zip(lines, lines[1:], strict=False):
        if "/32 host LOCAL" in line:
            addrs.add(prev.split()[-1])
    return addrs


def can_connect(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keepalive(sock: socket.socket) -> socket.socket:
    """Notice a vanished peer (node killed, link down) within ~5 s, as NCCL/Ray would time out."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 2)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
    return sock
