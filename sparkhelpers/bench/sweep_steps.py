"""The sweep's real steps and its whole flow: switch, start and stop in-process (cluster.switch and
cluster.control) with each variant applied as config overrides, under one cluster lock.

``ClusterOps`` is the seam: the real one starts and stops the cluster; tests/fixtures/sweep/engine_sweep.py
passes one that serves the real tiny engine on loopback, so the rest of the flow runs for real.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from sparkhelpers import secrets
from sparkhelpers.bench import sweep
from sparkhelpers.bench.sweep import BENCH_FAILED, START_FAILED, SUCCESS, TIMEOUT, StepResult, SweepCell
from sparkhelpers.config import Config
from sparkhelpers.errors import SparkError, UsageError


class ClusterOps(Protocol):
    def start(self, cfg: Config, *, runner, say, spec=None, replace: bool = False): ...  # noqa: ANN001, ANN201

    def stop(self, cfg: Config, runner=None) -> list: ...  # noqa: ANN001


class RealOps:
    """The cluster itself (cluster/control.py)."""

    def start(self, cfg: Config, *, runner, say, spec=None, replace: bool = False):  # noqa: ANN001, ANN201
        from sparkhelpers.cluster import control

        return control.start_cluster(cfg, runner=runner, say=say, spec=spec, replace=replace)

    def stop(self, cfg: Config, runner=None) -> list:  # noqa: ANN001
        from sparkhelpers.cluster import control

        return control.stop_cluster(cfg, runner, quiet=True)


def recipe_start(cfg: Config, ref: str):  # noqa: ANN201
    """(config, spec) a recipe cell starts with (sparkhelpers.recipes.apply, RECIPE_PATH honoured)."""
    from sparkhelpers.recipes.apply import load_for_start

    return load_for_start(cfg, ref)


def configured_start(cfg: Config):  # noqa: ANN201
    """(config, spec or None) of the configured cluster: its RECIPE when set, else MODEL (spec None)."""
    return recipe_start(cfg, cfg.get("RECIPE")) if cfg.get("RECIPE") else (cfg, None)


def recipe_id_of(spec) -> str:  # noqa: ANN001
    from sparkhelpers.recipes.identity import recipe_id

    return recipe_id(spec.recipe)


def served_models(cfg: Config, api_key: str) -> list[str]:
    from sparkhelpers.bench.current import configured_url
    from sparkhelpers.bench.run import fetch_models

    try:
        return list(asyncio.run(fetch_models(configured_url(cfg), api_key, timeout_s=5)))
    except SparkError:
        return []


class InProcessSteps:
    """switch/bench/restore/stop for run_sweep: the model and the variant's keys are config overrides on
    ``cfg`` (config.local.env is never written during a sweep), the benchmark runs in-process."""

    def __init__(self, cfg: Config, *, log: Callable[[str], None], api_key: str = "", download: bool = False,
                 skip_gated: bool = False, ops: ClusterOps | None = None, runner=None) -> None:  # noqa: ANN001
        from sparkhelpers.config import results_dir
        from sparkhelpers.runner import Runner

        self.base = results_dir(cfg)
        self.cfg, self.log, self.api_key, self.download = cfg, log, api_key, download
        self.skip_gated, self.ops, self.runner = skip_gated, ops or RealOps(), runner or Runner()

    def serving(self, cfg: Config | None = None) -> list[str]:
        return served_models(cfg or self.cfg, self.api_key)

    def skip_reason(self, cell: SweepCell) -> str:
        from sparkhelpers.models.catalog import resolve_model

        if cell.recipe:
            return self.recipe_skip_reason(cell)
        try:
            spec = resolve_model(self.cfg, cell.model)
        except SparkError as exc:
            return f"unknown model: {exc.message}"
        return self.gated_reason(spec.gated)

    def gated_reason(self, gated: bool) -> str:
        if gated and self.skip_gated:
            return "gated model (--skip-token)"
        if gated:
            try:
                if not secrets.read(self.cfg, "HF_TOKEN"):
                    return "gated model and no Hugging Face token (HF_TOKEN_FILE, HF_TOKEN or hf auth login)"
            except SparkError as exc:
                return exc.message
        return ""

    def recipe_skip_reason(self, cell: SweepCell) -> str:
        """A recipe that does not load, changed since the plan, or needs more nodes than this cluster has."""
        from sparkhelpers.topology import layout_for

        try:
            cfg, spec = recipe_start(self.cfg, cell.recipe)
            layout_for(cfg, spec)
        except SparkError as exc:
            return exc.message
        now = recipe_id_of(spec)
        if now != cell.recipe_id:
            return f"recipe {cell.recipe} changed since the sweep was planned (id {cell.recipe_id}, now {now})"
        return self.gated_reason(bool(spec.recipe.metadata.get("gated")))

    def variant_cfg(self, cell: SweepCell, overrides: dict[str, str]) -> Config:
        """The configuration a cell runs with: the recipe's, or MODEL and the variant as overrides."""
        if cell.recipe:
            return recipe_start(self.cfg, cell.recipe)[0]
        return self.cfg.with_overrides(**overrides, MODEL=cell.model)

    def switch(self, cell: SweepCell, overrides: dict[str, str]) -> StepResult:
        from sparkhelpers.cluster import switch as sw

        cfg = self.variant_cfg(cell, overrides)
        req = sw.SwitchRequest(cell.recipe or cell.model, skip_download=not self.download, persist=False,
                               recipe=cell.recipe)
        try:
            sw.switch(self.cfg if cell.recipe else cfg, req, runner=self.runner,
                      say=lambda m: self.log(f"  switch: {m}"), start=self.ops.start, stop=self.ops.stop)
        except SparkError as exc:
            return StepResult(START_FAILED, exc.message[:300])
        if not self.serving(cfg):
            return StepResult(START_FAILED, "the switch succeeded but the API does not answer /v1/models")
        return StepResult(SUCCESS)

    def bench(self, cell: SweepCell, overrides: dict[str, str], out_dir: Path, timeout_s: float) -> StepResult:
        from sparkhelpers.bench import current, profiles
        from sparkhelpers.recipes.apply import running_recipe_id

        cfg = self.variant_cfg(cell, overrides)
        base_url = current.configured_url(cfg)
        if cell.recipe and running_recipe_id(cfg) != cell.recipe_id:  # every result names what served it
            return StepResult(BENCH_FAILED, f"the cluster serves {running_recipe_id(cfg) or 'no known recipe'}, "
                                            f"not recipe {cell.recipe} ({cell.recipe_id})")
        extra = {"sweep_model": cell.model, **({"sweep_recipe": cell.recipe} if cell.recipe else {})}
        try:
            sweep.check_no_symlinks(out_dir, self.base)
            prof = profiles.get(cell.profile, cfg.get("BENCH_PROFILES_FILE"))
            model = current.resolve_model(base_url, self.api_key, cfg)
            outcomes, timed_out = current.run_profile(cfg, prof, base_url=base_url, model=model, out_dir=out_dir,
                                                      variant=cell.variant, api_key=self.api_key,
                                                      timeout_s=timeout_s, echo=self.log, target_extra=extra)
        except SparkError as exc:
            return StepResult(BENCH_FAILED, exc.message)
        folder = str(outcomes[0].path.parent) if outcomes and outcomes[0].path else ""
        if timed_out:
            return StepResult(TIMEOUT, f"BENCH_TIMEOUT ({timeout_s:g} s) ran out after {len(outcomes)} run(s)", folder)
        bad = current.failures(outcomes)
        if bad:
            return StepResult(BENCH_FAILED, f"{len(bad)} of {len(outcomes)} runs failed: {bad[0]}", folder)
        return StepResult(SUCCESS, f"{len(outcomes)} run(s)", folder)

    def restore(self, pre: dict) -> StepResult:
        """The recorded config bytes back, then the configured cluster started again, or stopped if nothing
        was serving before the sweep."""
        from sparkhelpers.config import load_config

        if pre and sweep.put_back_config(pre):
            self.log(f"put back {pre['config_path']} as it was before the sweep")
        if pre and not pre.get("serving"):
            return self.stop()
        try:
            cfg, spec = configured_start(load_config())  # RECIPE=... when one is configured, else MODEL
            self.ops.start(cfg, runner=self.runner, say=lambda m: self.log(f"  start: {m}"), spec=spec,
                           replace=True)
        except SparkError as exc:
            return StepResult(START_FAILED, exc.message[:300])
        return StepResult(SUCCESS)

    def stop(self) -> StepResult:
        try:
            failed = [r.node for r in self.ops.stop(self.cfg, self.runner) or [] if not r.ok]
        except SparkError as exc:
            return StepResult(START_FAILED, exc.message[:300])
        return StepResult(START_FAILED, f"could not stop {', '.join(failed)}") if failed else StepResult(SUCCESS)


