"""Models: the catalog (data), memory-fit estimate, download into the HF cache and sync to workers.

The cluster helper uses ``resolve_model(cfg) -> ModelSpec`` and ``ensure_on_nodes(runner, spec, nodes)``.
"""

from sparkhelpers.models.catalog import ModelSpec, Preset, load_catalog, resolve_model

__all__ = ["ModelSpec", "Preset", "load_catalog", "resolve_model"]
