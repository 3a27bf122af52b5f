"""One candidate on the cluster: started as a recipe through the switch (stop, start, the start's own chat
request), warmed up and measured with repeats at the objective's (and the guard's) point through the
benchmark's run functions, with the engine's metric deltas, the memory figure when the run has one, and
the client's validity. A crash or a start timeout is a result (``Measurement.status``), never an exception.

``Restorer`` puts back what was running before the job, as the sweep does (its steps are reused).
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sparkhelpers.config import Config
from sparkhelpers.errors import SparkError
from sparkhelpers.tune import decide as dc
from sparkhelpers.tune.candidates import Candidate, write_candidate
from sparkhelpers.tune.objective import Guard, Objective, Point, points

TIMEOUT_WORDS = re.compile(r"timed out|timeout|not (?:ready|healthy) (?:within|after)|within \d+ ?s", re.I)


def start_status(message: str) -> str:
    """A failed start is a start timeout or a crash (judged on the first line: the log tail may say anything)."""
    first = message.splitlines()[0] if message else ""
    return dc.START_TIMEOUT if TIMEOUT_WORDS.search(first) else dc.CRASHED


@dataclass(frozen=True)
class Workload:
    """How each point is measured (the objective fixes the cell and the concurrency)."""

    repeats: int = 3
    prompts_per_concurrency: int = 4
    min_prompts: int = 8
    warmups: int | None = None  # None: one warm-up request per concurrency slot
    timeout_s: float = 0.0  # per point (0 = none)

    def __post_init__(self) -> None:
        if self.repeats < 3:
            from sparkhelpers.errors import UsageError

            raise UsageError(f"--repeats {self.repeats}: a median needs at least 3 repeats", fix="--repeats 3")


def profile_for(point: Point, w: Workload, slo_ms: dict[str, float] | None = None):  # noqa: ANN201
    """The bench profile of one point: one random cell at one concurrency, ``w.repeats`` times."""
    from sparkhelpers.bench.profiles import Cell, Profile

    cell = Cell(name=f"{point.input_len}/{point.output_len}", dataset="random", input_len=point.input_len,
                output_len=point.output_len)
    return Profile(name=f"tune-{point.key.replace(':', '-').replace('/', 'x')}", cells=(cell,),
                   concurrency=(point.concurrency,), repeats=w.repeats,
                   prompts_per_concurrency=w.prompts_per_concurrency, min_prompts=w.min_prompts,
                   warmups=w.warmups, goodput=dict(slo_ms or {}))


def memory_per_run(docs: list[dict]) -> list[float]:
    """Per run: peak memory in use on the busiest node (MemTotal - the MemAvailable low-water mark, from the
    result's ``node_memory``); runs that did not sample the nodes are left out."""
    out = []
    for d in docs:
        mem = d.get("node_memory") or {}
        peaks = [float(n["mem_total_gib"]) - float(n["mem_available_min_gib"])
                 for n in (mem.get("nodes") or {}).values() if mem.get("available")
                 and isinstance(n.get("mem_total_gib"), (int, float))
                 and isinstance(n.get("mem_available_min_gib"), (int, float))]
        if peaks:
            out.append(round(max(peaks), 2))
    return out


def memory_gib(docs: list[dict]) -> float | None:
    """The peak over the runs; None when no run sampled the nodes."""
    runs = memory_per_run(docs)
    return max(runs) if runs else None


def engine_summary(docs: list[dict]) -> dict:
    """Medians of the engine's own figures over the repeats (prefix-cache hit rate, preemptions)."""
    out = {}
    for key in ("prefix_cache_hit_rate", "preemptions", "peak_kv_cache_usage", "peak_requests_waiting"):
        vals = [d["engine_metrics"][key] for d in docs if isinstance((d.get("engine_metrics") or {}).get(key),
                                                                         (int, float))]
        if vals:
            out[key] = statistics.median(vals)
    return out


class ClusterBench:
    """``measure(candidate, confirmation)`` for the search: the real cluster (``ops``: sweep_steps.RealOps)."""

    def __init__(self, cfg: Config, job_dir: Path, objective: Objective, guard: Guard | None, workload: Workload,
                 *, api_key: str = "", ops=None, runner=None, log: Callable[[str], None] = print,  # noqa: ANN001
                 download: bool = False) -> None:
        from sparkhelpers.bench.sweep_steps import RealOps
        from sparkhelpers.runner import Runner

        self.cfg, self.dir, self.objective, self.guard, self.w = cfg, job_dir, objective, guard, workload
        self.api_key, self.ops, self.runner, self.log = api_key, ops or RealOps(), runner or Runner(), log
        self.download, self.count = download, 0

    def __call__(self, cand: Candidate, confirmation: bool = False) -> dc.Measurement:
        self.count += 1
        slug = re.sub(r"[^A-Za-z0-9._=+-]", "_", cand.name)[:80]
        label = f"{self.count:02d}-{'confirm-' if confirmation else ''}{slug}"
        self.log(f"run {self.count}: {cand.name}{' (confirmation)' if confirmation else ''} [{cand.recipe_id}]")
        t0 = time.monotonic()
        try:
            self.start(cand)
        except SparkError as exc:
            status = start_status(exc.message)
            self.log(f"  {status}: {exc.message}")
            return dc.Measurement(cand.name, cand.recipe_id, status, exc.message[:500],
                                  start_s=round(time.monotonic() - t0, 1))
        start_s = round(time.monotonic() - t0, 1)
        m = self.bench(cand, self.dir / "runs" / label)
        m.start_s = start_s
        self.log(f"  {m.status}: median {m.median} scatter {m.scatter * 100:.1f}% {m.message}".rstrip())
        return m

    def start(self, cand: Candidate) -> None:
        from sparkhelpers.cluster import switch as sw
        from sparkhelpers.recipes.apply import recipe_config, running_recipe_id

        path = write_candidate(self.dir / "candidates", cand)
        req = sw.SwitchRequest("", skip_download=not self.download, persist=False, recipe=str(path))
        sw.switch(self.cfg, req, runner=self.runner, say=lambda line: self.log(f"  {line}"), start=self.ops.start,
                  stop=self.ops.stop)
        served = running_recipe_id(recipe_config(self.cfg, cand.recipe))
        if served and served != cand.recipe_id:
            raise SparkError(f"the cluster serves {served}, not the candidate {cand.recipe_id}",
                             fix="another command restarted the cluster during the tune; run it again")

    def bench(self, cand: Candidate, out_dir: Path) -> dc.Measurement:
        from sparkhelpers.bench import current
        from sparkhelpers.recipes.apply import recipe_config

        cfg = recipe_config(self.cfg, cand.recipe)
        base_url, model = current.configured_url(cfg), cand.recipe.served_name
        docs: dict[Point, list[dict]] = {}
        for point in points(self.objective, self.guard):
            prof = profile_for(point, self.w, self.objective.slo_ms)
            outcomes, timed_out = current.run_profile(
                cfg, prof, base_url=base_url, model=model, out_dir=out_dir, variant=cand.name, api_key=self.api_key,
                timeout_s=self.w.timeout_s, echo=lambda line: self.log(f"  {line}"),
                target_extra={"tune_candidate": cand.name, "tune_origin": cand.origin})
            bad = current.failures(outcomes)
            if timed_out or bad:
                why = f"the {self.w.timeout_s:g} s budget ran out" if timed_out else bad[0]
                return dc.Measurement(cand.name, cand.recipe_id, dc.BENCH_FAILED, why[:500], result_dir=str(out_dir))
            docs[point] = [o.doc for o in outcomes if o.doc]
        return self.figures(cand, docs, out_dir)

    def figures(self, cand: Candidate, docs: dict[Point, list[dict]], out_dir: Path) -> dc.Measurement:
        every = [d for ds in docs.values() for d in ds]
        invalid = sorted({r for d in every for r in d["run"].get("invalid_reasons", [])})
        main = docs[self.objective.point]
        m = dc.Measurement(cand.name, cand.recipe_id, dc.INVALID if invalid else dc.OK, "; ".join(invalid)[:500],
                           objective=[float(d.get(self.objective.doc_key) or 0.0) for d in main],
                           memory_gib=memory_gib(every), memory_scatter=dc.scatter(memory_per_run(every)),
                           engine=engine_summary(main), result_dir=str(out_dir))
        if self.guard is not None:
            m.guard = [float(d[self.guard.doc_key]) for d in docs[self.guard.point]
                       if isinstance(d.get(self.guard.doc_key), (int, float))]
        return m


class Restorer:
    """What was running before the job, put back afterwards (the sweep's record and restore steps)."""

    def __init__(self, cfg: Config, *, api_key: str, ops=None, runner=None,  # noqa: ANN001
                 log: Callable[[str], None] = print) -> None:
        from sparkhelpers.bench.sweep_steps import InProcessSteps

        self.steps = InProcessSteps(cfg, log=log, api_key=api_key, ops=ops, runner=runner)
        self.log, self.pre = log, {}

    def record(self) -> dict:
        from sparkhelpers.bench import sweep
        from sparkhelpers.config import local_file

        self.pre = sweep.record_pre(local_file(), self.steps.serving())
        return self.pre

    def restore(self) -> str:
        """'restored', 'stopped' (nothing served before, or the restore failed), or 'failed: ...'."""
        r = self.steps.restore(self.pre)
        if r.status == "SUCCESS":
            return "restored" if self.pre.get("serving") else "stopped"
        self.log(f"restore failed ({r.message}); stopping the cluster so it is in a known state")
        s = self.steps.stop()
        return "stopped" if s.status == "SUCCESS" else f"failed: {r.message}; {s.message}"
