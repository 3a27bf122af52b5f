"""What a tuning job optimizes and what it must not break, declared before any run and stored with the job.

Objective: one metric on one workload cell, ``METRIC@cN[:IN/OUT]``, for example ``output_tps@c16:1024/128``;
goodput takes its SLOs in brackets, ``goodput@c16:1024/128[ttft<=500,tpot<=50]`` (milliseconds).
Guard: one metric on one cell that must not worsen, ``METRIC@cN[:IN/OUT]<=+5%`` (relative to the
incumbent) or ``ttft@c1<=800`` (absolute, in the metric's unit). The cell defaults to the objective's.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from sparkhelpers.errors import UsageError

# name -> (result-document key, higher is better, unit)
METRICS: dict[str, tuple[str, bool, str]] = {
    "output_tps": ("output_throughput", True, "tok/s"),
    "total_tps": ("total_token_throughput", True, "tok/s"),
    "req_tps": ("request_throughput", True, "req/s"),
    "goodput": ("request_goodput", True, "req/s"),
    "ttft": ("median_ttft_ms", False, "ms"),
    "ttft_p99": ("p99_ttft_ms", False, "ms"),
    "tpot": ("median_tpot_ms", False, "ms"),
    "tpot_p99": ("p99_tpot_ms", False, "ms"),
    "itl": ("median_itl_ms", False, "ms"),
    "e2el": ("median_e2el_ms", False, "ms"),
}
SLO_METRICS = ("ttft", "tpot", "e2el")
DEFAULT_CELL = (256, 64)
_TARGET = re.compile(r"^(?P<metric>[a-z0-9_]+)@c(?P<conc>\d+)(?::(?P<isl>\d+)/(?P<osl>\d+))?"
                     r"(?:\[(?P<slo>[^\]]*)\])?$")
_GUARD = re.compile(r"^(?P<target>[^<>=]+?)\s*(?P<op><=|>=)\s*(?P<sign>[+-]?)(?P<num>\d+(?:\.\d+)?)(?P<pct>%?)$")
OBJECTIVE_EXAMPLE = "output_tps@c16:1024/128"
GUARD_EXAMPLE = "tpot@c1<=+5%"


@dataclass(frozen=True)
class Point:
    """One measured workload point: a cell (input/output tokens) at one concurrency."""

    concurrency: int
    input_len: int
    output_len: int

    @property
    def key(self) -> str:
        return f"c{self.concurrency}:{self.input_len}/{self.output_len}"


@dataclass(frozen=True)
class Objective:
    metric: str
    point: Point
    slo_ms: dict[str, float] = field(default_factory=dict)  # goodput only

    @property
    def doc_key(self) -> str:
        return METRICS[self.metric][0]

    @property
    def higher_is_better(self) -> bool:
        return METRICS[self.metric][1]

    @property
    def text(self) -> str:
        slo = f"[{','.join(f'{k}<={v:g}' for k, v in sorted(self.slo_ms.items()))}]" if self.slo_ms else ""
        return f"{self.metric}@{self.point.key}{slo}"


@dataclass(frozen=True)
class Guard:
    metric: str
    point: Point
    op: str  # "<=" or ">="
    limit: float  # a fraction (relative) or a value in the metric's unit (absolute)
    relative: bool

    @property
    def doc_key(self) -> str:
        return METRICS[self.metric][0]

    @property
    def text(self) -> str:
        limit = f"{self.limit * 100:+g}%" if self.relative else f"{self.limit:g}"
        return f"{self.metric}@{self.point.key}{self.op}{limit}"

    def holds(self, incumbent: float | None, candidate: float | None) -> tuple[bool, str]:
        """Whether the candidate's median keeps the guard (with the reason, for the decision trail)."""
        if candidate is None:
            return False, f"guard {self.text}: no figure for the candidate"
        bound = self.limit
        if self.relative:
            if incumbent is None:
                return False, f"guard {self.text}: no figure for the incumbent"
            bound = incumbent * (1 + self.limit)
        ok = candidate <= bound if self.op == "<=" else candidate >= bound
        unit = METRICS[self.metric][2]
        return ok, (f"guard {self.text}: {candidate:.4g} {unit} {'within' if ok else 'beyond'} the bound "
                    f"{bound:.4g} {unit}")


