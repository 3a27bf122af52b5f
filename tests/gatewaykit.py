"""Helpers for the gateway tests: a gateway process on loopback with its own state dir, and its CLI."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests
import yaml
from polling import wait_for  # noqa: F401 - re-exported for the gateway tests

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ROOT / "tests" / "bench_engine.py"
RELAY = ROOT / "tests" / "gateway_relay.py"
TRUTH = next(p for p in (ROOT / "perf" / "truth_server.py", ROOT / "bench" / "truth_server.py") if p.exists())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n: int) -> int:
    """The first of n consecutive free ports (the gateway assigns replica ports in a row)."""
    for _ in range(50):
        base = free_port()
        socks = []
        try:
            for i in range(n):
                s = socket.socket()
                s.bind(("127.0.0.1", base + i))
                socks.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range")


def engine_cmd(alias: str = "smollm2", parallel: int = 2) -> list[str]:
    return [sys.executable, str(ENGINE), "${PORT}", str(parallel), alias]


def truth_cmd(*args: str) -> list[str]:
    return [sys.executable, str(TRUTH), "--port", "${PORT}", *args]


def wait_http(url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            requests.get(url, timeout=2)
            return
        except requests.RequestException:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer in {timeout:g} s")


class Gateway:
    """``sparkhelpers gateway run`` as a child, with the models file and state dir given."""

    def __init__(self, state_dir: Path, models: dict, **settings) -> None:
        self.state_dir = state_dir
        self.port = free_port()
        self.models_file = state_dir / "models.yaml"
        state_dir.mkdir(parents=True, exist_ok=True)
        replicas = sum(len(m.get("placement", [["local"]])) for m in models.values())
        doc = {"listen": f"127.0.0.1:{self.port}", "start_timeout": 180, "stop_timeout": 10,
               "start_port": free_ports(replicas), **settings, "models": models}
        self.models_file.write_text(yaml.safe_dump(doc, sort_keys=False))
        self.env = {**os.environ, "SPARK_STATE_DIR": str(state_dir)}
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log = state_dir / "gateway-test.log"

    def start(self) -> Gateway:
        exe = Path(sys.executable).parent / "sparkhelpers"
        argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "sparkhelpers"]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([*argv, "gateway", "run", "--models", str(self.models_file)], env=self.env,
                                         stdout=log, stderr=subprocess.STDOUT)
        wait_http(self.url + "/health", 30, self.proc)
        return self

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                return self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return self.proc.wait(10)
        return self.proc.returncode if self.proc else 0

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        exe = Path(sys.executable).parent / "sparkhelpers"
        argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "sparkhelpers"]
        return subprocess.run([*argv, *args], env=self.env, capture_output=True, text=True, check=check, timeout=60)

    def create_key(self, name: str, *flags: str) -> str:
        return self.cli("keys", "create", name, *flags).stdout.strip()

    @property
    def control(self) -> dict:
        key = (self.state_dir / "gateway" / "control.key").read_text().strip()
        return {"Authorization": f"Bearer {key}"}

    def running(self) -> list[dict]:
        return requests.get(self.url + "/running", headers=self.control, timeout=10).json()["running"]

    def chat(self, key: str, model: str, content: str = "Hi", max_tokens: int = 8, stream: bool = False,
             include_usage: bool = False, timeout: float = 180, **extra) -> requests.Response:
        body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
                "temperature": 0, "stream": stream, **extra}
        if include_usage:
            body["stream_options"] = {"include_usage": True}
        return requests.post(self.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"},
                             stream=stream, timeout=timeout)


def sse_events(data: bytes) -> list[bytes]:
    return [e for e in data.split(b"\n\n") if e.strip()]


def usage_from_stream(data: bytes) -> dict | None:
    for event in sse_events(data):
        if event.startswith(b"data: {") and b'"usage"' in event:
            obj = json.loads(event[6:])
            if obj.get("usage"):
                return obj["usage"]
    return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# ---- a client inside a node of the emulated cluster (the test cannot reach a node's loopback) ---------------

def _node_client(argv: list[str]) -> None:
    """python gatewaykit.py get URL | chat URL MODEL N MAX_TOKENS | stream URL MODEL MAX_TOKENS; the key on stdin.

    get: the JSON body. chat: N requests at once, one JSON line each ({"status", "body"}). stream: one line per
    SSE event as it arrives (flushed), then ``END <status>``."""
    import concurrent.futures

    key = sys.stdin.readline().strip()
    headers = {"Authorization": f"Bearer {key}"}
    what, url = argv[0], argv[1]
    if what == "get":
        print(json.dumps(requests.get(url, headers=headers, timeout=30).json()))
        return
    model, body = argv[2], {"messages": [{"role": "user", "content": "Count from one to two hundred."}],
                            "temperature": 0, "ignore_eos": True}
    if what == "chat":
        n, body["max_tokens"] = int(argv[3]), int(argv[4])

        def one(_i: int) -> str:
            r = requests.post(url, json={**body, "model": model}, headers=headers, timeout=600)
            return json.dumps({"status": r.status_code, "body": r.json()})

        with concurrent.futures.ThreadPoolExecutor(n) as pool:
            for line in pool.map(one, range(n)):
                print(line, flush=True)
        return
    body.update(model=model, max_tokens=int(argv[3]), stream=True)
    with requests.post(url, json=body, headers=headers, stream=True, timeout=600) as r:
        for event in r.iter_lines(chunk_size=None, delimiter=b"\n\n"):
            if event.strip():
                print(event.decode(errors="replace").replace("\n", " "), flush=True)
        print(f"END {r.status_code}", flush=True)


if __name__ == "__main__":
    _node_client(sys.argv[1:])
