"""Benchmark profiles (cells x concurrency ladder x repeats) and configuration variants, from YAML.

The built-in ``profiles.yaml`` is always read; ``BENCH_PROFILES_FILE`` adds profiles and variants or
replaces built-in ones by name. ``plan_runs`` expands a profile into the exact runs, in order.
"""

from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from sparkhelpers.bench.run import DATASETS, RunOptions
from sparkhelpers.errors import SparkError, UsageError, did_you_mean, read_user_file

BUILTIN = Path(__file__).with_name("profiles.yaml")
CELL_KEYS = {"name", "dataset", "input_len", "output_len", "range_ratio", "prefix_len", "suffix_len", "num_prefixes",
             "dataset_path", "backend"}
PROFILE_KEYS = {"description", "cells", "concurrency", "num_prompts", "prompts_per_concurrency", "min_prompts",
                "repeats", "warmups", "backend", "request_rate", "goodput"}


@dataclass(frozen=True)
class Cell:
    name: str
    dataset: str = "random"
    input_len: int = 1024
    output_len: int = 128
    range_ratio: float = 0.0
    prefix_len: int = 0
    suffix_len: int = 256
    num_prefixes: int = 10
    dataset_path: str = ""
    backend: str = ""


@dataclass(frozen=True)
class Profile:
    name: str
    cells: tuple[Cell, ...]
    concurrency: tuple[int, ...]
    description: str = ""
    num_prompts: int | None = None
    prompts_per_concurrency: int = 4
    min_prompts: int = 8
    repeats: int = 1
    warmups: int | None = None  # None: one warm-up request per concurrency slot
    backend: str = "openai"
    request_rate: float | None = None
    goodput: dict[str, float] = field(default_factory=dict)

    def prompts_for(self, concurrency: int) -> int:
        if self.num_prompts is not None:
            return self.num_prompts
        return max(self.min_prompts, self.prompts_per_concurrency * concurrency)


@dataclass(frozen=True)
class RunPlan:
    profile: str
    cell: Cell
    concurrency: int
    repeat: int
    num_prompts: int
    warmups: int

    @property
    def key(self) -> str:
        return f"{self.profile}/{self.cell.name}/c{self.concurrency}/r{self.repeat}"


def _read(path: Path) -> dict:
    text = read_user_file(path, "the benchmark profiles file", fix="fix BENCH_PROFILES_FILE or unset it")
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise SparkError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}",
                         fix="see sparkhelpers/bench/profiles.yaml for the layout") from None
    if not isinstance(data, dict) or not set(data) <= {"profiles", "variants"}:
        raise SparkError(f"{path}: the top level must hold 'profiles' and/or 'variants'",
                         fix="see sparkhelpers/bench/profiles.yaml for the layout")
    return data


def parse_profile(name: str, raw: dict, source: str) -> Profile:
    where = f"{source}: profile {name!r}"
    if not isinstance(raw, dict):
        raise SparkError(f"{where} must be a mapping", fix="see sparkhelpers/bench/profiles.yaml")
    unknown = set(raw) - PROFILE_KEYS
    if unknown:
        raise SparkError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}",
                         fix=f"allowed: {', '.join(sorted(PROFILE_KEYS))}")
    cells = []
    for i, c in enumerate(raw.get("cells") or []):
        if not isinstance(c, dict) or set(c) - CELL_KEYS:
            raise SparkError(f"{where}: cell {i + 1} has unknown keys or is not a mapping",
                             fix=f"cell keys: {', '.join(sorted(CELL_KEYS))}")
        cell = Cell(**{"name": c.get("name") or f"cell{i + 1}", **{k: v for k, v in c.items() if k != "name"}})
        if cell.dataset not in DATASETS:
            raise SparkError(f"{where}: cell {cell.name!r} has dataset {cell.dataset!r}",
                             fix=f"use one of {', '.join(DATASETS)}")
        cells.append(cell)
    ladder = raw.get("concurrency") or [1]
    if not cells or not all(isinstance(c, int) and c > 0 for c in ladder):
        raise SparkError(f"{where} needs at least one cell and a concurrency list of positive integers",
                         fix="see sparkhelpers/bench/profiles.yaml")
    kwargs = {k: raw[k] for k in ("description", "num_prompts", "prompts_per_concurrency", "min_prompts", "repeats",
                                  "warmups", "backend", "request_rate", "goodput") if k in raw}
    return Profile(name=name, cells=tuple(cells), concurrency=tuple(ladder), **kwargs)


