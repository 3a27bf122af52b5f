"""The search: adaptive (one lever at a time against the current best, then the pairs worth trying) or the
exhaustive grid, over any ``measure`` (pure: the tests pass recorded figures; the job passes the cluster).

Every start of an engine is a run, confirmations included; ``Search.runs`` counts them. A candidate whose
run failed (crash, start timeout, failed benchmark) is never run again unchanged, and a refused one
(flag set, legal values, memory fit) never runs at all. ``budget`` caps the runs (0 = no cap).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sparkhelpers.tune import decide as dc
from sparkhelpers.tune.candidates import Candidate, effective
from sparkhelpers.tune.levers import Lever
from sparkhelpers.tune.objective import Guard, Objective

MAX_PAIRS = 3
MAX_GRID_CONFIRMS = 3
Measure = Callable[[Candidate, bool], dc.Measurement]  # (candidate, is_confirmation) -> its run
Make = Callable[[dict[str, Any], str], Candidate]  # (changes against the base, origin) -> candidate


class BudgetSpent(Exception):
    """The run budget is used up: the search stops with what it has."""


@dataclass
class Search:
    objective: Objective
    guard: Guard | None
    measure: Measure
    make: Make
    budget: int = 0
    runs: int = 0
    trail: list[dict] = field(default_factory=list)
    measured: list[tuple[Candidate, dc.Measurement]] = field(default_factory=list)
    refused: list[Candidate] = field(default_factory=list)
    failed_ids: set[str] = field(default_factory=set)
    budget_spent: bool = False
    on_note: Callable[[Search], None] | None = None  # progress: called after every trail entry

    def note(self, step: str, cand: Candidate | None = None, **facts: Any) -> None:
        entry = {"step": step, **({"candidate": cand.name, "recipe_id": cand.recipe_id} if cand else {}), **facts}
        self.trail.append(entry)
        if self.on_note:
            self.on_note(self)

    def run(self, cand: Candidate, confirmation: bool = False) -> dc.Measurement:
        if self.budget and self.runs >= self.budget:
            self.budget_spent = True
            raise BudgetSpent
        self.runs += 1
        m = self.measure(cand, confirmation)
        m.run, m.confirmation, m.candidate, m.recipe_id = self.runs, confirmation, cand.name, cand.recipe_id
        self.measured.append((cand, m))
        if m.status != dc.OK:
            self.failed_ids.add(cand.recipe_id)
        return m

    def control(self, cand: Candidate) -> dc.Measurement:
        m = self.run(cand)
        self.note("control", cand, status=m.status, median=m.median, scatter=round(m.scatter, 4),
                  message=m.message)
        return m

    def runnable(self, cand: Candidate, best: Candidate) -> bool:
        if cand.refused:
            self.refused.append(cand)
            self.note("refused", cand, reason=cand.refused)
            return False
        if cand.recipe_id == best.recipe_id or any(c.recipe_id == cand.recipe_id and m.status == dc.OK
                                                   and not m.confirmation for c, m in self.measured):
            return False  # the same recipe as one already measured (another lever order got there)
        if cand.recipe_id in self.failed_ids:
            self.note("skipped", cand, reason="failed before: never retried unchanged")
            return False
        return True

    def challenge(self, best: Candidate, best_m: dc.Measurement, cand: Candidate
                  ) -> tuple[Candidate, dc.Measurement, dc.Verdict | None]:
        """Run ``cand`` against the current best; a win is confirmed by a re-run before it becomes the best."""
        if not self.runnable(cand, best):
            return best, best_m, None
        m = self.run(cand)
        v = dc.decide(self.objective, self.guard, best_m, m)
        self.note("measured", cand, against=best.name, outcome=v.outcome, gain=v.gain, reason=v.reason)
        if v.outcome not in dc.WINS:
            return best, best_m, v
        again = self.run(cand, confirmation=True)
        cv = dc.confirmed(self.objective, self.guard, best_m, m, again)
        self.note("confirmation", cand, against=best.name, outcome=cv.outcome, gain=cv.gain, reason=cv.reason)
        if cv.outcome in dc.WINS:
            self.note("new best", cand, replaces=best.name)
            return cand, dc.merged(m, again), cv
        return best, best_m, cv


def _differs(best: Candidate, key: str, value: Any) -> bool:
    current = best.changes.get(key, effective(best.recipe, key) if best.recipe else None)
    return current != value


def adaptive(s: Search, control: Candidate, levers: list[Lever], extra: list[Candidate] = ()
             ) -> tuple[Candidate, dc.Measurement]:
    """One lever at a time against the current best (ladders stop past their knee), then the extra
    candidates (oracle proposals), then pairs of the levers that gained without a decisive win."""
    best, best_m = control, s.control(control)
    if best_m.status != dc.OK:
        return best, best_m
    alive: list[tuple[float, str, Any]] = []
    try:
        for lever in levers:
            won_here = False
            for value in lever.values:
                if not _differs(best, lever.key, value):
                    continue
                cand = s.make({**best.changes, lever.key: value}, "rule")
                new, new_m, v = s.challenge(best, best_m, cand)
                if new is not best:
                    best, best_m, won_here = new, new_m, True
                    continue
                if v is not None and v.outcome == dc.TIE and (v.gain or 0) > 0:
                    alive.append((v.gain, lever.key, value))
                if won_here and v is not None and v.outcome in (dc.LOSS, dc.FAILED, dc.GUARD_FAILED):
                    s.note("knee", None, lever=lever.name, reason=f"{lever.name}={value} is past the best value")
                    break
        for cand in extra:  # oracle proposals and hand-written variants, as they are
            best, best_m, _ = s.challenge(best, best_m, cand)
        for a, b in _pairs(alive):
            if _differs(best, a[1], a[2]) and _differs(best, b[1], b[2]):
                cand = s.make({**best.changes, a[1]: a[2], b[1]: b[2]}, "pair")
                best, best_m, _ = s.challenge(best, best_m, cand)
    except BudgetSpent:
        s.note("budget", None, reason=f"the budget of {s.budget} runs is spent")
    return best, best_m


def _pairs(alive: list[tuple[float, str, Any]]) -> list[tuple[tuple, tuple]]:
    top = sorted(alive, key=lambda t: -t[0])[:MAX_PAIRS]
    return [(a, b) for a, b in itertools.combinations(top, 2) if a[1] != b[1]][:MAX_PAIRS]


def grid_changes(base: Candidate, levers: list[Lever]) -> list[dict[str, Any]]:
    """Every combination of lever values (each lever also left as it is), the control itself excluded."""
    axes = [[None, *[v for v in lv.values if _differs(base, lv.key, v)]] for lv in levers]
    out = []
    for combo in itertools.product(*axes):
        changes = {lv.key: v for lv, v in zip(levers, combo, strict=True) if v is not None}
        if changes:
            out.append({**base.changes, **changes})
    return out


def grid(s: Search, control: Candidate, levers: list[Lever], extra: list[Candidate] = ()
         ) -> tuple[Candidate, dc.Measurement]:
    """Every combination once against the control; the best winners are confirmed in turn."""
    control_m = s.control(control)
    if control_m.status != dc.OK:
        return control, control_m
    wins: list[tuple[dc.Verdict, Candidate, dc.Measurement]] = []
    cands = [s.make(ch, "grid") for ch in grid_changes(control, levers)] + list(extra)
    try:
        for cand in cands:
            if not s.runnable(cand, control):
                continue
            m = s.run(cand)
            v = dc.decide(s.objective, s.guard, control_m, m)
            s.note("measured", cand, against=control.name, outcome=v.outcome, gain=v.gain, reason=v.reason)
            if v.outcome in dc.WINS:
                wins.append((v, cand, m))
        wins.sort(key=lambda t: (t[0].outcome != dc.WIN, -(t[0].gain or 0), t[2].memory_gib or 0))
        for _v, cand, m in wins[:MAX_GRID_CONFIRMS]:
            again = s.run(cand, confirmation=True)
            cv = dc.confirmed(s.objective, s.guard, control_m, m, again)
            s.note("confirmation", cand, against=control.name, outcome=cv.outcome, gain=cv.gain, reason=cv.reason)
            if cv.outcome in dc.WINS:
                s.note("new best", cand, replaces=control.name)
                return cand, dc.merged(m, again)
    except BudgetSpent:
        s.note("budget", None, reason=f"the budget of {s.budget} runs is spent")
    return control, control_m