@dataclass
class SweepOptions:
    models: list[str] = field(default_factory=list)
    recipes: list[str] = field(default_factory=list)  # recipe references: each served as written, no variants
    profiles: list[str] = field(default_factory=list)
    variants: list[str] = field(default_factory=lambda: ["baseline"])
    name: str = ""
    resume: bool = False
    download: bool = False
    single_node: bool = False
    multi_node: bool = False
    skip_token: bool = False


@dataclass
class SweepRun:
    directory: Path
    state: sweep.SweepState | None = None
    ok: bool = False
    dry_run_lines: list[str] = field(default_factory=list)


def select_models(cfg: Config, opts: SweepOptions) -> list[str]:
    """--models (names or list numbers), else MODEL; with --single-node/--multi-node and no --models, every
    catalog preset of that kind; the node filter applies to --models too."""
    from sparkhelpers.models.catalog import catalog_for, resolve_model

    if opts.single_node and opts.multi_node:
        raise UsageError("--single-node and --multi-node exclude each other", fix="give one, or neither for both")
    if opts.recipes and not opts.models:
        return []
    wanted = opts.models or (list(catalog_for(cfg)) if opts.single_node or opts.multi_node
                             else [cfg.require("MODEL")])
    if not (opts.single_node or opts.multi_node):
        return [resolve_model(cfg, m).name if m.isdigit() else m for m in wanted]
    out = []
    for m in wanted:
        spec = resolve_model(cfg, m)
        if (spec.nodes == 1) == opts.single_node:
            out.append(spec.name)
    if not out:
        raise UsageError(f"no {'single' if opts.single_node else 'multi'}-node model among {', '.join(wanted)}",
                         fix="sparkhelpers models list shows each preset's nodes")
    return out


