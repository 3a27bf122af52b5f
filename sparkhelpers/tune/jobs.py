"""Tuning jobs: plan (everything checked, nothing run), execute (under the cluster lock, the cluster put back
afterwards), and the small API the CLI and the gateway's tuned-model API call: ``submit``, ``retune``,
``get``, ``list_tuned``, ``job``, ``delete``.

The tuned model's id is the base recipe's id (model@runtime@hash, sparkhelpers.recipes identity): the
same request gives the same id, and submitting it again returns the stored job instead of a new run.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from sparkhelpers.config import Config
from sparkhelpers.errors import SparkError, UsageError
from sparkhelpers.recipes.schema import Recipe
from sparkhelpers.tune import candidates as cd
from sparkhelpers.tune import decide as dc
from sparkhelpers.tune import levers as lv
from sparkhelpers.tune import store
from sparkhelpers.tune.objective import Guard, Objective, parse_guard, parse_objective
from sparkhelpers.tune.runs import Workload
from sparkhelpers.tune.store import NotFound  # noqa: F401 - part of the API

DEFAULT_OBJECTIVE = "output_tps@c16:1024/128"
DEFAULT_GUARD = "tpot@c1<=+5%"


class Busy(SparkError):
    """Another tune (or cluster command) holds the cluster."""


class Conflict(SparkError):
    """The id exists with another objective or guard (re-tune it instead)."""


@dataclass(frozen=True)
class TuneRequest:
    target: str
    objective: str = DEFAULT_OBJECTIVE
    guard: str = DEFAULT_GUARD
    profile: str = ""
    budget: int = 0
    oracle: bool = False
    grid: bool = False
    repeats: int = 3
    nodes: int | None = None
    levers: tuple[str, ...] = ()  # NAME or NAME=v1,v2 (all levers when empty)
    candidates: tuple[str, ...] = ()  # hand-written candidate recipe files

    @classmethod
    def from_dict(cls, data: dict) -> TuneRequest:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"unknown field {unknown[0]} in the tuning request",
                             fix=f"fields: {', '.join(sorted(known))}")
        if not isinstance(data.get("target"), str) or not data["target"]:
            raise UsageError("the tuning request needs a target (model, preset or recipe)",
                             fix='e.g. {"target": "qwen3-0.6b"}')
        out = dict(data)
        for key in ("levers", "candidates"):
            out[key] = tuple(out.get(key) or ())
        return cls(**out)

    def as_dict(self) -> dict:
        return asdict(self)

    def cli_args(self) -> list[str]:
        args = [self.target, "--objective", self.objective, "--guard", self.guard or "none",
                "--repeats", str(self.repeats), "--budget", str(self.budget)]
        args += ["--profile", self.profile] if self.profile else []
        args += ["--nodes", str(self.nodes)] if self.nodes else []
        args += ["--oracle"] if self.oracle else []
        args += ["--grid"] if self.grid else []
        for lever in self.levers:
            args += ["--lever", lever]
        for path in self.candidates:
            args += ["--candidate", path]
        return args


@dataclass
class Plan:
    request: TuneRequest
    objective: Objective
    guard: Guard | None
    base: Recipe
    tuned_id: str
    workload: Workload
    levers: list[lv.Lever]
    control: cd.Candidate
    extra: list[cd.Candidate] = field(default_factory=list)
    skipped_levers: list[dict] = field(default_factory=list)

    def make(self, changes: dict[str, Any], origin: str) -> cd.Candidate:
        return cd.build(self.base, changes, origin, self.objective.point)


def _workload(cfg: Config, req: TuneRequest) -> tuple[Workload, tuple[int, int] | None]:
    if not req.profile:
        return Workload(repeats=req.repeats), None
    from sparkhelpers.bench import profiles

    p = profiles.get(req.profile, cfg.get("BENCH_PROFILES_FILE"))
    cell = p.cells[0]
    return Workload(repeats=max(req.repeats, p.repeats), prompts_per_concurrency=p.prompts_per_concurrency,
                    min_prompts=p.min_prompts, warmups=p.warmups), (cell.input_len, cell.output_len)


def prepare(cfg: Config, req: TuneRequest, incumbent: dict | None = None) -> Plan:
    """Everything checked before any run: objective, guard, the base recipe, the levers, the candidates."""
    from sparkhelpers.recipes import flags as fl
    from sparkhelpers.recipes.identity import recipe_id

    if req.budget < 0:
        raise UsageError(f"--budget {req.budget} is negative", fix="--budget 0 (no cap) or a number of runs")
    workload, cell = _workload(cfg, req)
    objective = parse_objective(req.objective, cell)
    guard = parse_guard(req.guard, objective)
    base = cd.resolve_base(req.target, nodes=req.nodes, recipe_path=cfg.get("RECIPE_PATH"),
                           default_image=cfg.get("VLLM_IMAGE"), catalog_file=cfg.get("MODEL_CATALOG"))
    flagset = fl.flag_set(base.runtime, base.engine_version or None)
    levers, skipped = [], []
    for lever in lv.select(lv.levers_for(base.runtime, objective.point), list(req.levers)):
        if flagset.get(lever.key) is None:
            skipped.append({"lever": lever.name, "reason": f"{base.runtime} {flagset.version} has no flag "
                                                            f"--{lever.key.replace('_', '-')}"})
        else:
            levers.append(lever)
    control = cd.build(base, dict(incumbent or {}), "incumbent" if incumbent else "control", objective.point,
                       name="control")
    if control.recipe is None:
        raise SparkError(f"the incumbent no longer loads: {control.refused}",
                         fix="delete the tuned model and tune anew")
    extra = [user_candidate(path, base, objective) for path in req.candidates]
    return Plan(req, objective, guard, base, recipe_id(base), workload, levers, control, extra, skipped)


def user_candidate(path: str, base: Recipe, objective: Objective) -> cd.Candidate:
    """A hand-written variant (a recipe file) of the same model and runtime, run as it is."""
    from sparkhelpers.recipes.identity import recipe_id
    from sparkhelpers.recipes.loader import load

    try:
        r = load(path, nodes=base.nodes)
    except SparkError as exc:
        return cd.Candidate(f"file:{path}", {}, "user", refused=exc.message)
    changes = {k: v for k, v in r.engine_args.items() if base.engine_args.get(k) != v}
    changes.update({k: None for k in base.engine_args if k not in r.engine_args})
    cand = cd.Candidate(f"file:{r.name}", changes, "user", r, recipe_id(r), why=f"from {path}")
    if (r.model, r.runtime) != (base.model, base.runtime):
        cand.refused = f"serves {r.model} ({r.runtime}), not the tuned {base.model} ({base.runtime})"
        return cand
    cand.fit = cd.fit_check(r, objective.point)
    if cand.fit.get("fits") is False:
        cand.refused = f"does not fit in memory: {cand.fit['why']}"
    return cand


# ---- the API ------------------------------------------------------------------------------------------

def tuned_id(cfg: Config, req: TuneRequest) -> str:
    return prepare(cfg, req).tuned_id


def _same_question(record: dict, plan: Plan) -> bool:
    guard = (record.get("guard") or {}).get("text", "") if record.get("guard") else ""
    return record.get("objective", {}).get("text") == plan.objective.text and \
        guard == (plan.guard.text if plan.guard else "")


def _check_free(cfg: Config) -> None:
    """Refuse at once when another tune runs or another command holds the cluster lock."""
    from sparkhelpers.locking import cluster_lock

    for j in store.active_jobs(cfg):
        raise Busy(f"tune job {j['job_id']} ({j.get('id', '')}) is {j['state']}",
                   fix=f"wait for it (sparkhelpers tune show {j.get('id', '')}), then try again")
    try:
        with cluster_lock(cfg, what="sparkhelpers tune (probe)"):
            pass
    except SparkError as exc:
        raise Busy(exc.message, fix=exc.fix) from None


def _log_path(cfg: Config, tuned: str) -> str:
    d = store.job_dir(cfg, tuned)
    d.mkdir(parents=True, exist_ok=True)
    return str(d / "tune.log")


def _start(cfg: Config, plan: Plan, previous: dict | None, command: list[str], background: bool,
           log: Callable[[str], None], ops=None) -> dict:  # noqa: ANN001
    from sparkhelpers.tune import flow

    _check_free(cfg)
    job_id = store.new_job_id(plan.tuned_id)
    record = flow.new_record(plan, job_id, previous)
    store.save(cfg, record)
    logfile = _log_path(cfg, plan.tuned_id)
    store.set_job(cfg, job_id, id=plan.tuned_id, state=store.QUEUED, log=logfile)
    if background:
        from sparkhelpers.runner import Runner

        pid = Runner().spawn([sys.executable, "-m", "sparkhelpers", "tune", *command, "--job", job_id],
                             log_path=logfile)
        return store.set_job(cfg, job_id, pid=pid)
    return run_job(cfg, plan, record, log=log, ops=ops)


def run_job(cfg: Config, plan: Plan, record: dict, *, log: Callable[[str], None], ops=None) -> dict:  # noqa: ANN001
    """Execute a queued job in this process (its state file follows it)."""
    import os

    from sparkhelpers.secrets import secret_value
    from sparkhelpers.tune import flow

    job_id = record["job_id"]
    store.set_job(cfg, job_id, id=plan.tuned_id, state=store.RUNNING, pid=os.getpid())
    try:
        done = flow.execute(cfg, plan, record, log=log, api_key=secret_value(cfg, "API_KEY"), ops=ops)
    except BaseException as exc:
        store.set_job(cfg, job_id, state=store.FAILED, error=record.get("error") or str(exc))
        raise
    store.set_job(cfg, job_id, state=done["state"], error=done.get("error", ""))
    return done


def submit(cfg: Config, req: TuneRequest, *, background: bool = True, log: Callable[[str], None] = print,
           ops=None) -> dict:  # noqa: ANN001
    """A new tuning job (or the stored one: same request, same id). Returns the job state (background) or
    the finished record."""
    plan = prepare(cfg, req)
    try:
        existing = store.load(cfg, plan.tuned_id)
    except NotFound:
        existing = None
    if existing is not None:
        if not _same_question(existing, plan):
            raise Conflict(f"{plan.tuned_id} is tuned for {existing['objective']['text']} (guard "
                           f"{(existing.get('guard') or {}).get('text', 'none')}), not {plan.objective.text}",
                           fix=f"sparkhelpers tune retune {plan.tuned_id} --objective '{plan.objective.text}'")
        if existing.get("state") == store.DONE or _running(cfg, existing):
            return {**existing, "existing": True}
    return _start(cfg, plan, existing, ["run", *req.cli_args()], background, log, ops)


def _running(cfg: Config, record: dict) -> bool:
    try:
        return store.get_job(cfg, record.get("job_id", "")).get("state") in (store.QUEUED, store.RUNNING)
    except SparkError:
        return False


def retune_request(record: dict, **changes: Any) -> TuneRequest:
    req = TuneRequest.from_dict(record["request"])
    return replace(req, **{k: (tuple(v) if isinstance(v, list) else v) for k, v in changes.items() if v is not None})


def retune(cfg: Config, tuned: str, *, background: bool = True, log: Callable[[str], None] = print, ops=None,
           **changes: Any) -> dict:  # noqa: ANN001
    """Tune a stored model again with its winner as the incumbent; the winner changes only on a win."""
    record = store.load(cfg, tuned)
    if _running(cfg, record):
        raise Busy(f"{tuned} is being tuned now (job {record['job_id']})", fix="wait for it to finish")
    req = retune_request(record, **changes)
    plan = prepare(cfg, req, incumbent=(record.get("winner") or {}).get("changes"))
    if plan.tuned_id != tuned:
        raise Conflict(f"the base recipe of {tuned} changed since it was tuned (now {plan.tuned_id})",
                       fix=f"tune it as a new model: sparkhelpers tune run {req.target}")
    return _start(cfg, plan, record, ["retune", tuned, *_retune_args(changes)], background, log, ops)


def _retune_args(changes: dict) -> list[str]:
    args = []
    for key in ("objective", "guard", "budget", "repeats"):
        if changes.get(key) is not None:
            args += [f"--{key}", str(changes[key])]
    if changes.get("grid"):
        args.append("--grid")
    for lever in changes.get("levers") or ():
        args += ["--lever", lever]
    for path in changes.get("candidates") or ():
        args += ["--candidate", path]
    return args


def get(cfg: Config, tuned: str) -> dict:
    record = store.load(cfg, tuned)
    if record.get("state") in (store.QUEUED, store.RUNNING) and not _running(cfg, record):
        record["state"] = store.FAILED
        record["error"] = record.get("error") or "the tune process ended without finishing"
    return record


def list_tuned(cfg: Config) -> list[dict]:
    return [{"id": r["id"], "model": r.get("base", {}).get("model"), "state": r.get("state"),
             "objective": r.get("objective", {}).get("text"), "guard": (r.get("guard") or {}).get("text"),
             "winner": (r.get("winner") or {}).get("recipe_id"), "runs": r.get("runs"), "updated": r.get("updated"),
             "job_id": r.get("job_id")} for r in store.listing(cfg)]


def job(cfg: Config, job_id: str) -> dict:
    return store.get_job(cfg, job_id)


def delete(cfg: Config, tuned: str, *, stop_engine: bool = True) -> dict:
    """Stop the cluster when it serves one of this job's recipes, then remove SPARK_STATE_DIR/tuned/<id>/."""
    from sparkhelpers.recipes.apply import running_recipe_id

    record = store.load(cfg, tuned)
    if _running(cfg, record):
        raise Busy(f"{tuned} is being tuned now (job {record['job_id']})", fix="wait for it to finish, then delete")
    ids = {c.get("recipe_id") for c in record.get("candidates", [])} | {(record.get("winner") or {}).get("recipe_id")}
    stopped = False
    if stop_engine and running_recipe_id(cfg) in ids - {None, ""}:
        from sparkhelpers.cluster import control
        from sparkhelpers.locking import cluster_lock

        with cluster_lock(cfg, what="sparkhelpers tune delete"):
            stopped = not control.stop_failures(control.stop_cluster(cfg, quiet=True))
    return {"id": tuned, "removed": store.remove(cfg, tuned), "stopped": stopped}