def _metric(name: str, what: str, example: str) -> str:
    if name not in METRICS:
        import difflib

        close = difflib.get_close_matches(name, list(METRICS), n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise UsageError(f"{what} metric {name!r} is unknown", fix=f"{hint}metrics: {', '.join(METRICS)} "
                                                                  f"(e.g. {example})")
    return name


def _slo(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        m = re.fullmatch(r"([a-z0-9]+)\s*<=\s*(\d+(?:\.\d+)?)", item)
        if not m or m.group(1) not in SLO_METRICS:
            raise UsageError(f"goodput SLO {item!r} is not METRIC<=MS (metrics {', '.join(SLO_METRICS)})",
                             fix="e.g. goodput@c16:1024/128[ttft<=500,tpot<=50]")
        out[m.group(1)] = float(m.group(2))
    return out


def _point(m: re.Match, default: Point | None, what: str) -> Point:
    conc = int(m.group("conc"))
    if not 1 <= conc <= 4096:
        raise UsageError(f"{what} concurrency c{conc} is outside 1-4096", fix="e.g. @c16")
    if m.group("isl"):
        isl, osl = int(m.group("isl")), int(m.group("osl"))
        if isl < 1 or osl < 1:
            raise UsageError(f"{what} cell {isl}/{osl} needs at least one token each way", fix="e.g. :1024/128")
        return Point(conc, isl, osl)
    base = default or Point(conc, *DEFAULT_CELL)
    return Point(conc, base.input_len, base.output_len)


def parse_objective(text: str, cell: tuple[int, int] | None = None) -> Objective:
    """``output_tps@c16:1024/128`` or ``goodput@c16:1024/128[ttft<=500,tpot<=50]`` -> Objective (``cell``:
    the input/output lengths when the text gives none; else 256/64)."""
    m = _TARGET.match(text.strip().replace(" ", ""))
    if not m:
        raise UsageError(f"objective {text!r} is not METRIC@cN[:IN/OUT]",
                         fix=f"e.g. --objective {OBJECTIVE_EXAMPLE} (metrics: {', '.join(METRICS)})")
    metric = _metric(m.group("metric"), "objective", OBJECTIVE_EXAMPLE)
    slo = _slo(m.group("slo") or "")
    if metric == "goodput" and not slo:
        raise UsageError("a goodput objective needs its SLOs", fix="e.g. goodput@c16:1024/128[ttft<=500,tpot<=50]")
    if slo and metric != "goodput":
        raise UsageError(f"SLOs in brackets only apply to goodput, not {metric}",
                         fix=f"drop the brackets, or use goodput@...[{m.group('slo')}]")
    return Objective(metric, _point(m, Point(1, *cell) if cell else None, "objective"), slo)


def parse_guard(text: str, objective: Objective) -> Guard | None:
    """``tpot@c1<=+5%`` (relative) or ``ttft@c1:1024/128<=800`` (absolute) -> Guard; "" or "none" -> None."""
    text = text.strip().replace(" ", "")
    if text in ("", "none"):
        return None
    m = _GUARD.match(text)
    t = _TARGET.match(m.group("target")) if m else None
    if not m or not t or t.group("slo"):
        raise UsageError(f"guard {text!r} is not METRIC@cN[:IN/OUT]<=LIMIT",
                         fix=f"e.g. --guard {GUARD_EXAMPLE} (relative to the incumbent) or ttft@c1<=800 (absolute)")
    metric = _metric(t.group("metric"), "guard", GUARD_EXAMPLE)
    relative = m.group("pct") == "%"
    value = float(m.group("num")) * (-1 if m.group("sign") == "-" else 1)
    if not relative and m.group("sign"):
        raise UsageError(f"guard {text!r}: a signed limit is relative and needs a %",
                         fix=f"write {m.group('target')}{m.group('op')}{m.group('sign')}{m.group('num')}%")
    return Guard(metric, _point(t, objective.point, "guard"), m.group("op"), value / 100 if relative else value,
                 relative)


def points(objective: Objective, guard: Guard | None) -> list[Point]:
    """The workload points a candidate is measured at: the objective's first, then the guard's if it differs."""
    out = [objective.point]
    if guard is not None and guard.point != objective.point:
        out.append(guard.point)
    return out


def as_dict(objective: Objective, guard: Guard | None) -> dict:
    return {"objective": {**asdict(objective), "text": objective.text, "doc_key": objective.doc_key,
                          "higher_is_better": objective.higher_is_better},
            "guard": None if guard is None else {**asdict(guard), "text": guard.text, "doc_key": guard.doc_key}}
