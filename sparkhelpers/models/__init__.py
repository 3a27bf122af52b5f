"""Models: the catalog (data), memory-fit estimate, download into the HF cache and sync to workers.

The cluster helper uses ``resolve_model(cfg) -> ModelSpec`` and
``ensure_on_nodes(runner, spec, workers_from_config(cfg))``.
"""

from sparkhelpers.models.catalog import ModelSpec, Preset, load_catalog, resolve_model
from sparkhelpers.models.sync import Worker, ensure_on_nodes, workers_from_config

__all__ = ["ModelSpec", "Preset", "Worker", "ensure_on_nodes", "load_catalog", "resolve_model",
           "workers_from_config"]