def load(extra_file: str = "") -> tuple[dict[str, Profile], dict[str, dict[str, str]]]:
    """All profiles and variants: built-in, then BENCH_PROFILES_FILE on top."""
    profiles: dict[str, Profile] = {}
    variants: dict[str, dict[str, str]] = {}
    sources = [BUILTIN] + ([Path(extra_file).expanduser()] if extra_file else [])
    for path in sources:
        data = _read(path)
        for name, raw in (data.get("profiles") or {}).items():
            profiles[str(name)] = parse_profile(str(name), raw, str(path))
        for name, raw in (data.get("variants") or {}).items():
            if not isinstance(raw, dict):
                raise SparkError(f"{path}: variant {name!r} must map config keys to values",
                                 fix="for example: fp8-kv: {KV_CACHE_DTYPE: fp8}")
            variants[str(name)] = {str(k): "" if v is None else str(v).lower() if isinstance(v, bool) else str(v)
                                   for k, v in raw.items()}
    return profiles, variants


def get(name: str, extra_file: str = "") -> Profile:
    profiles, _ = load(extra_file)
    if name not in profiles:
        hint = did_you_mean(name, profiles)
        raise UsageError(f"unknown benchmark profile {name!r}", fix=(hint + " " if hint else "") +
                         f"choose one of {', '.join(profiles)} or define it in BENCH_PROFILES_FILE")
    return profiles[name]


def with_overrides(p: Profile, *, num_prompts: int | None = None, concurrency: list[int] | None = None,
                   dataset_path: str = "") -> Profile:
    """The original script's -n, -c and -d on top of a profile."""
    changes: dict = {}
    if num_prompts is not None:
        changes["num_prompts"] = num_prompts
    if concurrency:
        changes["concurrency"] = tuple(concurrency)
    if dataset_path:
        changes["cells"] = (Cell(name="sharegpt", dataset="sharegpt", dataset_path=dataset_path, output_len=128),)
    return dataclasses.replace(p, **changes)


def parse_ladder(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise UsageError(f"concurrency {text!r} is not a positive number or a comma-separated ladder",
                         fix="for example -c 16 or -c 1,4,16,64")
    return values


def plan_runs(p: Profile) -> list[RunPlan]:
    """Cell by cell, concurrency ascending, repeats innermost (so a cut-off run still covers every cell)."""
    plans = []
    for cell in p.cells:
        for c in p.concurrency:
            for r in range(1, p.repeats + 1):
                plans.append(RunPlan(p.name, cell, c, r, p.prompts_for(c), c if p.warmups is None else p.warmups))
    return plans


def run_seed(plan: RunPlan, salt: str = "") -> int:
    """A different seed per run (recorded in the result): a prefix cache must not serve one run, or
    today's run, from the prompts of another. ``salt`` is per invocation (its start time)."""
    return zlib.crc32(f"{plan.cell.name}/{plan.concurrency}/{plan.repeat}/{salt}".encode()) % 1_000_000


def run_options(plan: RunPlan, p: Profile, *, base_url: str, model: str, label: str = "",
                salt: str = "") -> RunOptions:
    c = plan.cell
    o = RunOptions(base_url=base_url, model=model, backend=c.backend or p.backend, dataset_name=c.dataset,
                   dataset_path=c.dataset_path, num_prompts=plan.num_prompts, max_concurrency=plan.concurrency,
                   num_warmups=plan.warmups, seed=run_seed(plan, salt), label=label, goodput=dict(p.goodput))
    if p.request_rate:
        o.request_rate = float(p.request_rate)
    if c.dataset == "random":
        o.random_input_len, o.random_output_len = c.input_len, c.output_len
        o.random_range_ratio, o.random_prefix_len = c.range_ratio, c.prefix_len
    elif c.dataset == "prefix-repetition":
        o.prefix_repetition_prefix_len = c.prefix_len or 256
        o.prefix_repetition_suffix_len, o.prefix_repetition_num_prefixes = c.suffix_len, c.num_prefixes
        o.prefix_repetition_output_len = c.output_len
    elif c.dataset == "sharegpt":
        o.sharegpt_output_len = c.output_len
    else:
        o.custom_output_len = c.output_len
    return o