def prepare(cfg: Config, opts: SweepOptions) -> tuple[SweepRun, list[SweepCell], dict]:
    """Resolve the directory and the plan (loading it on --resume); nothing is changed yet."""
    from sparkhelpers.bench import profiles as prof_mod
    from sparkhelpers.config import results_dir

    all_profiles, all_variants = prof_mod.load(cfg.get("BENCH_PROFILES_FILE"))
    base = results_dir(cfg)
    root = base / "sweeps"
    if opts.name:
        sweep.plain_name(opts.name)
    if opts.resume:
        directory = root / opts.name if opts.name else sweep.latest_sweep_dir(root)
        if directory is None or not (directory / sweep.STATE_FILE).is_file():
            raise SparkError(f"no sweep to resume under {root}", fix="start one without --resume")
        sweep.check_no_symlinks(directory / sweep.STATE_FILE, base)
        run = SweepRun(directory, sweep.SweepState.load(directory / sweep.STATE_FILE))
        return run, run.state.cells, all_variants
    profile_list = opts.profiles or [cfg.get("BENCH_PROFILE", "default")]
    variant_list = opts.variants or ["baseline"]
    unknown = [p for p in profile_list if p not in all_profiles] + [v for v in variant_list if v not in all_variants]
    if unknown:
        raise UsageError(f"unknown profile or variant: {', '.join(unknown)}",
                         fix=f"profiles: {', '.join(all_profiles)}; variants: {', '.join(all_variants)}")
    directory = root / (opts.name or time.strftime("%Y%m%d-%H%M%S"))
    sweep.check_no_symlinks(directory, base)
    if (directory / sweep.STATE_FILE).exists():
        raise SparkError(f"sweep {directory.name} already exists", fix="add --resume, or choose another --name")
    cells = sweep.plan_cells(select_models(cfg, opts), variant_list, profile_list)
    return SweepRun(directory), cells + sweep.plan_recipe_cells(plan_recipes(cfg, opts), profile_list), all_variants


def plan_recipes(cfg: Config, opts: SweepOptions) -> list[tuple[str, str, str, str]]:
    """(reference, name, model, id) of every --recipes entry, each loaded now (a bad one refuses the whole
    sweep before anything changes); --single-node/--multi-node filter them by node count."""
    if not opts.recipes:
        return []
    if not opts.models and opts.variants not in ([], ["baseline"]):
        raise UsageError("--variants change config keys, and a recipe fixes every served value",
                         fix="make one recipe per variant (include: the base recipe, change engine_args) and "
                             "list them all in --recipes")
    planned, names = [], {}
    for ref in opts.recipes:
        spec = recipe_start(cfg, ref)[1]
        r = spec.recipe
        if r.name in names:
            raise UsageError(f"--recipes {names[r.name]} and {ref} are both named {r.name}",
                             fix="give each recipe its own name (the matrix has one row per recipe name)")
        names[r.name] = ref
        if (opts.single_node or opts.multi_node) and (r.nodes == 1) != opts.single_node:
            continue
        planned.append((ref, r.name, r.repo, recipe_id_of(spec)))
    if not planned:
        raise UsageError(f"no {'single' if opts.single_node else 'multi'}-node recipe among "
                         f"{', '.join(opts.recipes)}", fix="drop --single-node/--multi-node, or list other recipes")
    return planned


