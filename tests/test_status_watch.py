"""`sparkhelpers status --watch` through a real pty against a real HTTP server that serves vLLM's /metrics
(the captured text, its generation counter advancing): refreshes in place, one JSON object per refresh with
--json, once off a terminal, a clean exit on Ctrl-C."""

from __future__ import annotations

import http.server
import json
import os
import pty
import signal
import subprocess
import threading
from pathlib import Path

import pytest
from ptyio import read_until, wait_child

CAPTURED = (Path(__file__).parent / "fixtures" / "metrics" / "vllm-0.11-metrics.txt").read_text()


class Engine(http.server.BaseHTTPRequestHandler):
    scrapes = 0

    def do_GET(self):  # noqa: N802
        if self.path == "/metrics":
            Engine.scrapes += 1
            body = CAPTURED.replace("} 262144.0", f"}} {262144.0 + 500 * Engine.scrapes}").encode()
        elif self.path == "/v1/models":
            body = json.dumps({"data": [{"id": "Qwen/Qwen3-30B-A3B"}]}).encode()
        else:
            body = b""
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def engine():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Engine)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def _env(port: int) -> dict:
    return {**os.environ, "VLLM_PORT": str(port), "VLLM_HOST": "127.0.0.1", "TERM": "xterm"}


def _read_until(fd: int, pattern: str, timeout: float) -> str:
    return read_until(fd, pattern.encode(), timeout).decode(errors="replace")


def test_watch_refreshes_in_place_and_ctrl_c_exits_cleanly(engine, sparkhelpers_bin):
    pid, fd = pty.fork()
    if pid == 0:
        os.execvpe(sparkhelpers_bin[0], [*sparkhelpers_bin, "status", "--watch", "--interval", "0.5"], _env(engine))
    text = ""
    try:
        text = _read_until(fd, "refresh 3,", 90)
        os.write(fd, b"\x03")  # Ctrl-C, through the terminal's line discipline
    finally:
        code, rest = wait_child(pid, fd, 30)
        os.close(fd)
        text += rest.decode(errors="replace")
    assert "refresh 1," in text and "refresh 2," in text, text
    assert text.count("\x1b[H\x1b[2J") >= 2  # redrawn in place, not scrolled
    assert "engine: 14 running, 3 waiting; KV cache 42%; prefix hits 62%" in text
    assert "tokens/s" in text and "serving Qwen/Qwen3-30B-A3B" in text
    assert code == 0, f"exit {code} after Ctrl-C (-9: it did not stop and was killed)\n{text[-3000:]}"
    assert "Traceback" not in text and "Aborted" not in text


def test_watch_json_is_one_object_per_refresh(engine, sparkhelpers_bin):
    proc = subprocess.Popen([*sparkhelpers_bin, "status", "--watch", "--json", "--interval", "0.3"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(engine))
    try:
        first, second = json.loads(proc.stdout.readline()), json.loads(proc.stdout.readline())
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()  # never left running behind the test
            proc.wait()
    assert (first["refresh"], second["refresh"]) == (1, 2)
    assert first["engine"]["requests_running"] == 14 and first["engine"]["tokens_per_s"] is None
    assert second["engine"]["tokens_per_s"] > 0  # the generation counter advanced between the refreshes
    assert proc.returncode == 0 and "Traceback" not in proc.stderr.read()


def test_off_a_terminal_it_prints_once(engine, sparkhelpers_bin):
    r = subprocess.run([*sparkhelpers_bin, "status", "--watch", "--interval", "0.3"], capture_output=True,
                       text=True, timeout=60, env=_env(engine))
    assert r.returncode == 0 and r.stdout.count("cluster spark:") == 1 and "\x1b[" not in r.stdout
    assert "engine: 14 running" in r.stdout


def test_sigterm_ends_it_while_its_terminal_takes_nothing(engine, sparkhelpers_bin):
    """Ctrl-S stops the terminal's output: the refresh blocks in its write, and so would the interpreter's exit
    (it flushes again). SIGTERM still ends it, with 143."""
    pid, fd = pty.fork()
    if pid == 0:
        os.execvpe(sparkhelpers_bin[0], [*sparkhelpers_bin, "status", "--watch", "--interval", "0.2"], _env(engine))
    try:
        text = _read_until(fd, "refresh 1,", 90)
        os.write(fd, b"\x13")  # XOFF: the terminal takes no more output
        _read_until(fd, "\x00never", 2)  # the next refreshes block in their write
        os.kill(pid, signal.SIGTERM)
    finally:
        code, _ = wait_child(pid, fd, 15)
        os.close(fd)
    assert code == 143, f"exit {code} (-9: SIGTERM did not end it and it was killed)\n{text[-2000:]}"
