"""Candidates: the base recipe with some engine arguments changed, each an exact recipe with its own id.

A candidate is checked three ways before it may run: the recipe rules (every flag known to the engine
version's flag set, values of the flag's type: ``recipes.schema.resolve``), the legal-values schema
(for oracle proposals) and the memory-fit estimate (``models.fit``): a candidate the estimate says cannot
hold its weights and the objective's sequences in KV cache is recorded with the reason and never run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparkhelpers.errors import SparkError
from sparkhelpers.recipes.schema import Recipe
from sparkhelpers.tune.objective import Point


@dataclass
class Candidate:
    name: str  # "control", or the changes: "max_num_seqs=8+enable_prefix_caching=false"
    changes: dict[str, Any]  # engine-argument key -> value, against the base recipe
    origin: str  # control | rule | oracle | pair | grid
    recipe: Recipe | None = None
    recipe_id: str = ""
    refused: str = ""  # why it is never run ("" = it may run)
    fit: dict = field(default_factory=dict)
    why: str = ""  # the oracle's reason, or the lever's

    def as_dict(self) -> dict:
        return {"name": self.name, "changes": self.changes, "origin": self.origin, "recipe_id": self.recipe_id,
                "refused": self.refused, "fit": self.fit, "why": self.why}


def value_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return str(value.get("method", "json")) if set(value) >= {"method"} else json.dumps(value, sort_keys=True)
    return str(value)


def name_of(changes: dict[str, Any]) -> str:
    return "+".join(f"{k}={value_text(v)}" for k, v in sorted(changes.items())) or "control"


def base_document(ref: str, *, recipe_path: str = "", default_image: str = "",
                  catalog_file: str = "") -> tuple[str, dict]:
    """(where, document) for a recipe file, a name on RECIPE_PATH, a catalog preset, or a plain repo id."""
    from sparkhelpers import validate as v
    from sparkhelpers.recipes import loader
    from sparkhelpers.recipes.presets import preset_document

    dirs = loader.search_dirs(recipe_path)
    is_file = ref.endswith(loader.SUFFIXES) or ref.startswith(("/", ".", "~")) or Path(ref).is_file()
    path = loader.locate(ref, dirs) if is_file or "/" not in ref else None
    if path is not None:
        return str(path), loader.load_document(path, dirs)
    catalog = None
    if catalog_file:
        from sparkhelpers.models.catalog import load_catalog

        catalog = load_catalog(catalog_file)
    doc = preset_document(ref, catalog, default_image)
    if doc is not None:
        return f"preset {ref}", doc
    try:
        v.model_id(ref, "model")
    except SparkError:
        raise SparkError(f"{ref} is not a recipe file, a recipe on RECIPE_PATH, a preset or an org/name repo id",
                         fix="give a recipe file, a preset (sparkhelpers models list) or a Hugging Face repo "
                             "id") from None
    if not default_image:
        raise SparkError(f"{ref} is a plain model and VLLM_IMAGE is empty", fix="set VLLM_IMAGE, or give a recipe")
    from sparkhelpers.recipes.identity import model_slug

    return f"model {ref}", {"recipe": 1, "name": model_slug(ref), "model": ref, "image": default_image}


def resolve_base(ref: str, *, nodes: int | None = None, **where) -> Recipe:
    from sparkhelpers.recipes.schema import resolve

    label, doc = base_document(ref, **where)
    return resolve(label, doc, nodes)


def flat_document(recipe: Recipe) -> dict[str, Any]:
    """The exact recipe as a document without include/overrides (what a candidate file holds)."""
    from sparkhelpers.recipes.export import to_document

    doc = to_document(recipe)
    doc.pop("id", None)
    return doc


def effective(recipe: Recipe, key: str) -> Any:
    """The value a flag has in this recipe: its own, else the engine's default for a boolean (None: unknown)."""
    from sparkhelpers.recipes import flags as fl

    if key in recipe.engine_args:
        return recipe.engine_args[key]
    flag = fl.flag_set(recipe.runtime, recipe.engine_version or None).get(key)
    if flag is not None and flag.type in ("store_true", "bool_optional"):
        return flag.default_on
    return None


def build(base: Recipe, changes: dict[str, Any], origin: str, point: Point, *, why: str = "",
          name: str = "") -> Candidate:
    """The candidate recipe: flag-set checked, then bounded by the memory-fit estimate."""
    from sparkhelpers.recipes.identity import recipe_id
    from sparkhelpers.recipes.schema import resolve

    cand = Candidate(name or name_of(changes), dict(changes), origin, why=why)
    doc = flat_document(base)
    args = dict(doc.get("engine_args") or {})
    for key, value in changes.items():
        args[key] = value
    doc["engine_args"] = args
    try:
        cand.recipe = resolve(f"candidate {cand.name}", doc, base.nodes)
    except SparkError as exc:
        cand.refused = exc.message
        return cand
    cand.recipe_id = recipe_id(cand.recipe)
    cand.fit = fit_check(cand.recipe, point)
    if cand.fit.get("fits") is False and origin != "control":
        cand.refused = f"does not fit in memory: {cand.fit['why']}"
    return cand


def fit_check(recipe: Recipe, point: Point) -> dict:
    """The estimate for this recipe, plus whether the objective's sequences fit in its KV room."""
    from sparkhelpers.models import fit
    from sparkhelpers.recipes.apply import recipe_spec

    spec = recipe_spec(recipe)
    args = recipe.engine_args
    kv_dtype = str(args.get("kv_cache_dtype") or "auto")
    try:
        est = fit.estimate(fit.FitInput(spec.name, spec.arch), tp=recipe.tensor_parallel,
                           pp=recipe.pipeline_parallel, max_model_len=spec.max_model_len,
                           gpu_memory_util=spec.gpu_memory_util, kv_cache_dtype=kv_dtype)
    except SparkError as exc:
        return {"fits": None, "why": f"no estimate: {exc.message}"}
    out = {"fits": est.fits, "why": est.verdict, "weights_gib_per_node": est.weights_gib_per_node,
           "max_context_tokens": est.max_context_tokens, "kv_dtype": est.kv_dtype}
    seqs = args.get("max_num_seqs") or args.get("parallel") or point.concurrency
    in_flight = min(int(seqs), point.concurrency)
    need = in_flight * (point.input_len + point.output_len)
    out["kv_tokens_needed"] = need
    if est.fits and est.max_context_tokens is not None and need > est.max_context_tokens:
        out["fits"] = False
        out["why"] = (f"{in_flight} sequences of {point.input_len}+{point.output_len} tokens need {need} KV tokens; "
                      f"the estimate has room for {est.max_context_tokens} ({kv_dtype} KV cache)")
    return out


def write_candidate(directory: Path, cand: Candidate) -> Path:
    """The candidate's recipe file (what is started, and what a winner's winner.yaml is)."""
    from sparkhelpers.recipes.export import dump_yaml

    assert cand.recipe is not None
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{cand.recipe_id.replace('@', '_')}.yaml"
    doc = flat_document(cand.recipe)
    doc["metadata"] = {**doc.get("metadata", {}), "tuned_from": cand.origin, "tune_changes": name_of(cand.changes)}
    path.write_text(dump_yaml(doc), encoding="utf-8")
    return path
