"""Real generation: xllamacpp (llama.cpp's own server code) on a private loopback port, behind a thin
OpenAI-compatible proxy on the requested host/port that answers under the served model name,
counts requests (for the crash-after-N fault) and exposes /health, /v1/models and /metrics."""

from __future__ import annotations

import http.client
import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from sparksim_engine.common import free_port, log
from sparksim_engine.levers import Levers, request_settings
from sparksim_engine.levers import apply as apply_levers
from sparksim_engine.metrics import EngineMetrics


class Backend:
    """The xllamacpp server (kept alive for the life of the process), set from vLLM's levers (levers.py)."""

    def __init__(self, model_path: str, threads: int = 1, levers: Levers | None = None) -> None:
        import xllamacpp as xlc

        self.port = free_port()
        self.levers = levers or Levers()
        self.n_parallel = self.levers.slots
        params = xlc.CommonParams()
        params.model.path = model_path
        params.model_alias = ["backend"]  # a list: a plain str would become a set of characters
        params.hostnames = ["127.0.0.1"]
        params.port = self.port
        apply_levers(self.levers, params)
        params.cpuparams.n_threads = threads
        params.cpuparams_batch.n_threads = threads
        self.server = xlc.Server(params)  # returns once listening

    def request(self, method: str, path: str, body: bytes | None = None) -> http.client.HTTPResponse:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        return conn.getresponse()


@dataclass
class EngineState:
    """What one engine front serves, shared by its request threads."""

    backend: Backend
    served_names: list[str]
    flavor: str  # "vllm" or "llama.cpp" (owned_by, error shapes, log lines)
    crash_after: int = 0
    api_key: str = ""
    max_model_len: int = 4096
    engine_lost: threading.Event | None = None
    failed: threading.Event = field(default_factory=threading.Event)
    stats: EngineMetrics | None = None
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        if self.stats is None:  # vLLM's /metrics names, from the backend's slots and cache
            lv = self.backend.levers
            self.stats = EngineMetrics(lv.slots, kv_tokens=lv.kv_tokens, prefix_cache=lv.prefix_cache,
                                       speculative=lv.spec_ngram > 0)


