"""One tuning job from its plan to its record: the objective and guard stored before any run, the search
under the cluster lock, the cluster put back, the winner's recipe, job.json and report.html written.

A retune starts from the stored record: its winner is the control (the incumbent), candidates that
failed before are never run again unchanged, and the winner is replaced only when a candidate wins by the
same rule (with its confirmation).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable

from sparkhelpers.config import Config
from sparkhelpers.errors import SparkError
from sparkhelpers.tune import decide as dc
from sparkhelpers.tune import search as se
from sparkhelpers.tune import store
from sparkhelpers.tune.candidates import Candidate, write_candidate
from sparkhelpers.tune.objective import as_dict as objective_dict


def new_record(plan, job_id: str, previous: dict | None = None) -> dict:  # noqa: ANN001 - jobs.Plan
    """The job record as it is before any run: the request, the objective and guard, the base, the plan."""
    b = plan.base
    record = {
        "schema": store.SCHEMA, "id": plan.tuned_id, "job_id": job_id, "state": store.QUEUED,
        "created": (previous or {}).get("created") or store.now(), "started": store.now(),
        "request": plan.request.as_dict(), **objective_dict(plan.objective, plan.guard),
        "strategy": "grid" if plan.request.grid else "adaptive", "workload": plan.workload.__dict__,
        "base": {"recipe_id": plan.tuned_id, "name": b.name, "model": b.model, "runtime": b.runtime, "source": b.source,
                 "served_name": b.served_name, "nodes": b.nodes},
        "control": plan.control.as_dict(), "levers": [{"name": x.name, "key": x.key, "values": list(x.values)}
                                                       for x in plan.levers],
        "skipped_levers": plan.skipped_levers, "candidates": [], "trail": [], "runs": 0,
        "failed_ids": (previous or {}).get("failed_ids", []), "history": (previous or {}).get("history", []),
        "winner": (previous or {}).get("winner"), "error": "",
    }
    if previous and previous.get("winner"):
        record["history"] = [*record["history"], {"job_id": previous.get("job_id"), "winner": previous["winner"],
                                                  "objective": previous.get("objective", {}).get("text"),
                                                  "finished": previous.get("updated")}]
    return record


def execute(cfg: Config, plan, record: dict, *, log: Callable[[str], None], api_key: str,  # noqa: ANN001
            ops=None, runner=None) -> dict:  # noqa: ANN001
    """Run the search on the cluster under the lock, put the cluster back, write the result files."""
    from sparkhelpers.locking import cluster_lock
    from sparkhelpers.tune.runs import ClusterBench, Restorer

    directory = store.job_dir(cfg, plan.tuned_id)
    record.update(state=store.RUNNING)
    store.save(cfg, record)  # the objective and guard are on disk before the first run
    bench = ClusterBench(cfg, directory, plan.objective, plan.guard, plan.workload, api_key=api_key, ops=ops,
                         runner=runner, log=log)
    s = se.Search(plan.objective, plan.guard, bench, plan.make, budget=plan.request.budget)
    s.failed_ids |= set(record.get("failed_ids", []))

    def progress(search: se.Search) -> None:
        fill(record, search)
        store.save(cfg, record)

    s.on_note = progress
    with cluster_lock(cfg, what="sparkhelpers tune"):
        restorer = Restorer(cfg, api_key=api_key, ops=ops, runner=runner, log=log)
        restorer.record()
        try:
            extra = list(plan.extra) + oracle_candidates(cfg, plan, record, s)
            strategy = se.grid if plan.request.grid else se.adaptive
            winner, wm = strategy(s, plan.control, plan.levers, extra)
        except BaseException as exc:
            record.update(state=store.FAILED, error=_why(exc))
            raise
        finally:
            record["restore"] = restorer.restore()
            log(f"cluster after the tune: {record['restore']}")
            fill(record, s)
            store.save(cfg, record)
    return finish(cfg, plan, record, s, winner, wm)


def _why(exc: BaseException) -> str:
    if isinstance(exc, SparkError):
        return exc.message
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        return "interrupted"
    return f"{type(exc).__name__}: {exc}"


def oracle_candidates(cfg: Config, plan, record: dict, s: se.Search) -> list[Candidate]:  # noqa: ANN001
    if not plan.request.oracle:
        return []
    from sparkhelpers.tune import oracle

    try:
        found, exchange = oracle.propose(cfg, plan.base, plan.objective, plan.guard)
    except SparkError as exc:
        s.note("oracle", None, reason=f"no proposals: {exc.message}")
        record["oracle"] = {"error": exc.message}
        return []
    record["oracle"] = exchange
    for c in found:
        s.note("oracle proposal", c, reason=c.refused or f"valid: {c.why}".rstrip(": "))
    return found


def fill(record: dict, s: se.Search) -> None:
    """Every candidate with its runs and verdicts, the trail and the run count, into the record."""
    by_id: dict[str, dict] = {}
    for cand, m in s.measured:
        entry = by_id.setdefault(cand.recipe_id or cand.name, {**cand.as_dict(), "measurements": []})
        entry["measurements"].append(m.as_dict())
    for cand in s.refused:
        by_id.setdefault(cand.recipe_id or cand.name, {**cand.as_dict(), "measurements": []})
    record["candidates"] = list(by_id.values())
    record["trail"] = s.trail
    record["runs"] = s.runs
    record["budget_spent"] = s.budget_spent
    record["failed_ids"] = sorted(s.failed_ids)


def finish(cfg: Config, plan, record: dict, s: se.Search, winner: Candidate, wm: dc.Measurement) -> dict:  # noqa: ANN001
    """The winner (or the incumbent kept), its recipe file, the report; state done or failed."""
    from sparkhelpers.tune import report

    directory = store.job_dir(cfg, plan.tuned_id)
    control_m = next((m for c, m in s.measured if c.name == plan.control.name and not m.confirmation), None)
    if control_m is None or control_m.status != dc.OK:
        why = f"{control_m.status}: {control_m.message}" if control_m else "the budget allowed no run"
        record.update(state=store.FAILED, error=f"the control did not run: {why}")
    else:
        kept = winner.recipe_id == plan.control.recipe_id
        if not kept or not record.get("winner"):
            path = write_candidate(directory / "candidates", winner)
            shutil.copyfile(path, directory / "winner.yaml")
            record["winner"] = {
                "name": winner.name, "recipe_id": winner.recipe_id, "changes": winner.changes,
                "recipe_file": str(directory / "winner.yaml"), "served_name": winner.recipe.served_name,
                "median": wm.median, "scatter": wm.scatter, "memory_gib": wm.memory_gib,
                "gain_vs_control": dc.gain(plan.objective, control_m.median, wm.median) if wm.median else 0.0,
                "kept_incumbent": kept, "job_id": record["job_id"]}
        else:
            record["winner"] = {**record["winner"], "kept_incumbent": True, "median": control_m.median,
                                "scatter": control_m.scatter, "gain_vs_control": 0.0, "confirmed_by": record["job_id"]}
        record["state"] = store.DONE
    report_path = directory / "report.html"
    from sparkhelpers.bench.sweep import write_text_nofollow

    write_text_nofollow(report_path, report.render(record, directory))
    record["report"] = str(report_path)
    store.save(cfg, record)
    return record
