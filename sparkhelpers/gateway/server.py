"""The gateway process: one aiohttp application with the data plane, llama-swap's admin surface, /metrics and
a status page. ``serve()`` runs it in the foreground until SIGTERM/SIGINT, then stops every engine it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from sparkhelpers import __version__
from sparkhelpers.gateway import keys as keystore
from sparkhelpers.gateway import launcher, page, relay
from sparkhelpers.gateway.ledger import Ledger
from sparkhelpers.gateway.manager import ModelManager
from sparkhelpers.gateway.metrics import GatewayMetrics, relabel
from sparkhelpers.gateway.models_file import GatewayConfig
from sparkhelpers.gateway.proxy import DataPlane, error
from sparkhelpers.gateway.quotas import Quotas
from sparkhelpers.tune import api as tune_api

log = logging.getLogger("sparkhelpers.gateway")
GATEWAY_HEADER = "X-Sparkhelpers-Gateway"


def gateway_dir(state_dir: Path) -> Path:
    return state_dir / "gateway"


class Gateway:
    def __init__(self, cfg: GatewayConfig, state_dir: Path) -> None:
        self.cfg = cfg
        self.dir = gateway_dir(state_dir)
        self.store = keystore.Store(keystore.db_path(state_dir))
        # the data plane's usage rows: group commits on a writer thread with its own connection
        self.ledger = Ledger(keystore.Store(keystore.db_path(state_dir)))
        self.key_file = self.dir / "internal.key"
        self.internal_key = self.store.ensure_internal(self.key_file)
        self.metrics = GatewayMetrics()
        self.manager = ModelManager(cfg, self.dir, str(self.key_file), hooks=self.metrics)
        self.quotas = Quotas(self.store.tokens_today)
        self.control_key = self.store.ensure_internal(self.dir / "control.key")  # the local CLI's admin key
        self.keys = self._load_keys()
        self._version = self.store.data_version()
        self.upstream: aiohttp.ClientSession | None = None
        self.upstream_fresh: aiohttp.ClientSession | None = None
        self.relay_pool = relay.Pool()  # the raw relay's keep-alive connections to the engines (streams)
        self.started = time.time()
        self.data = DataPlane(self)

    # ---- keys --------------------------------------------------------------------------------------------
    def authenticate(self, request: web.Request, admin: bool = False) -> keystore.KeyInfo | web.Response:
        header = request.headers.get("Authorization", "")
        secret = header[7:].strip() if header[:7].lower() == "bearer " else request.headers.get("x-api-key", "")
        digest = keystore.hash_key(secret) if secret else ""
        info = self.keys.get(digest) if secret else None
        if info is None and secret and self._refresh_keys():  # a key created a moment ago works at once
            info = self.keys.get(digest)
        if info is None or info.expired():
            self.metrics.refused.labels("bad_key").inc()
            why = "no API key" if not secret else "the API key is not valid (unknown, revoked or expired)"
            return error(401, f"{why}; send Authorization: Bearer KEY", "invalid_request_error", "invalid_api_key")
        if admin and not info.admin:
            return error(403, f"key {info.name} is not an admin key", "permission_error", "admin_required")
        return info

    async def _key_loop(self) -> None:
        """Keys created, revoked or rotated by ``sparkhelpers keys`` take effect within a second."""
        while True:
            await asyncio.sleep(1.0)
            self._refresh_keys()

    def _refresh_keys(self) -> bool:
        version = self.store.data_version()
        if version == self._version:
            return False
        self._version, self.keys = version, self._load_keys()
        return True

    def _load_keys(self) -> dict[str, keystore.KeyInfo]:
        found = self.store.by_hash()
        found[keystore.hash_key(self.control_key)] = keystore.KeyInfo(id="control", name="local-control", admin=True)
        return found

    # ---- handlers ----------------------------------------------------------------------------------------
    async def models(self, request: web.Request) -> web.Response:
        key = self.authenticate(request)
        if isinstance(key, web.Response):
            return key
        data = [{"id": e.name, "object": "model", "created": int(self.started), "owned_by": "sparkhelpers",
                 "aliases": e.aliases, "description": e.description}
                for e in self.cfg.models.values() if key.allows(e.name)]
        return web.json_response({"object": "list", "data": data})

    async def health(self, _request: web.Request) -> web.Response:
        return web.Response(text="OK")

    async def running(self, request: web.Request) -> web.Response:
        denied = self.authenticate(request, admin=True)
        if isinstance(denied, web.Response):
            return denied
        return web.json_response({"running": self.manager.running()})

    async def unload(self, request: web.Request) -> web.Response:
        denied = self.authenticate(request, admin=True)
        if isinstance(denied, web.Response):
            return denied
        model = request.match_info.get("model")
        if model is not None:
            entry = self.cfg.resolve(model)
            if entry is None:
                return error(404, f"the model {model} does not exist", "invalid_request_error", "model_not_found")
            model = entry.name
        stopped = await self.manager.unload(model)
        return web.json_response({"msg": "ok", "unloaded": stopped})

    async def logs(self, request: web.Request) -> web.StreamResponse:
        denied = self.authenticate(request, admin=True)
        if isinstance(denied, web.Response):
            return denied
        rid = request.match_info["model"]
        rs = self.manager.replicas.get(rid) or next(
            (r for r in self.manager.replicas.values() if r.entry.name == rid or rid in r.entry.aliases), None)
        if rs is None:
            return error(404, f"no model or replica {rid}", "invalid_request_error", "model_not_found")
        resp = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
        await resp.prepare(request)
        proc = rs.proc
        if proc is None:
            await resp.write(f"{rid}: not started yet\n".encode())
            return resp
        if "no-history" not in request.query:
            await resp.write("".join(proc.lines).encode())
        queue: asyncio.Queue = asyncio.Queue(maxsize=10000)
        proc.subscribers.add(queue)
        try:
            while (line := await queue.get()) is not None:
                await resp.write(line.encode())
        finally:
            proc.subscribers.discard(queue)
        return resp

    async def metrics_endpoint(self, request: web.Request) -> web.Response:
        if self.cfg.status_auth == "admin":
            denied = self.authenticate(request, admin=True)
            if isinstance(denied, web.Response):
                return denied
        for rs in self.manager.replicas.values():
            self.metrics.state.labels(rs.entry.name, rs.id).set(1 if rs.state == "ready" else 0)
        text = self.metrics.render().decode()
        text += await self._engine_metrics()
        return web.Response(text=text, content_type="text/plain", charset="utf-8",
                            headers={"X-Content-Type-Options": "nosniff"})

    async def _engine_metrics(self) -> str:
        ready = [rs for rs in self.manager.replicas.values() if rs.state == "ready"]
        headers = {"Authorization": f"Bearer {self.internal_key}"}

        async def one(rs) -> str:  # noqa: ANN001
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, OSError):
                async with self.upstream.get(rs.spec.base_url + "/metrics", headers=headers,
                                             timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    if resp.status == 200:
                        return await resp.text()
            return ""

        texts = await asyncio.gather(*(one(rs) for rs in ready))
        seen: set[str] = set()
        pairs = zip(ready, texts, strict=True)
        return "".join(relabel(text, {"model": rs.entry.name, "replica": rs.id}, seen) for rs, text in pairs)

    async def ui(self, request: web.Request) -> web.Response:
        if self.cfg.status_auth == "admin":
            denied = self.authenticate(request, admin=True)
            if isinstance(denied, web.Response):
                return denied
        html = page.render(self.manager, self.store.usage_rows(keystore.today(), keystore.today()), self.cfg)
        return web.Response(text=html, content_type="text/html", charset="utf-8")

    # ---- the application ---------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
            app.router.add_post(path, self.data.handle)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        app.router.add_get("/running", self.running)
        app.router.add_post("/api/models/unload", self.unload)
        app.router.add_post("/api/models/unload/{model:.+}", self.unload)
        app.router.add_get("/logs/stream/{model:.+}", self.logs)
        app.router.add_get("/metrics", self.metrics_endpoint)
        app.router.add_get("/ui", self.ui)
        app.router.add_get("/", self.ui)
        tune_api.register(app, self)  # the tuned-model API: /models, /models/{id}, /jobs/{id} (admin key)
        app.on_response_prepare.append(self._stamp)
        app.on_startup.append(self._on_startup)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _stamp(self, _request: web.Request, response: web.StreamResponse) -> None:
        """Every answer names the gateway (a benchmark records what it measured through)."""
        response.headers[GATEWAY_HEADER] = __version__

    async def _on_startup(self, _app: web.Application) -> None:
        interrupted = self.store.recover()
        if interrupted:
            log.warning("counted %d request(s) a previous gateway left in flight as interrupted", interrupted)
        self.upstream, self.upstream_fresh = (aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, force_close=fresh),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10), auto_decompress=False)
            for fresh in (False, True))  # the second: a new connection per request, for a retry
        await self.manager.open()
        self._key_task = asyncio.get_running_loop().create_task(self._key_loop())

    async def _on_cleanup(self, _app: web.Application) -> None:
        self._key_task.cancel()
        await self.manager.close()
        await self.upstream.close()
        await self.upstream_fresh.close()
        self.relay_pool.close()
        self.ledger.close()
        self.store.close()


def serve(cfg: GatewayConfig, state_dir: Path, ready_line: bool = True) -> None:
    """Run the gateway in the foreground until SIGTERM or SIGINT (systemd's and a terminal's stop)."""
    os.umask(0o077)  # logs, pid and state files: the gateway's user only
    logging.basicConfig(level=os.environ.get("GATEWAY_LOG_LEVEL", "INFO"),
                        format="%(asctime)s gateway %(levelname)s %(message)s")
    gw = Gateway(cfg, state_dir)
    pid_file = gateway_dir(state_dir) / "gateway.pid"

    async def main() -> None:
        runner = web.AppRunner(gw.app(), access_log=None, handler_cancellation=True, shutdown_timeout=5)
        await runner.setup()
        site = web.TCPSite(runner, cfg.listen_host, cfg.listen_port, backlog=1024, reuse_address=True)
        await site.start()
        pid_file.write_text(f"{os.getpid()}\n")
        if ready_line:
            print(f"gateway listening on http://{cfg.listen_host}:{cfg.listen_port} ({len(cfg.models)} models)",
                  flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("stopping: ending every engine")
        await runner.cleanup()
        with contextlib.suppress(OSError):
            pid_file.unlink()

    run_loop(main())


def run_loop(coro) -> None:  # noqa: ANN001
    """uvloop when installed (about half the per-chunk cost of the stdlib loop), else asyncio's own."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
        return
    uvloop.run(coro)


__all__ = ["Gateway", "serve", "gateway_dir", "launcher"]
