"""The rows of ``models list``: each preset as this cluster would serve it, and whether it fits here.

"Fits" is judged against this cluster: the preset's layout must not need more nodes than head +
WORKER_HOST, and its weights and KV cache must fit a GB10 node's usable memory (the fit estimate).
"""

from __future__ import annotations

from pathlib import Path

from sparkhelpers.config import Config
from sparkhelpers.models import catalog as cat
from sparkhelpers.models import fit, snapshot_check


def fit_for_spec(spec: cat.ModelSpec, **overrides) -> fit.FitResult:  # noqa: ANN003
    return fit.estimate(fit.FitInput(spec.name, spec.arch), tp=spec.tensor_parallel, pp=spec.pipeline_parallel,
                        max_model_len=spec.max_model_len, gpu_memory_util=spec.gpu_memory_util, **overrides)


def fits_here(spec: cat.ModelSpec, result: fit.FitResult, available: int) -> tuple[bool | None, str]:
    """(fits on this cluster, why not) for a preset's layout and its memory estimate."""
    if spec.nodes > available:
        return False, f"needs {spec.nodes} nodes, this cluster has {available}"
    if result.fits is False:
        return False, result.verdict
    return result.fits, "" if result.fits else result.verdict


def preset_rows(cfg: Config) -> list[dict]:
    from sparkhelpers.topology import available_nodes

    presets = cat.catalog_for(cfg)
    current = cat.lookup(presets, cfg.get("MODEL")) if cfg.get("MODEL") else None
    cache, available = cfg.get("HF_CACHE"), available_nodes(cfg)
    rows = []
    for number, (name, preset) in enumerate(presets.items(), start=1):
        spec = cat.resolve_model(cfg, name, presets)
        result = fit_for_spec(spec)
        fits, why = fits_here(spec, result, available)
        cached = False
        if Path(snapshot_check.repo_dir(cache, preset.repo)).is_dir():
            cached = snapshot_check.check(cache, preset.repo, spec.revision)["complete"]
        rows.append({"number": number, "name": name, "repo": preset.repo,
                     "size_gib": round(result.weights_gib_total, 1) if result.weights_gib_total else None,
                     "nodes": spec.nodes, "tensor_parallel": spec.tensor_parallel,
                     "max_model_len": spec.max_model_len, "gated": preset.gated, "cached": cached,
                     "current": current is not None and current.name == name, "fits": fits, "fits_why": why,
                     "cluster_nodes": available, "origin": preset.origin})
    return rows
