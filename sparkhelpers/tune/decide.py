"""The decision rule, fixed before any number exists (pure: tested with recorded figures).

A candidate beats the incumbent only when its median on the objective is better by more than
max(5%, the measured scatter of either side), the guard holds, and a confirmation re-run agrees. A tie
(the difference within the threshold) keeps the incumbent, unless the candidate uses clearly less memory
with the guard holding ("among equals the lower memory wins"). A crash, a start timeout or an invalid
run is a result that never wins.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field

from sparkhelpers.tune.objective import Guard, Objective

MIN_GAIN = 0.05  # the smallest relative gain that counts, whatever the scatter
MEMORY_MARGIN = 0.05  # "lower memory" means lower by more than this fraction

OK, CRASHED, START_TIMEOUT, BENCH_FAILED, INVALID, REFUSED, SKIPPED = (
    "ok", "crashed", "start_timeout", "bench_failed", "invalid", "refused", "skipped")
WIN, WIN_MEMORY, TIE, LOSS, GUARD_FAILED, FAILED = "win", "win_memory", "tie", "loss", "guard_failed", "failed"
WINS = (WIN, WIN_MEMORY)


@dataclass
class Measurement:
    """One run of one candidate: its start and its repeats at the objective (and guard) points."""

    candidate: str
    recipe_id: str = ""
    status: str = OK
    message: str = ""
    objective: list[float] = field(default_factory=list)  # the objective metric, one value per repeat
    guard: list[float] = field(default_factory=list)  # the guard metric, one value per repeat
    memory_gib: float | None = None  # peak memory in use on the nodes (lower is better)
    memory_scatter: float = 0.0  # relative spread of the per-repeat memory figures (the nodes' own noise)
    engine: dict = field(default_factory=dict)  # prefix-cache hit rate, preemptions (medians)
    start_s: float | None = None
    run: int = 0  # the job's run number (1 = the first start)
    result_dir: str = ""
    confirmation: bool = False

    @property
    def median(self) -> float | None:
        return statistics.median(self.objective) if self.objective else None

    @property
    def guard_median(self) -> float | None:
        return statistics.median(self.guard) if self.guard else None

    @property
    def scatter(self) -> float:
        return scatter(self.objective)

    def as_dict(self) -> dict:
        out = asdict(self)
        out.update(median=self.median, guard_median=self.guard_median, scatter=round(self.scatter, 4))
        return out

    @classmethod
    def from_dict(cls, data: dict) -> Measurement:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: val for k, val in data.items() if k in names})


def scatter(values: list[float]) -> float:
    """Relative spread of the repeats: the interquartile range over the median (inclusive quartiles: half the
    range for 3 repeats); 0 with fewer than two repeats."""
    if len(values) < 2:
        return 0.0
    mid = statistics.median(values)
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return (q3 - q1) / abs(mid) if mid else float("inf")


@dataclass
class Verdict:
    outcome: str  # win | win_memory | tie | loss | guard_failed | failed
    gain: float | None  # relative improvement of the median (positive = better, whatever the direction)
    threshold: float
    reason: str

    def as_dict(self) -> dict:
        return asdict(self)


def gain(objective: Objective, incumbent: float, candidate: float) -> float:
    if incumbent == 0:
        return float("inf") if candidate != incumbent else 0.0
    delta = (candidate - incumbent) / abs(incumbent)
    return delta if objective.higher_is_better else -delta


def threshold(incumbent: Measurement, candidate: Measurement) -> float:
    return max(MIN_GAIN, incumbent.scatter, candidate.scatter)


def decide(objective: Objective, guard: Guard | None, incumbent: Measurement, candidate: Measurement) -> Verdict:
    """The verdict on one candidate run against the incumbent's run."""
    if candidate.status != OK:
        return Verdict(FAILED, None, MIN_GAIN, f"{candidate.status}: {candidate.message}".rstrip(": "))
    if incumbent.median is None or candidate.median is None:
        return Verdict(FAILED, None, MIN_GAIN, "no objective figure to compare")
    g = gain(objective, incumbent.median, candidate.median)
    t = threshold(incumbent, candidate)
    vs = (f"median {candidate.median:.4g} vs {incumbent.median:.4g} ({g * 100:+.1f}%, threshold "
          f"{t * 100:.1f}% = max(5%, scatter {incumbent.scatter * 100:.1f}%/{candidate.scatter * 100:.1f}%))")
    guard_ok, guard_note = (True, "") if guard is None else guard.holds(incumbent.guard_median,
                                                                        candidate.guard_median)
    if g > t:
        return Verdict(WIN if guard_ok else GUARD_FAILED, g, t, f"{vs}; {guard_note}".rstrip("; "))
    if g < -t:
        return Verdict(LOSS, g, t, vs)
    if guard_ok and lower_memory(incumbent, candidate):
        return Verdict(WIN_MEMORY, g, t, f"{vs}: a tie, and {candidate.memory_gib:.2f} GiB in use vs "
                                         f"{incumbent.memory_gib:.2f} GiB; {guard_note}".rstrip("; "))
    return Verdict(TIE, g, t, f"{vs}: a tie keeps the incumbent")


def lower_memory(incumbent: Measurement, candidate: Measurement) -> bool:
    """Clearly less: by more than max(5%, either side's memory scatter over its repeats)."""
    if incumbent.memory_gib is None or candidate.memory_gib is None:
        return False
    margin = max(MEMORY_MARGIN, incumbent.memory_scatter, candidate.memory_scatter)
    return candidate.memory_gib < incumbent.memory_gib * (1 - margin)


def confirmed(objective: Objective, guard: Guard | None, incumbent: Measurement, first: Measurement,
              again: Measurement) -> Verdict:
    """The confirmation re-run must win the same way as the first run did."""
    first_v = decide(objective, guard, incumbent, first)
    v = decide(objective, guard, incumbent, again)
    if v.outcome in WINS and first_v.outcome in WINS:
        return Verdict(v.outcome, v.gain, v.threshold, f"confirmed: {v.reason}")
    return Verdict(v.outcome if v.outcome not in WINS else TIE, v.gain, v.threshold,
                   f"not confirmed (the re-run gave {v.outcome}): {v.reason}")


def merged(first: Measurement, again: Measurement) -> Measurement:
    """A confirmed winner's figures: both runs' repeats (what later candidates are compared with)."""
    mem = [m for m in (first.memory_gib, again.memory_gib) if m is not None]
    return Measurement(first.candidate, first.recipe_id, OK, "", first.objective + again.objective,
                       first.guard + again.guard, max(mem) if mem else None,
                       max(first.memory_scatter, again.memory_scatter, scatter(mem)),
                       again.engine or first.engine, first.start_s, again.run, again.result_dir, True)