class EngineHandler(BaseHTTPRequestHandler):
    """The OpenAI-compatible front of one engine; `engine` (set per server) holds what it serves."""

    protocol_version = "HTTP/1.1"
    engine: EngineState

    def log_message(self, fmt: str, *args) -> None:  # noqa: ANN002
        if self.engine.flavor == "vllm":
            print(f'INFO:     {self.client_address[0]}:{self.client_address[1]} - "{self.requestline}" '
                  f"{args[1] if len(args) > 1 else ''}", file=sys.stderr, flush=True)

    def _json(self, code: int, data: object) -> None:
        raw = json.dumps(data).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _error(self, code: int, message: str, kind: str) -> None:
        self._json(code, {"error": {"message": message, "type": kind, "param": None, "code": code}})

    def _authorized(self) -> bool:
        if not self.engine.api_key or self.path in ("/health", "/metrics", "/version"):
            return True
        if self.headers.get("Authorization", "") == f"Bearer {self.engine.api_key}":
            return True
        self._json(401, {"error": "Unauthorized"})
        return False

    def do_GET(self) -> None:  # noqa: N802
        if not self._authorized():
            return
        if self.path == "/health":
            self.send_response(503 if self.engine.failed.is_set() else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/version":
            self._json(200, {"version": os.environ.get("SPARKSIM_VLLM_VERSION", "0.19.0")})
        elif self.path == "/v1/models":
            e = self.engine
            owner = "vllm" if e.flavor == "vllm" else "llamacpp"
            self._json(200, {"object": "list", "data": [
                {"id": n, "object": "model", "created": e.created, "owned_by": owner, "root": e.served_names[0],
                 "parent": None, "max_model_len": e.max_model_len} for n in e.served_names]})
        elif self.path == "/metrics":
            try:
                slots = self.engine.backend.request("GET", "/slots").read()
            except OSError:
                slots = None
            raw = self.engine.stats.render(slots, self.engine.served_names[0]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)
        else:
            self._json(404, {"detail": "Not Found"})

    def do_POST(self) -> None:  # noqa: N802
        if not self._authorized():
            return
        if self.path not in ("/v1/chat/completions", "/v1/completions"):
            self._json(404, {"detail": "Not Found"})
            return
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
        except ValueError:
            self._error(400, "invalid JSON body", "BadRequestError")
            return
        model = body.get("model") or self.engine.served_names[0]
        if model not in self.engine.served_names:
            self._error(404, f"The model `{model}` does not exist.", "NotFoundError")
            return
        if self.engine.engine_lost is not None and self.engine.engine_lost.is_set():
            self._engine_dead(getattr(self.engine.engine_lost, "peer", "?"))
            return
        body["model"] = "backend"
        request_settings(self.engine.backend.levers, body)
        stream = bool(body.get("stream"))
        want_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        with self.engine.stats.lock:
            self.engine.stats.running += 1
        try:
            self._forward(body, model, stream, want_usage)
        finally:
            with self.engine.stats.lock:
                self.engine.stats.running -= 1
                self.engine.stats.finished += 1
                done = self.engine.stats.finished
            if self.engine.crash_after and done >= self.engine.crash_after:
                log("ERROR", f"EngineCore encountered a fatal error: sparksim fault: crash after {done} requests")
                os._exit(1)

    def _engine_dead(self, peer: str) -> None:
        log("ERROR", f"RuntimeError: [../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by "
                     f"peer (rank {peer})")
        log("ERROR", "AsyncLLM output_handler self.engine.failed. EngineDeadError: EngineCore encountered an issue. "
                     "See stack trace (above) for the root cause.")
        self.engine.failed.set()
        self._error(500, "EngineCore encountered an issue. See stack trace (above) for the root cause.",
                    "InternalServerError")
        threading.Timer(5.0, lambda: os._exit(1)).start()  # the API server shuts down after the failure

    def _forward(self, body: dict, model: str, stream: bool, want_usage: bool) -> None:
        resp = self.engine.backend.request("POST", self.path, json.dumps(body).encode())
        if not stream or resp.status != 200:
            data = json.loads(resp.read() or b"{}")
            if isinstance(data, dict) and "model" in data:
                data["model"] = model
                self.engine.stats.count(data.get("usage"), data.get("timings"))
            self._json(resp.status, data)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        started, last = time.monotonic(), None
        for raw in resp:
            line = raw.decode(errors="replace").rstrip("\r\n")
            if line.startswith("data: ") and line != "data: [DONE]":
                try:
                    chunk = json.loads(line[6:])
                except ValueError:
                    chunk = None
                if isinstance(chunk, dict):
                    chunk["model"] = model
                    timings = chunk.pop("timings", None)
                    if chunk.get("choices"):
                        now = time.monotonic()
                        self.engine.stats.token(now - started, None if last is None else now - last)
                        last = now
                    if self.engine.flavor == "vllm":  # vLLM's role chunk carries content "" (llama.cpp: null)
                        for choice in chunk.get("choices") or []:
                            delta = choice.get("delta") or {}
                            if delta.get("role") and delta.get("content") is None:
                                delta["content"] = ""
                    if chunk.get("usage"):  # llama.cpp: on the last chunk, with or without choices
                        self.engine.stats.count(chunk["usage"], timings)
                        if not chunk.get("choices") and not want_usage:
                            continue
                    line = "data: " + json.dumps(chunk)
            if not line:
                continue
            payload = (line + "\n\n").encode()
            self.wfile.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()



def serve(backend: Backend, *, host: str, port: int, served_names: list[str], flavor: str,
          crash_after: int = 0, api_key: str = "", max_model_len: int = 4096, on_ready=None,
          engine_lost: threading.Event | None = None) -> None:
    """Serve until SIGTERM/SIGINT. ``flavor`` is "vllm" or "llama.cpp" (owned_by, error shapes).
    ``engine_lost`` set (a rank died): /health stays 200, as in real vLLM, until a request fails with
    HTTP 500; then /health answers 503 and the server exits a moment later."""
    state = EngineState(backend, served_names, flavor, crash_after=crash_after, api_key=api_key,
                        max_model_len=max_model_len, engine_lost=engine_lost)
    handler = type("Handler", (EngineHandler,), {
        "engine": state, "server_version": "uvicorn" if flavor == "vllm" else "llama.cpp"})
    httpd = ThreadingHTTPServer((host, port), handler)
    httpd.daemon_threads = True

    def stop(_sig, _frame) -> None:  # noqa: ANN001
        log("INFO", "Shutting down")
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if on_ready:
        on_ready()
    httpd.serve_forever()
