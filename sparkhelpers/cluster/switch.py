"""Switch the served model (switch_model.sh, `sparkhelpers cluster switch`, the sweep): one function.

The model is resolved once, the layout checked against the nodes this cluster has, the model downloaded
and synced per the flags, the choice written to config.local.env, the cluster stopped and started with
it, and the start's own chat request is the smoke test. The caller holds the cluster lock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sparkhelpers.appkit import info, warn
from sparkhelpers.config import Config
from sparkhelpers.errors import SparkError, UsageError
from sparkhelpers.topology import Layout, layout_for, topology


@dataclass(frozen=True)
class SwitchRequest:
    choice: str
    download_only: bool = False
    skip_download: bool = False
    skip_restart: bool = False
    persist: bool = True  # write MODEL to config.local.env (the sweep passes the model as an override instead)
    recipe: str = ""  # serve this recipe instead (written as RECIPE=...)

    def check(self) -> None:
        if self.download_only and self.skip_download:
            raise UsageError("--download-only and --skip-download exclude each other",
                             fix="give one of them")
        if self.download_only and self.skip_restart:
            raise UsageError("--download-only never restarts; --skip-restart is redundant with it",
                             fix="drop --skip-restart")


@dataclass
class SwitchReport:
    name: str
    repo: str
    nodes: int
    steps: dict[str, float] = field(default_factory=dict)
    config_written: bool = False
    restarted: bool = False
    endpoint: str = ""
    answer: str = ""

    def as_dict(self) -> dict:
        return {"name": self.name, "repo": self.repo, "nodes": self.nodes, "config_written": self.config_written,
                "restarted": self.restarted, "endpoint": self.endpoint, "answer": self.answer,
                "steps_s": {k: round(v, 2) for k, v in self.steps.items()}}


def check_layout(spec, cfg: Config) -> Layout:  # noqa: ANN001
    """The layout rule (sparkhelpers.topology) on the nodes this cluster has; raises with the fix."""
    return layout_for(cfg, spec)


def fit_warning(spec) -> str:  # noqa: ANN001
    """A warning line when the estimate says the model does not fit ("" when it fits or is unknown)."""
    from sparkhelpers.models import fit

    try:
        result = fit.estimate(fit.FitInput(spec.name, spec.arch), tp=spec.tensor_parallel,
                              pp=spec.pipeline_parallel, max_model_len=spec.max_model_len,
                              gpu_memory_util=spec.gpu_memory_util)
    except SparkError:
        return ""
    return f"{spec.name} may not fit in memory: see 'sparkhelpers models fit {spec.name}'" \
        if result.fits is False else ""


def fetch(cfg: Config, spec, nodes: int, runner, say: Callable[[str], None]) -> None:  # noqa: ANN001
    """Download to the head's cache, then copy to the workers a multi-node model needs."""
    from sparkhelpers.models import sync
    from sparkhelpers.models.download import download

    try:
        download(cfg, spec, progress=False, echo=say)
    except SparkError as exc:
        raise SparkError(f"download of {spec.name} failed: {exc.message}",
                         fix=exc.fix or "run the same command again: it resumes") from None
    if nodes > 1:
        workers = sync.workers_from_config(cfg)[: nodes - 1]
        sync.ensure_on_nodes(runner, spec, workers, head_cache=cfg.require("HF_CACHE"), echo=say,
                             head=topology(cfg).head.host)


def switch(cfg: Config, req: SwitchRequest, *, runner=None, say: Callable[[str], None] = info,  # noqa: ANN001
           start: Callable | None = None, stop: Callable | None = None) -> SwitchReport:
    """Resolve, check, fetch, write, stop, start (whose chat request is the smoke test)."""
    from sparkhelpers.cluster import control
    from sparkhelpers.models.catalog import resolve_model
    from sparkhelpers.runner import Runner

    req.check()
    runner = runner or Runner()
    start, stop = start or control.start_cluster, stop or control.stop_cluster
    if req.recipe:
        from sparkhelpers.recipes.apply import load_for_start

        cfg, spec = load_for_start(cfg, req.recipe)
    else:
        from sparkhelpers.recipes.apply import check_extra_args

        spec = resolve_model(cfg, req.choice)
        check_extra_args(cfg)  # the start would refuse it, after the stop below: refuse it before anything
    layout = check_layout(spec, cfg)
    report = SwitchReport(spec.name, spec.repo, layout.nodes)
    if note := fit_warning(spec):
        warn(note)

    def step(name: str, func: Callable[[], object]) -> object:
        t0 = time.monotonic()
        result = func()
        report.steps[name] = time.monotonic() - t0
        return result

    if not req.skip_download:
        step("fetch", lambda: fetch(cfg, spec, layout.nodes, runner, say))
    if req.download_only:
        return report
    if req.persist:
        _persist(cfg, req, spec)
        report.config_written = True
        if cfg.source("MODEL") == "environment":
            warn(f"MODEL is set in the environment ({cfg.get('MODEL')}); it wins over config.local.env for "
                 f"later commands: unset MODEL")
    if req.skip_restart:
        return report
    serving = cfg if req.recipe else cfg.with_overrides(MODEL=spec.name)
    say(f"restarting the cluster with {spec.name}")
    failed = control.stop_failures(step("stop", lambda: stop(serving, runner)))
    if failed:
        raise SparkError(f"could not stop the cluster on {', '.join(failed)}; {_saved(report)}",
                         fix="bring the node back, then: ./stop_cluster.sh && ./start_cluster.sh")
    try:
        outcome = step("start", lambda: start(serving, runner=runner, say=say, spec=spec))
    except SparkError as exc:
        exc.message = f"the start failed: {exc.message}; {_saved(report)}"
        raise
    report.restarted = True
    report.endpoint = getattr(outcome.plan, "endpoint", "")
    report.answer = getattr(outcome.report, "answer", "")
    return report


def _persist(cfg: Config, req: SwitchRequest, spec) -> None:  # noqa: ANN001
    """MODEL=... for a model; RECIPE=... (an absolute path for a file) for a recipe, which then wins over MODEL."""
    from pathlib import Path

    from sparkhelpers.config import set_local, unset_local
    from sparkhelpers.recipes.loader import looks_like_path

    if req.recipe:
        set_local("RECIPE", str(Path(req.recipe).resolve()) if looks_like_path(req.recipe) else req.recipe)
    else:
        set_local("MODEL", spec.name)
        if cfg.get("RECIPE"):
            unset_local("RECIPE")  # a model switch serves the model, not an earlier recipe


def _saved(report: SwitchReport) -> str:
    return f"MODEL={report.name} is saved" if report.config_written else "config.local.env is unchanged"
