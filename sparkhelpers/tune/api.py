"""The tuned-model API, served by the gateway on its own port behind an admin key (the gateway calls
``register(app, gateway)``; it imports this module, never the reverse):

    POST   /models           tune a model: body = a tuning request ({"target": ..., "objective": ..., ...});
                             202 + the job; the same target and objective again: 200 + the stored id
    GET    /models           every tuned model (id, model, state, objective, winner)
    GET    /models/{id}      one tuned model: objective, guard, every candidate's figures, the trail, the winner
    PUT    /models/{id}      re-tune (body: objective/guard/budget/repeats/grid/levers/candidates, all optional);
                             202 + the job; the winner changes only when a candidate wins by the same rule
    DELETE /models/{id}      unload it from the gateway, stop the cluster if it serves it, remove its files
    GET    /jobs/{id}        a job's state (queued, running, done, failed), pid, log, error

Errors are one JSON object {"error": {"message", "fix", "type", "code"}}: 400 a bad request, 401/403 no admin
key, 404 unknown id, 409 busy (another tune holds the nodes: the cluster lock) or a conflict (the id is tuned
for another objective: re-tune it instead). The work is in sparkhelpers.tune.jobs; the blocking parts run in a
thread so the data plane keeps serving.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aiohttp import web

from sparkhelpers.errors import SparkError, UsageError

log = logging.getLogger("sparkhelpers.gateway.tune")
RETUNE_KEYS = ("objective", "guard", "budget", "repeats", "grid", "levers", "candidates")


def problem(status: int, message: str, fix: str = "", kind: str = "invalid_request_error",
            code: str = "") -> web.Response:
    return web.json_response({"error": {"message": message, "fix": fix, "type": kind, "code": code or str(status)}},
                             status=status)


def from_error(exc: SparkError) -> web.Response:
    """The HTTP answer of a tune error: NotFound 404, Busy/Conflict 409, UsageError 400, else 500."""
    from sparkhelpers.tune import jobs, store

    if isinstance(exc, store.NotFound):
        return problem(404, exc.message, exc.fix, code="not_found")
    if isinstance(exc, jobs.Busy):
        return problem(409, exc.message, exc.fix, code="busy")
    if isinstance(exc, jobs.Conflict):
        return problem(409, exc.message, exc.fix, code="conflict")
    if isinstance(exc, UsageError):
        return problem(400, exc.message, exc.fix, code="bad_request")
    return problem(500, exc.message, exc.fix, kind="server_error", code="tune_failed")


def job_answer(result: dict) -> dict:
    """What POST/PUT return: the tuned id, the job and where to follow both."""
    tuned, job_id = result.get("id", ""), result.get("job_id", "")
    return {"id": tuned, "job_id": job_id, "state": result.get("state", ""), "existing": bool(result.get("existing")),
            "winner": result.get("winner") if result.get("existing") else None,
            "links": {"model": f"/models/{tuned}", "job": f"/jobs/{job_id}"}}


class TunedModelsAPI:
    """The handlers; ``gateway`` gives ``authenticate(request, admin=True)``, ``cfg.models`` and ``manager``."""

    def __init__(self, gateway: Any, spark_cfg: Any = None) -> None:
        self.gateway = gateway
        self._cfg = spark_cfg

    @property
    def cfg(self) -> Any:
        if self._cfg is None:
            from sparkhelpers.config import load_config

            self._cfg = load_config()
        return self._cfg

    def _denied(self, request: web.Request) -> web.Response | None:
        denied = self.gateway.authenticate(request, admin=True)
        return denied if isinstance(denied, web.Response) else None

    async def _call(self, request: web.Request, fn, *args: Any, **kwargs: Any):  # noqa: ANN001, ANN202
        """``fn(cfg, ...)`` in a thread; a tune error becomes its HTTP answer."""
        try:
            return await asyncio.to_thread(fn, self.cfg, *args, **kwargs)
        except SparkError as exc:
            return from_error(exc)
        except Exception:  # one line to the client, the trace to the gateway's log
            log.exception("tuned-model API: %s %s failed", request.method, request.path)
            return problem(500, f"{request.method} {request.path} failed inside the gateway",
                           "see the gateway log", kind="server_error", code="internal")

    @staticmethod
    async def _body(request: web.Request, required: bool) -> dict | web.Response:
        raw = await request.read()
        if not raw.strip():
            return problem(400, "the request needs a JSON body", 'e.g. {"target": "qwen3-0.6b"}') if required else {}
        try:
            body = json.loads(raw)
        except ValueError as exc:
            return problem(400, f"the body is not JSON: {exc}", 'send e.g. {"target": "qwen3-0.6b"}')
        if not isinstance(body, dict):
            return problem(400, "the body must be a JSON object", 'e.g. {"target": "qwen3-0.6b"}')
        return body

    async def create(self, request: web.Request) -> web.Response:
        from sparkhelpers.tune import jobs

        body = self._denied(request) or await self._body(request, required=True)
        if isinstance(body, web.Response):
            return body

        def submit(cfg: Any) -> dict:
            return jobs.submit(cfg, jobs.TuneRequest.from_dict(body), background=True, log=log.info)

        result = await self._call(request, submit)
        if isinstance(result, web.Response):
            return result
        answer = job_answer(result)
        return web.json_response(answer, status=200 if answer["existing"] else 202,
                                 headers={"Location": answer["links"]["model"]})

    async def listing(self, request: web.Request) -> web.Response:
        from sparkhelpers.tune import jobs

        rows = self._denied(request) or await self._call(request, jobs.list_tuned)
        return rows if isinstance(rows, web.Response) else web.json_response({"object": "list", "data": rows})

    async def show(self, request: web.Request) -> web.Response:
        from sparkhelpers.tune import jobs

        record = self._denied(request) or await self._call(request, jobs.get, request.match_info["id"])
        return record if isinstance(record, web.Response) else web.json_response(record)

    async def retune(self, request: web.Request) -> web.Response:
        from sparkhelpers.tune import jobs

        body = self._denied(request) or await self._body(request, required=False)
        if isinstance(body, web.Response):
            return body
        unknown = sorted(set(body) - set(RETUNE_KEYS))
        if unknown:
            return problem(400, f"unknown field {unknown[0]} in the re-tune request",
                           f"fields: {', '.join(RETUNE_KEYS)}")
        result = await self._call(request, lambda cfg: jobs.retune(cfg, request.match_info["id"], background=True,
                                                                   log=log.info, **body))
        return result if isinstance(result, web.Response) else web.json_response(job_answer(result), status=202)

    async def delete(self, request: web.Request) -> web.Response:
        from sparkhelpers.tune import jobs, store

        tuned = request.match_info["id"]
        record = self._denied(request) or await self._call(request, jobs.get, tuned)  # 404 before any stop
        if isinstance(record, web.Response):
            return record
        if record.get("state") in (store.QUEUED, store.RUNNING):
            return problem(409, f"{tuned} is being tuned now (job {record.get('job_id')})",
                           "wait for the job to finish (GET /jobs/ID), then delete", code="busy")
        unloaded = []
        for name in served_entries(self.gateway.cfg, record):
            unloaded += await self.gateway.manager.unload(name)
        result = await self._call(request, jobs.delete, tuned)
        if isinstance(result, web.Response):
            return result
        return web.json_response({**result, "unloaded": unloaded})

    async def job(self, request: web.Request) -> web.Response:
        from sparkhelpers.tune import jobs

        state = self._denied(request) or await self._call(request, jobs.job, request.match_info["id"])
        return state if isinstance(state, web.Response) else web.json_response(state)


def served_entries(gateway_cfg: Any, record: dict) -> list[str]:
    """The gateway's models that serve this tuned model: ``tuned:`` its id or a name it was tuned for, or a
    recipe that is its winner's file."""
    names = {record.get("id"), (record.get("request") or {}).get("target"), (record.get("base") or {}).get("model"),
             (record.get("base") or {}).get("served_name")} - {None, ""}
    winner_file = (record.get("winner") or {}).get("recipe_file") or ""
    out = []
    for entry in gateway_cfg.models.values():
        tuned = getattr(entry, "tuned", "")
        if (tuned and tuned in names) or (winner_file and entry.recipe == winner_file):
            out.append(entry.name)
    return out


def register(app: web.Application, gateway: Any, spark_cfg: Any = None) -> TunedModelsAPI:
    """Add the tuned-model routes to the gateway's application."""
    api = TunedModelsAPI(gateway, spark_cfg)
    app.router.add_routes([web.post("/models", api.create), web.get("/models", api.listing),
                           web.get("/models/{id}", api.show), web.put("/models/{id}", api.retune),
                           web.delete("/models/{id}", api.delete), web.get("/jobs/{id}", api.job)])
    return api