def dry_run(cfg: Config, req: TuneRequest, incumbent: dict | None = None) -> dict:
    """What a job would do: the id, the rule's inputs, the candidates (refusals with their reasons), the run
    counts of both strategies; nothing is started (an --oracle is asked: its proposals are validated here)."""
    from sparkhelpers.tune import flow, search

    plan = prepare(cfg, req, incumbent)
    first = [plan.make({**plan.control.changes, lever.key: v}, "rule") for lever in plan.levers for v in lever.values
             if search._differs(plan.control, lever.key, v)]
    grid = search.grid_changes(plan.control, plan.levers)
    record = flow.new_record(plan, "dry-run")
    extra = list(plan.extra)
    if req.oracle:
        s = search.Search(plan.objective, plan.guard, lambda c, confirm: dc.Measurement(c.name), plan.make)
        extra += flow.oracle_candidates(cfg, plan, record, s)
        record["trail"] = s.trail
    record["candidates"] = [c.as_dict() for c in [plan.control, *first, *extra]]
    record["grid_candidates"] = len(grid) + len(extra)
    record["adaptive_first_round"] = len([c for c in first if not c.refused]) + len([c for c in extra if not c.refused])
    return record


def run_queued(cfg: Config, job_id: str, *, log: Callable[[str], None] = print) -> dict:
    """The detached process of a background job: the queued record as ``submit``/``retune`` wrote it."""
    state = store.get_job(cfg, job_id)
    record = store.load(cfg, state["id"])
    if record.get("job_id") != job_id:
        raise SparkError(f"job {job_id} was replaced by {record.get('job_id')}", fix="nothing to do")
    incumbent = (record.get("winner") or {}).get("changes") if record["control"]["origin"] == "incumbent" else None
    plan = prepare(cfg, TuneRequest.from_dict(record["request"]), incumbent)
    return run_job(cfg, plan, record, log=log)
