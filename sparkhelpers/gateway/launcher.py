"""Starting one replica of a model as a child process, and the child while it runs.

The launcher interface is small on purpose: a LaunchSpec (argv, environment, where the engine answers) per
replica, built by a pure function, and an EngineProcess that starts it in its own process group, keeps its
output (for ``/logs/stream``), polls its health URL and stops the whole group. A recipe replica runs
``sparkhelpers cluster run --recipe NAME --nodes A,B`` (the recipes' foreground mode); a ``cmd`` replica runs
the given command (llama-swap's ``cmd``). Secrets never travel in argv: the engine's API key is a file path.

The gateway runs its children itself rather than through ``sparkhelpers.runner``: it needs asyncio pipes that
stream while the child lives, which the runner's blocking calls do not offer.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from sparkhelpers.gateway.models_file import GatewayConfig, ModelEntry, Replica

MARKER = "SPARKHELPERS_GATEWAY_ENGINE"  # in every child's environment: how we recognise our orphans
READY_MARKER = " is ready: "  # `cluster run` prints "cluster NAME is ready: URL ..." once start, health and chat pass


@dataclass
class LaunchSpec:
    argv: list[str]
    env: dict[str, str]
    base_url: str
    health_url: str
    ready_marker: str = ""  # a line the child prints once it serves (the foreground mode's ready line)
    recipe: bool = False  # a cluster run: one start at a time (the cluster lock), ranks checked on every node


def launch_spec(cfg: GatewayConfig, entry: ModelEntry, replica: Replica, key_file: str) -> LaunchSpec:
    """The command, environment and URLs of one replica (pure: --dry-run prints it)."""
    host = cfg.address(replica.nodes[0])
    base = f"http://{host}:{replica.port}"
    env = {**entry.env, "PORT": str(replica.port), "API_KEY_FILE": key_file, MARKER: replica.id}
    if entry.recipe:
        nodes = ["head" if n in ("local", "localhost") else n for n in replica.nodes]  # cluster run's names
        argv = [sys.executable, "-m", "sparkhelpers", "cluster", "run", "--recipe", entry.recipe,
                "--nodes", ",".join(nodes)]
        env["VLLM_PORT"] = str(replica.port)
    else:
        subs = {"${PORT}": str(replica.port), "${MODEL_ID}": entry.name, "${API_KEY_FILE}": key_file}
        argv = []
        for arg in entry.cmd:
            for k, v in subs.items():
                arg = arg.replace(k, v)
            argv.append(arg)
    health = "" if entry.health == "none" else base + entry.health
    if entry.recipe:
        return LaunchSpec(argv, env, base, health, READY_MARKER, recipe=True)
    return LaunchSpec(argv, env, base, health)


def load_recipe(entry: ModelEntry, spark_cfg):  # noqa: ANN001, ANN201 - Config -> recipes.schema.Recipe
    """The recipe a model entry names, resolved for its first node set; a bad one is a models-file error."""
    from sparkhelpers.errors import SparkError, UsageError
    from sparkhelpers.recipes.loader import load

    try:
        return load(entry.recipe, nodes=len(entry.placement[0]), recipe_path=spark_cfg.get("RECIPE_PATH"),
                    default_image=spark_cfg.get("VLLM_IMAGE"), catalog_file=spark_cfg.get("MODEL_CATALOG"))
    except SparkError as exc:
        raise UsageError(f"models file models.{entry.name}.recipe: {exc.message}", fix=exc.fix) from None


def tuned_recipe(entry: ModelEntry, spark_cfg) -> str:  # noqa: ANN001 - sparkhelpers.config.Config
    """The winner's recipe file of the tuned model ``tuned: MODEL|ID`` names (sparkhelpers.tune.store). The
    path stays while a re-tune that wins rewrites the file, so the next start serves the new winner."""
    from sparkhelpers.errors import SparkError, UsageError
    from sparkhelpers.tune import store

    try:
        return store.winner(spark_cfg, entry.tuned)["recipe_file"]
    except SparkError as exc:
        raise UsageError(f"models file models.{entry.name}.tuned: {exc.message}", fix=exc.fix) from None


def served_names(cfg: GatewayConfig, spark_cfg) -> None:  # noqa: ANN001 - sparkhelpers.config.Config
    """A recipe model's upstream name is the name its engine serves (the recipe's served_model_name): the
    gateway renames the request's model to it. A recipe that does not load is refused now, not at first use.
    A tuned model is served with its winner's recipe."""
    for entry in cfg.models.values():
        if entry.tuned and not entry.recipe:
            entry.recipe = tuned_recipe(entry, spark_cfg)
        if entry.recipe and not entry.upstream_model:
            entry.upstream_model = load_recipe(entry, spark_cfg).served_name