def dry_run_lines(cells: list[SweepCell], variants: dict, opts: SweepOptions, directory: Path,
                  cfg: Config | None = None) -> list[str]:
    lines, shown = [], set()
    for c in cells:
        if c.recipe:
            lines += recipe_dry_run(cfg, c, first=c.recipe not in shown, download=opts.download)
            shown.add(c.recipe)
            continue
        keys = " ".join(f"{k}={v}" for k, v in variants.get(c.variant, {}).items())
        lines.append(f"{c.key}: switch {'' if opts.download else '--skip-download '}{c.model}"
                     f"{' with ' + keys if keys else ''}; bench current --profile {c.profile} --variant {c.variant}")
    lines.append(f"then: back to the pre-sweep config and running state (start --replace, or stop); results in "
                 f"{directory}")
    return lines


def recipe_dry_run(cfg: Config, cell: SweepCell, *, first: bool, download: bool) -> list[str]:
    """A recipe cell's plan line; the first cell of a recipe also shows its id, layout and serve command
    (pure: sparkhelpers.recipes.render and the layout rule; no host is asked anything)."""
    from sparkhelpers.recipes.render import serve_argv
    from sparkhelpers.runner import shell_quote
    from sparkhelpers.topology import layout_for

    line = (f"{cell.key}: switch {'' if download else '--skip-download '}--recipe {cell.recipe}; "
            f"bench current --profile {cell.profile}")
    if not first:
        return [line]
    rcfg, spec = recipe_start(cfg, cell.recipe)
    r = spec.recipe
    try:
        lay = layout_for(rcfg, spec)
        where = f"{lay.nodes} node(s), TP {lay.tensor_parallel} x PP {lay.pipeline_parallel}, launch {r.launch}"
    except SparkError as exc:
        where = f"would be SKIPPED: {exc.message}"
    return [f"recipe {cell.recipe}: id {cell.recipe_id} ({r.source}); {where}",
            "  serve: " + " ".join(shell_quote(a) for a in serve_argv(r)), line]


def execute(cfg: Config, opts: SweepOptions, *, dry_run: bool = False, confirm: Callable[[int], bool] | None = None,
            ops: ClusterOps | None = None, api_key: str = "") -> SweepRun:
    """The whole sweep: plan, confirm, then under one lock: recover a killed sweep, record the pre-sweep
    state, run the cells, put the cluster back, render matrix.md and report.html."""
    from sparkhelpers.config import local_file, results_dir
    from sparkhelpers.locking import cluster_lock

    run, cells, variants = prepare(cfg, opts)
    if dry_run:
        run.dry_run_lines = dry_run_lines(cells, variants, opts, run.directory, cfg)
        return run
    if confirm is not None and not confirm(len(cells)):
        return run
    with cluster_lock(cfg, what="benchmark_all.sh"):
        log = sweep.open_log(run.directory)
        steps = InProcessSteps(cfg, log=log, api_key=api_key, download=opts.download, skip_gated=opts.skip_token,
                               ops=ops)
        for old in sweep.unrestored(results_dir(cfg) / "sweeps", exclude=run.directory):
            log(f"sweep {old.path.parent.name} ended before it put the cluster back: restoring its pre-sweep state")
            sweep.leave_known_state(old, steps, log)
        if run.state is None:
            run.state = sweep.SweepState.new(run.directory, cells, sweep.record_pre(local_file(), steps.serving()))
        elif not run.state.pre:
            run.state.pre = sweep.record_pre(local_file(), steps.serving())
            run.state.save()
        log(f"sweep {run.directory.name}: {len(run.state.cells)} cell(s){' (resumed)' if opts.resume else ''}")
        try:
            run.ok = sweep.run_sweep(run.state, steps, variants, resume=opts.resume,
                                     timeout_s=cfg.get_float("BENCH_TIMEOUT", 3600.0), log=log)
        except sweep.Interrupted as exc:
            raise SparkError(f"sweep interrupted by {exc}; the cluster was put back in its configured state",
                             fix=f"benchmark_all.sh --yes --resume --name {run.directory.name}") from None
        render_reports(run.directory, results_dir(cfg), log)
    return run


def render_reports(directory: Path, base: Path, log: Callable[[str], None]) -> None:
    """matrix.md and report.html of the sweep's results, beside its state file (never through a link)."""
    from sparkhelpers.bench import ingest, matrix, report

    results_path = directory / "results"
    sweep.check_no_symlinks(results_path, base)
    found = ingest.load_dir(results_path) if results_path.is_dir() else []
    if not found:
        log("no results to render")
        return
    m = matrix.build([d for _, d in found], baseline="baseline")
    sweep.write_text_nofollow(directory / "matrix.md", matrix.to_markdown(m))
    sweep.write_text_nofollow(directory / "report.html", report.to_html(m, title=f"Sweep {directory.name}",
                                                                        source=str(directory)))
    log(f"wrote {directory / 'matrix.md'} and {directory / 'report.html'}")
