"""The model manager: which replica runs, starting models on demand, swaps, idle eviction, crash recovery.

Rules:
- a model is all its replicas: a request for a cold model starts every replica of its placement and is served by
  the first that is ready; replicas are picked by fewest requests in flight;
- one tenant per node: starting a replica first stops every other model's replica on any of its nodes, and every
  running member of its exclusive group (then waits ``settle`` s for memory to come back);
- never twice at once: a replica has one start task that every waiting request shares;
- ``ttl`` s without requests stops a model; an engine that exits or stops answering its health check is marked
  stopped (the next request starts it again; a ``preload`` model is restarted at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from sparkhelpers.gateway import health, launcher
from sparkhelpers.gateway.models_file import GatewayConfig, ModelEntry, Replica

log = logging.getLogger("sparkhelpers.gateway")
HEALTH_EVERY_S = 5.0
HEALTH_FAILS = 2
RANKS_EVERY_S = 15.0  # a read-only probe of every node of a recipe replica (one SSH round trip per worker)


class ColdStart(Exception):
    """The model is still starting after the wait limit."""

    def __init__(self, model: str, retry_after: int) -> None:
        super().__init__(f"model {model} is starting; retry in {retry_after} s")
        self.retry_after = retry_after


class StartFailed(Exception):
    pass


class Busy(Exception):
    """Every ready replica is at its concurrency limit."""


@dataclass
class ReplicaState:
    replica: Replica
    entry: ModelEntry
    spec: launcher.LaunchSpec
    state: str = "stopped"  # stopped | starting | ready | checking | stopping
    proc: launcher.EngineProcess | None = None
    in_flight: int = 0
    last_used: float = 0.0
    ready_at: float = 0.0
    start_task: asyncio.Task | None = None
    check_task: asyncio.Task | None = None  # while 'checking': the data plane saw it fail
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    last_error: str = ""
    health_fails: int = 0
    generation: int = 0
    checked_ranks_at: float = 0.0

    @property
    def id(self) -> str:
        return self.replica.id


class ModelManager:
    def __init__(self, cfg: GatewayConfig, state_dir: Path, key_file: str, hooks=None) -> None:
        self.cfg = cfg
        self.state_dir = state_dir
        self.hooks = hooks  # metrics: on_load(model), on_evict(model, reason), on_failure(model, kind)
        self.replicas: dict[str, ReplicaState] = {}
        for entry in cfg.models.values():
            for rep in entry.replicas:
                self.replicas[rep.id] = ReplicaState(rep, entry, launcher.launch_spec(cfg, entry, rep, key_file))
        self.swap_lock = asyncio.Lock()
        self.session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task] = []
        self.children_file = state_dir / "engines.json"
        self.closing = False
        self.key_file, self._engine_key = key_file, ""

    # ---- life of the manager -------------------------------------------------------------------------------
    async def open(self) -> None:
        for replica_id in launcher.reap_orphans(self.children_file):
            log.warning("ended the engine %s a previous gateway left running", replica_id)
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._idle_loop()))
        self._tasks.append(loop.create_task(self._health_loop()))
        for rs in self.replicas.values():
            if rs.entry.preload:
                self._ensure_start(rs)

    async def close(self) -> None:
        self.closing = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*(self.stop(rs, "shutdown") for rs in self.replicas.values()), return_exceptions=True)
        if self.session:
            await self.session.close()

    def _hook(self, name: str, *args) -> None:
        fn = getattr(self.hooks, name, None) if self.hooks else None
        if fn:
            fn(*args)

    # ---- the request path ------------------------------------------------------------------------------------
    def model_replicas(self, entry: ModelEntry) -> list[ReplicaState]:
        return [self.replicas[r.id] for r in entry.replicas]

    def pick(self, entry: ModelEntry) -> ReplicaState | None:
        """The ready replica with the fewest requests in flight, below its limit; raises Busy when all are full."""
        ready = [rs for rs in self.model_replicas(entry) if rs.state == "ready"]
        if not ready:
            return None
        best = min(ready, key=lambda rs: rs.in_flight)
        if best.in_flight >= entry.concurrency:
            raise Busy(entry.name)
        return best

    async def acquire(self, entry: ModelEntry, wait_s: float) -> ReplicaState:
        """A ready replica for the request (counted in flight), starting the model when needed."""
        deadline = time.monotonic() + wait_s
        while True:
            rs = self.pick(entry)
            if rs is not None:
                rs.in_flight += 1
                rs.last_used = time.monotonic()
                return rs
            starting = [self._ensure_start(r) for r in self.model_replicas(entry)]
            checks = {r.check_task for r in self.model_replicas(entry) if r.state == "checking"}
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ColdStart(entry.name, self._retry_after(entry))
            done, _ = await asyncio.wait(starting, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            if not done:
                raise ColdStart(entry.name, self._retry_after(entry))
            if done & checks:
                continue  # a verdict on a suspect replica: ready again, or stopped (the next turn starts it)
            if all(t.done() for t in starting) and not any(r.state == "ready" for r in self.model_replicas(entry)):
                errors = [r.last_error for r in self.model_replicas(entry) if r.last_error]
                raise StartFailed(errors[0] if errors else f"model {entry.name} did not start")

    def release(self, rs: ReplicaState) -> None:
        rs.in_flight -= 1
        rs.last_used = time.monotonic()

    def _retry_after(self, entry: ModelEntry) -> int:
        started = [r.proc.started_at for r in self.model_replicas(entry) if r.proc and r.state == "starting"]
        if not started:
            return 5
        elapsed = time.monotonic() - min(started)
        return max(1, min(60, int(self.cfg.start_timeout - elapsed) if elapsed < 30 else 10))

    def suspect(self, rs: ReplicaState, why: str) -> asyncio.Future:
        """The data plane saw the engine fail (refused, broke off a stream): check it now. Meanwhile it is
        'checking' (no request is sent to it; a request for the model waits for the verdict). A problem, or a
        process that is gone, marks it stopped: the next request starts it again."""
        if rs.state == "checking" and rs.check_task:
            return rs.check_task
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        if rs.state != "ready":
            return done
        if rs.proc and rs.proc.exited():
            self._mark_dead(rs, why)
            return done
        rs.state = "checking"
        rs.check_task = asyncio.get_running_loop().create_task(self._confirm(rs, why))
        return rs.check_task

    async def _confirm(self, rs: ReplicaState, why: str) -> None:
        rs.checked_ranks_at = 0.0  # probe every rank now
        try:
            _, problem = await self.check(rs)
        except Exception as exc:  # noqa: BLE001 - a check that cannot run is no verdict of health
            problem = f"the check failed: {exc}"
        if rs.state != "checking":
            return
        if problem or (rs.proc and rs.proc.exited()):
            self._mark_dead(rs, f"{why}; then: {problem or 'its process exited'}")
        else:
            rs.state = "ready"
            log.info("%s: still serving after %s", rs.id, why)

    async def confirm_broken(self, rs: ReplicaState, why: str) -> bool:
        """Check a replica the data plane could not reach; True when it is not serving (marked stopped)."""
        await self.suspect(rs, why)
        return rs.state != "ready"

    # ---- starting and stopping -------------------------------------------------------------------------------
    def _ensure_start(self, rs: ReplicaState) -> asyncio.Task:
        """The replica's start task: the running one if any (never two starts at once), else a new one."""
        if rs.state == "ready":
            done = asyncio.get_running_loop().create_future()
            done.set_result(True)
            return asyncio.ensure_future(done)
        if rs.state == "checking" and rs.check_task:
            return rs.check_task  # the verdict first: ready again, or stopped (then a start)
        if rs.start_task is None or rs.start_task.done():
            rs.start_task = asyncio.get_running_loop().create_task(self._start(rs))
        return rs.start_task

    def _conflicts(self, rs: ReplicaState) -> list[ReplicaState]:
        nodes = set(rs.replica.nodes)
        out = []
        for other in self.replicas.values():
            if other.entry.name == rs.entry.name or other.state == "stopped":
                continue
            same_group = rs.entry.group and other.entry.group == rs.entry.group
            if same_group or nodes & set(other.replica.nodes):
                out.append(other)
        return out

    async def _start(self, rs: ReplicaState) -> bool:
        async with self.swap_lock:
            if self.closing:
                return False
            if rs.state == "ready":
                return True
            if not await self._launch(rs):
                return False
            # a cluster run holds the cluster lock while it starts: the next start waits for its ready line
            ok = await self._wait_healthy(rs) if rs.spec.recipe else None
        if ok is None:
            ok = await self._wait_healthy(rs)
        if not ok:
            if rs.state == "starting":
                self._hook("on_failure", rs.entry.name, "start")
                await self.stop(rs, "start failed", keep_error=True)
            return False
        rs.state, rs.ready_at, rs.last_used = "ready", time.monotonic(), time.monotonic()
        rs.checked_ranks_at = time.monotonic()
        rs.ready.set()
        self._hook("on_load", rs.entry.name)
        asyncio.get_running_loop().create_task(self._watch(rs, rs.generation))
        log.info("%s ready in %.1f s", rs.id, time.monotonic() - rs.proc.started_at)
        return True

    async def _launch(self, rs: ReplicaState) -> bool:
        """Under the swap lock: stop what holds the nodes, then start the child. False when it cannot start."""
        victims = self._conflicts(rs)
        for other in victims:
            await self.stop(other, f"swap for {rs.entry.name}")
        if victims:
            await self._settle()
        if rs.proc and rs.proc.alive:  # the previous run is still ending (its own stop after a rank died)
            await rs.proc.stop(self.cfg.stop_timeout)
        rs.state, rs.last_error, rs.health_fails = "starting", "", 0
        rs.ready.clear()
        rs.generation += 1
        rs.proc = launcher.EngineProcess(rs.spec, self.state_dir / "logs" / f"{rs.id.replace('/', '_')}.log")
        try:
            await rs.proc.start()
        except OSError as exc:
            rs.state, rs.last_error = "stopped", f"cannot start {rs.spec.argv[0]}: {exc.strerror}"
            self._hook("on_failure", rs.entry.name, "start")
            return False
        self._remember_children()
        log.info("starting %s (pid %d): %s", rs.id, rs.proc.pid, " ".join(rs.spec.argv))
        return True

    async def _wait_healthy(self, rs: ReplicaState) -> bool:
        """Ready: the child printed its ready line (a cluster run) and the health URL answers 200."""
        proc, deadline = rs.proc, time.monotonic() + self.cfg.start_timeout
        while time.monotonic() < deadline:
            if not proc.alive:
                tail = "".join(list(proc.lines)[-3:]).strip().replace("\n", " | ")[-300:]
                rs.last_error = f"engine for {rs.id} exited with code {proc.returncode} while starting: {tail}"
                return False
            if rs.state != "starting":
                return False
            said_ready = proc.saw_ready or not rs.spec.ready_marker
            if said_ready and (not rs.spec.health_url or await self._healthy(rs.spec.health_url)):
                return True
            await asyncio.sleep(0.25)
        rs.last_error = f"engine for {rs.id} not healthy after {self.cfg.start_timeout:g} s"
        return False

    async def _healthy(self, url: str) -> bool:
        try:
            async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=3)) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            return False

    async def _watch(self, rs: ReplicaState, generation: int) -> None:
        code = await rs.proc.wait_exit()
        if rs.generation == generation and rs.state in ("ready", "checking"):
            self._mark_dead(rs, f"engine for {rs.id} exited with code {code}")

    def _mark_dead(self, rs: ReplicaState, why: str) -> None:
        log.warning("%s", why)
        rs.state, rs.last_error = "stopped", why
        rs.ready.clear()
        self._hook("on_failure", rs.entry.name, "died")
        loop = asyncio.get_running_loop()
        loop.create_task(self._cleanup_dead(rs))

    async def _cleanup_dead(self, rs: ReplicaState) -> None:
        if rs.proc:
            async with self.swap_lock:  # a cluster run stops its other ranks under the cluster lock
                await rs.proc.stop(self.cfg.stop_timeout)  # a rank may still hold its group
        self._remember_children()
        if rs.entry.preload and not self.closing:
            self._ensure_start(rs)

    async def stop(self, rs: ReplicaState, reason: str, keep_error: bool = False) -> None:
        if rs.state == "stopped" and not (rs.proc and rs.proc.alive):
            return
        was = rs.state
        rs.state = "stopping"
        rs.ready.clear()
        if rs.proc:
            log.info("stopping %s (%s)", rs.id, reason)
            await rs.proc.stop(self.cfg.stop_timeout)
        rs.state = "stopped"
        if not keep_error:
            rs.last_error = ""
        if was == "ready" and reason != "shutdown":
            self._hook("on_evict", rs.entry.name, reason.split(" ")[0])
        self._remember_children()

    async def unload(self, model: str | None = None) -> list[str]:
        """Stop one model (or all); returns the replica ids stopped."""
        targets = [rs for rs in self.replicas.values() if rs.state != "stopped" and model in (None, rs.entry.name)]
        async with self.swap_lock:
            await asyncio.gather(*(self.stop(rs, "unload") for rs in targets))
        return [rs.id for rs in targets]

    async def _settle(self) -> None:
        """Wait (at most ``settle`` s) until this host's MemAvailable stops rising: memory freed by a stop."""
        if self.cfg.settle <= 0:
            return
        deadline, last = time.monotonic() + self.cfg.settle, launcher.mem_available_kib()
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            now = launcher.mem_available_kib()
            if abs(now - last) < 16 * 1024:
                return
            last = now

    def _remember_children(self) -> None:
        children = {rs.id: rs.proc.pid for rs in self.replicas.values() if rs.proc and rs.proc.alive}
        with contextlib.suppress(OSError):
            launcher.record_children(self.children_file, children)

    # ---- background loops ------------------------------------------------------------------------------------
    async def _idle_loop(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            for rs in list(self.replicas.values()):
                ttl = rs.entry.ttl
                if ttl and rs.state == "ready" and rs.in_flight == 0 and now - rs.last_used >= ttl:
                    async with self.swap_lock:
                        if rs.state == "ready" and rs.in_flight == 0 and time.monotonic() - rs.last_used >= ttl:
                            await self.stop(rs, "ttl expired")

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_EVERY_S)
            for rs in list(self.replicas.values()):
                if rs.state != "ready":
                    continue
                try:
                    fatal, problem = await self.check(rs)
                except Exception as exc:  # noqa: BLE001 - a check that cannot run counts as one failure
                    fatal, problem = False, f"the health check failed: {exc}"
                if rs.state != "ready":
                    continue
                if not problem:
                    rs.health_fails = 0
                    continue
                rs.health_fails += 1
                log.warning("%s: %s", rs.id, problem)
                if fatal or rs.health_fails >= HEALTH_FAILS:
                    self._mark_dead(rs, f"engine for {rs.id} is broken: {problem}")

    async def check(self, rs: ReplicaState) -> tuple[bool, str]:
        """(fatal, problem) of a ready replica; problem '' while it serves. Its health URL first; a recipe replica
        then by the multi-node rule (health.py): a rank not running is fatal at once, a failed 1-token request
        (only asked while no request is in flight: a busy engine answers the clients) counts towards HEALTH_FAILS."""
        if rs.spec.health_url and not await self._healthy(rs.spec.health_url):
            return False, f"{rs.spec.health_url} does not answer 200"
        if not rs.spec.recipe:
            return False, ""
        target = self._target(rs)
        if time.monotonic() - rs.checked_ranks_at >= RANKS_EVERY_S:
            rs.checked_ranks_at = time.monotonic()
            ranks = await asyncio.to_thread(health.rank_problems, target)
            if ranks:
                return True, "; ".join(ranks)
        if rs.in_flight == 0:
            return False, await asyncio.to_thread(health.request_problem, target)
        return False, ""

    def _target(self, rs: ReplicaState) -> health.Target:
        if not self._engine_key:
            self._engine_key = Path(self.key_file).read_text().strip()
        return health.Target(rs.spec.base_url, self._engine_key, rs.entry.upstream_model or rs.entry.name,
                             rs.replica.nodes if rs.spec.recipe else (), rs.entry.env.get("CLUSTER_NAME", ""))

    # ---- views -----------------------------------------------------------------------------------------------
    def running(self) -> list[dict]:
        """llama-swap's GET /running rows (plus our node set, replica and idle time)."""
        now = time.monotonic()
        rows = []
        for rs in self.replicas.values():
            if rs.state == "stopped":
                continue
            rows.append({"model": rs.entry.name, "state": rs.state, "cmd": " ".join(rs.spec.argv),
                         "proxy": rs.spec.base_url, "ttl": rs.entry.ttl, "name": rs.entry.name,
                         "description": rs.entry.description, "replica": rs.id, "nodes": list(rs.replica.nodes),
                         "in_flight": rs.in_flight, "idle_s": round(now - rs.last_used, 1) if rs.last_used else None,
                         "pid": rs.proc.pid if rs.proc else None})
        return rows