@dataclass
class EngineProcess:
    """One running child: its process group, output ring buffer and subscribers, exit code."""

    spec: LaunchSpec
    log_path: Path
    proc: asyncio.subprocess.Process | None = None
    lines: collections.deque = field(default_factory=lambda: collections.deque(maxlen=2000))
    subscribers: set = field(default_factory=set)
    started_at: float = 0.0
    saw_ready: bool = False  # the spec's ready_marker appeared in the output
    _reader: asyncio.Task | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def exited(self) -> bool:
        """Gone or a zombie: sooner than asyncio's child watcher sets the return code."""
        if not self.alive:
            return True
        try:
            return Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
        except (OSError, IndexError):
            return True

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode if self.proc else None

    async def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.started_at = time.monotonic()
        self.proc = await asyncio.create_subprocess_exec(
            *self.spec.argv, env={**os.environ, **self.spec.env}, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        self._reader = asyncio.get_running_loop().create_task(self._read_output())

    async def _read_output(self) -> None:
        assert self.proc and self.proc.stdout
        with open(self.log_path, "ab") as log:
            while line := await self.proc.stdout.readline():
                log.write(line)
                log.flush()
                text = line.decode(errors="replace")
                self.lines.append(text)
                if self.spec.ready_marker and self.spec.ready_marker in text:
                    self.saw_ready = True
                for queue in list(self.subscribers):
                    with contextlib.suppress(asyncio.QueueFull):
                        queue.put_nowait(text)
        for queue in list(self.subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)

    async def wait_exit(self) -> int:
        assert self.proc
        code = await self.proc.wait()
        if self._reader:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._reader), 2)
        return code

    async def stop(self, grace_s: float) -> int | None:
        """SIGTERM the group, SIGKILL it after ``grace_s``; returns the exit code."""
        if not self.proc:
            return None
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            if not _group_alive(self.proc.pid):
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline and _group_alive(self.proc.pid):
                await asyncio.sleep(0.05)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.proc.wait(), 5)
        return self.proc.returncode

    def rss_bytes(self) -> int:
        """Resident memory of the whole process group (local children only)."""
        return group_rss(self.proc.pid) if self.alive else 0


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def group_rss(pgid: int) -> int:
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:  # fields after the name: state ppid pgrp ...
                total += int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    return total


def record_children(path: Path, children: dict[str, int]) -> None:
    """Remember our children's process groups, so a gateway killed with SIGKILL cleans them up next start."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(children))
    os.replace(tmp, path)


def reap_orphans(path: Path) -> list[str]:
    """End the process groups a previous gateway left behind: only those whose leader still carries our marker."""
    try:
        children = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    ended = []
    for replica_id, pgid in children.items():
        try:
            environ = Path(f"/proc/{int(pgid)}/environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if f"{MARKER}={replica_id}".encode() not in environ:
            continue
        with contextlib.suppress(ProcessLookupError):
            os.killpg(int(pgid), signal.SIGKILL)
            ended.append(replica_id)
    with contextlib.suppress(OSError):
        path.unlink()
    return ended


def mem_available_kib() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0
