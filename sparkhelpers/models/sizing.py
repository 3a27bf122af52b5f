"""What ``models fit TARGET`` sizes: a preset, a model directory, or a raw repo id.

A raw repo id is sized from its safetensors headers (exact bytes, parameter count and dtype): the cached
snapshot when there is one (or when HF_HUB_OFFLINE=1), else the Hub's metadata (config.json plus
``get_safetensors_metadata``, which reads only each shard's header with a range request).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

from sparkhelpers.config import Config
from sparkhelpers.errors import SparkError, UsageError
from sparkhelpers.models import catalog as cat
from sparkhelpers.models import fit, snapshot_check
from sparkhelpers.models.arch import arch_from_config


@dataclass
class Target:
    inp: fit.FitInput
    tp: int = 1
    pp: int = 1
    max_model_len: int | None = None
    gpu_memory_util: float = 0.85


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def from_hub(repo: str, revision: str | None, *, token: str = "", cache_dir: str | None = None) -> fit.FitInput:
    """config.json and the safetensors headers from the Hub (HF_ENDPOINT), nothing else downloaded."""
    from huggingface_hub import get_safetensors_metadata, hf_hub_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    try:
        config = hf_hub_download(repo, "config.json", revision=revision, token=token or None, cache_dir=cache_dir)
        meta = get_safetensors_metadata(repo, revision=revision, token=token or None)
    except GatedRepoError:
        raise SparkError(f"{repo} is gated and this token has no access", fix="request access on the Hub, then set "
                         "HF_TOKEN (sparkhelpers config set HF_TOKEN -) or run hf auth login") from None
    except RepositoryNotFoundError:
        raise UsageError(f"{repo} is not on the Hub (or is private)", fix="check the repo id; private repos need "
                         "HF_TOKEN") from None
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise SparkError(f"cannot read {repo}'s metadata from the Hub: {type(exc).__name__}: {str(exc)[:160]}",
                         fix=f"sparkhelpers models download {repo} (then fit sizes the cached files), or give "
                             "--params N --dtype bf16") from None
    arch = arch_from_config(json.loads(Path(config).read_text(encoding="utf-8")))
    headers = [{name: {"dtype": t.dtype, "shape": t.shape, "data_offsets": list(t.data_offsets)}
                for name, t in f.tensors.items()} for f in meta.files_metadata.values()]
    inp = fit.FitInput(label=repo, arch=arch)
    fit.apply_headers(inp, headers, "the Hub's safetensors metadata")
    return inp


def from_repo(cfg: Config, spec: cat.ModelSpec) -> fit.FitInput:
    """A raw repo id: the cached snapshot first, else the Hub (unless offline)."""
    snap = snapshot_check.snapshot_dir(cfg.get("HF_CACHE"), spec.repo, spec.revision)
    if snap and Path(snap, "config.json").is_file():
        inp = fit.fit_input_from_dir(Path(snap))
        inp.label = spec.name
        return inp
    if _offline():
        raise SparkError(f"{spec.repo} is not in the cache ({cfg.get('HF_CACHE')}) and HF_HUB_OFFLINE is set",
                         fix=f"sparkhelpers models download {spec.repo} with network, or give --params N --dtype bf16")
    from sparkhelpers.secrets import secret_value

    return from_hub(spec.repo, spec.revision, token=secret_value(cfg, "HF_TOKEN"),
                    cache_dir=cfg.get("HF_CACHE") or None)


def resolve(cfg_loader, target: str, *, params: float | None = None) -> Target:  # noqa: ANN001
    """The FitInput and the default layout for a preset, a directory or a raw repo id."""
    path = Path(target).expanduser()
    if path.is_dir():
        return Target(fit.fit_input_from_dir(path))
    if "/" in target and not cat.REPO_RE.match(target) or target.startswith((".", "~")):
        raise UsageError(f"{target} is not a directory", fix="give a model directory with config.json, or a preset")
    cfg = cfg_loader()
    spec = cat.resolve_model(cfg, target)
    if spec.preset:
        inp = fit.FitInput(spec.name, spec.arch)
    elif params:  # the user's own parameter count: the cached config.json if any, never the network
        snap = snapshot_check.snapshot_dir(cfg.get("HF_CACHE"), spec.repo, spec.revision)
        inp = fit.fit_input_from_dir(Path(snap)) if snap and Path(snap, "config.json").is_file() else \
            fit.FitInput(spec.name, spec.arch)
        inp.label = spec.name
    else:
        inp = from_repo(cfg, spec)
    return Target(inp, spec.tensor_parallel, spec.pipeline_parallel, spec.max_model_len, spec.gpu_memory_util)


def with_dtype(inp: fit.FitInput, dtype: str) -> fit.FitInput:
    """``--dtype``: the weights' dtype when the files cannot tell (with --params)."""
    if fit.dtype_bytes(dtype) is None:
        raise UsageError(f"unknown --dtype {dtype!r}", fix="bf16, fp16, fp32, fp8, int8, nvfp4, mxfp4 or int4")
    return replace(inp, arch=replace(inp.arch, weight_dtype=dtype.lower()))
