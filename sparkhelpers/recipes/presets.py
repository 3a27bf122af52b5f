"""A catalog preset is a recipe: the same document, built from the preset's fields."""

from __future__ import annotations

from typing import Any

from sparkhelpers.recipes import flags as fl
from sparkhelpers.recipes.render import args_to_map


def preset_to_document(preset: Any, default_image: str) -> dict[str, Any]:
    args: dict[str, Any] = {"gpu_memory_utilization": preset.gpu_memory_util}
    if preset.max_model_len:
        args["max_model_len"] = preset.max_model_len
    if preset.trust_remote_code:
        args["trust_remote_code"] = True
    if preset.expert_parallel and preset.nodes > 1:
        args["enable_expert_parallel"] = True
    args.update(args_to_map(list(preset.extra_args), fl.flag_set("vllm"), f"preset {preset.name} extra_args"))
    arch = {k: val for k, val in preset.arch.__dict__.items() if val is not None}
    doc: dict[str, Any] = {
        "recipe": 1, "name": preset.name, "description": preset.notes, "model": preset.repo,
        "image": preset.image or default_image,
        # the preset's size is its default; --nodes may spread it wider or --solo/--nodes shrink it
        # (TP = nodes / PP), as for the configured route
        "nodes": {"min": 1, "max": 8, "default": preset.nodes}, "pipeline_parallel": preset.pipeline_parallel,
        "engine_args": args,
        "metadata": {"preset": preset.name, "origin": preset.origin, "quantization": preset.quantization,
                     "gated": preset.gated, "arch": arch},
    }
    if preset.revision:
        doc["revision"] = preset.revision
    return doc


def preset_document(name: str, catalog: dict | None, default_image: str) -> dict[str, Any] | None:
    """The recipe document of catalog preset ``name`` (None: no such preset)."""
    if catalog is None:
        from sparkhelpers.models.catalog import load_catalog

        catalog = load_catalog()
    preset = catalog.get(name)
    return None if preset is None else preset_to_document(preset, default_image)
