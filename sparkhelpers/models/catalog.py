"""The model catalog (YAML data, validated on load) and ``resolve_model``: config -> ModelSpec.

The built-in ``catalog.yaml`` sits beside this module; ``MODEL_CATALOG`` names an optional user
file in the same format whose entries extend ours or override them field by field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sparkhelpers import validate as v
from sparkhelpers.config import Config
from sparkhelpers.errors import SparkError, did_you_mean
from sparkhelpers.models.arch import ARCH_FIELDS, ATTENTION_KINDS, Arch, dtype_bytes
from sparkhelpers.topology import LayoutAsk, available_nodes, choose_layout

BUILTIN = Path(__file__).with_name("catalog.yaml")
REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
# Config keys whose preset value loses only to a value the user gave (flag, env, config.local.env).
USER_SOURCES_EXCLUDED = {"default", "config.env"}

# field -> (python types, required). The schema lives here so errors can name entry and field.
_ENTRY_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "repo": ((str,), True),
    "revision": ((str, type(None)), False),
    "nodes": ((int,), False),
    "tensor_parallel": ((int,), False),
    "pipeline_parallel": ((int,), False),
    "max_model_len": ((int,), False),
    "gpu_memory_util": ((float, int), False),
    "quantization": ((str, type(None)), False),
    "gated": ((bool,), False),
    "trust_remote_code": ((bool,), False),
    "expert_parallel": ((bool,), False),
    "image": ((str, type(None)), False),
    "extra_args": ((list,), False),
    "notes": ((str,), False),
    "arch": ((dict,), False),
}
@dataclass(frozen=True)
class Preset:
    name: str
    repo: str
    revision: str | None = None
    nodes: int = 1
    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    max_model_len: int | None = None
    gpu_memory_util: float = 0.85
    quantization: str | None = None
    gated: bool = False
    trust_remote_code: bool = False
    expert_parallel: bool = False
    image: str | None = None
    extra_args: tuple[str, ...] = ()
    notes: str = ""
    arch: Arch = field(default_factory=Arch)
    origin: str = "built-in"


@dataclass(frozen=True)
class ModelSpec:
    """What the cluster serves: a preset (or a raw repo id) with the config's explicit values on top."""

    name: str  # preset name, or the repo id for a raw repo
    repo: str
    revision: str | None
    preset: Preset | None
    nodes: int
    tensor_parallel: int
    pipeline_parallel: int
    max_model_len: int | None
    gpu_memory_util: float
    quantization: str | None
    gated: bool
    trust_remote_code: bool
    expert_parallel: bool
    image: str | None
    extra_args: tuple[str, ...]
    arch: Arch
    sources: dict[str, str] = field(default_factory=dict)
    ask: LayoutAsk = field(default_factory=LayoutAsk)  # what the layout rule gets (sparkhelpers.topology)
    recipe: Any = None  # a sparkhelpers.recipes.Recipe: then it alone says how the model is served

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "repo": self.repo, "revision": self.revision,
            "preset": self.preset.name if self.preset else None, "nodes": self.nodes,
            "tensor_parallel": self.tensor_parallel, "pipeline_parallel": self.pipeline_parallel,
            "max_model_len": self.max_model_len, "gpu_memory_util": self.gpu_memory_util,
            "quantization": self.quantization, "gated": self.gated, "trust_remote_code": self.trust_remote_code,
            "expert_parallel": self.expert_parallel, "image": self.image, "extra_args": list(self.extra_args),
            "arch": {k: v for k, v in self.arch.__dict__.items() if v is not None}, "sources": self.sources,
        }


def _check_type(where: str, key: str, value: Any, types: tuple[type, ...]) -> None:
    # bool is an int in Python; `nodes: true` must still be rejected
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if not ok:
        names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
        raise SparkError(f"{where}: {key} must be {names}, not {value!r}",
                         fix="correct the entry (format documented at the top of sparkhelpers/models/catalog.yaml)")


def _number(value: Any) -> Any:
    """YAML 1.1 reads 70.6e9 (no exponent sign) as a string; accept it as the number it means."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def parse_entry(name: str, raw: Any, origin: str, base: Preset | None = None) -> Preset:
    """Validate one entry. With ``base`` (an entry of the same name in a lower file) fields merge."""
    where = f"{origin}: model {name!r}"
    if not NAME_RE.match(str(name)):
        raise SparkError(f"{where}: name must be lower-case letters, digits, '.', '_' or '-'",
                         fix="rename the entry, e.g. my-model-8b")
    if not isinstance(raw, dict):
        raise SparkError(f"{where}: entry must be a mapping of fields", fix="see catalog.yaml for the format")
    unknown = sorted(set(raw) - set(_ENTRY_FIELDS))
    if unknown:
        raise SparkError(f"{where}: unknown field(s) {', '.join(unknown)}",
                         fix=f"known fields: {', '.join(_ENTRY_FIELDS)}")
    for key, value in raw.items():
        _check_type(where, key, value, _ENTRY_FIELDS[key][0])
    if base is None and "repo" not in raw:
        raise SparkError(f"{where}: repo is required", fix="add repo: org/name (the Hugging Face repo id)")
    values: dict[str, Any] = {k: v for k, v in raw.items() if k != "arch"}
    if "repo" in values and not REPO_RE.match(values["repo"]):
        raise SparkError(f"{where}: repo {values['repo']!r} is not a Hugging Face repo id",
                         fix="use org/name, e.g. Qwen/Qwen3-8B")
    if "extra_args" in values:
        if not all(isinstance(a, str) for a in values["extra_args"]):
            raise SparkError(f"{where}: extra_args must be a list of strings", fix='e.g. ["--enable-prefix-caching"]')
        values["extra_args"] = tuple(values["extra_args"])
    if "gpu_memory_util" in values:
        values["gpu_memory_util"] = float(values["gpu_memory_util"])
    arch_raw = raw.get("arch") or {}
    unknown = sorted(set(arch_raw) - set(ARCH_FIELDS))
    if unknown:
        raise SparkError(f"{where}: unknown arch field(s) {', '.join(unknown)}",
                         fix=f"known arch fields: {', '.join(ARCH_FIELDS)}")
    arch_raw = {k: _number(v) if float in ARCH_FIELDS[k] else v for k, v in arch_raw.items()}
    for key, value in arch_raw.items():
        _check_type(f"{where} arch", key, value, ARCH_FIELDS[key])
    arch_vals = {k: (float(v) if k in ("params", "bytes_per_param", "checkpoint_gib") else v)
                 for k, v in arch_raw.items()}
    arch = replace(base.arch, **arch_vals) if base else Arch(**arch_vals)
    preset = replace(base, **values, arch=arch, origin=origin) if base else Preset(
        name=name, **values, arch=arch, origin=origin)
    _check_consistency(where, preset)
    return preset


def _check_consistency(where: str, p: Preset) -> None:
    for key in ("nodes", "tensor_parallel", "pipeline_parallel"):
        if getattr(p, key) < 1:
            raise SparkError(f"{where}: {key} must be at least 1", fix=f"set {key}: 1 or more")
    if p.nodes != p.tensor_parallel * p.pipeline_parallel:
        raise SparkError(f"{where}: nodes ({p.nodes}) must equal tensor_parallel x pipeline_parallel "
                         f"({p.tensor_parallel} x {p.pipeline_parallel}); a GB10 node has one GPU",
                         fix="make nodes = tensor_parallel x pipeline_parallel")
    if p.max_model_len is not None and p.max_model_len < 1:
        raise SparkError(f"{where}: max_model_len must be positive", fix="e.g. max_model_len: 32768")
    try:
        v.check("GPU_MEMORY_UTIL", p.gpu_memory_util)
    except SparkError as exc:
        raise SparkError(f"{where}: gpu_memory_util: {exc.message}", fix="use a fraction such as 0.85") from None
    a = p.arch
    if a.attention is not None and a.attention not in ATTENTION_KINDS:
        raise SparkError(f"{where}: arch attention must be one of {', '.join(ATTENTION_KINDS)}, not {a.attention!r}",
                         fix="dense for GQA/MHA, mla for DeepSeek-style latent attention, hybrid for Mamba mixes")
    if a.attention == "mla" and (a.kv_lora_rank is None or a.qk_rope_head_dim is None):
        raise SparkError(f"{where}: MLA needs arch kv_lora_rank and qk_rope_head_dim",
                         fix="copy them from the model's config.json")
    if a.attention == "hybrid" and a.attention_layers is None:
        raise SparkError(f"{where}: hybrid attention needs arch attention_layers",
                         fix="count the attention layers in the model's config.json")
    if a.weight_dtype is not None and dtype_bytes(a.weight_dtype) is None and a.bytes_per_param is None:
        raise SparkError(f"{where}: unknown weight_dtype {a.weight_dtype!r}",
                         fix="use bf16, fp16, fp32, fp8, int8, nvfp4, mxfp4 or int4, or give bytes_per_param")


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SparkError(f"cannot read model catalog {path}: {exc.strerror}",
                         fix="check MODEL_CATALOG (sparkhelpers config get MODEL_CATALOG)") from None
    except yaml.YAMLError as exc:
        raise SparkError(f"model catalog {path} is not valid YAML: {exc}".replace("\n", " "),
                         fix="fix the YAML syntax") from None
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise SparkError(f"model catalog {path} has no `models:` mapping", fix="start the file with `models:`")
    extra = sorted(set(data) - {"models"})
    if extra:
        raise SparkError(f"model catalog {path}: unknown top-level key(s) {', '.join(extra)}",
                         fix="only `models:` is allowed at the top level")
    return data["models"]


def load_catalog(user_file: str | Path | None = None) -> dict[str, Preset]:
    """Built-in presets, then the user file's entries on top (new names extend, same names merge)."""
    presets: dict[str, Preset] = {}
    for name, raw in _read_yaml(BUILTIN).items():
        presets[str(name)] = parse_entry(str(name), raw, "built-in catalog")
    if user_file:
        path = Path(user_file).expanduser()
        if not path.is_file():
            raise SparkError(f"MODEL_CATALOG points at {path}, which does not exist",
                             fix="create it or unset MODEL_CATALOG (sparkhelpers config unset MODEL_CATALOG)")
        for name, raw in _read_yaml(path).items():
            presets[str(name)] = parse_entry(str(name), raw, str(path), base=presets.get(str(name)))
    return presets


def catalog_for(cfg: Config) -> dict[str, Preset]:
    return load_catalog(cfg.get("MODEL_CATALOG") or None)


def lookup(catalog: dict[str, Preset], choice: str) -> Preset | None:
    """A preset by name, by its number in `models list` (1-based), or by repo id. None: not a preset."""
    if choice in catalog:
        return catalog[choice]
    if choice.lower() in catalog:  # names are lower-case by rule: QWEN3-8B can only mean qwen3-8b
        return catalog[choice.lower()]
    if choice.isdigit():
        names = list(catalog)
        index = int(choice)
        if not 1 <= index <= len(names):
            raise SparkError(f"there is no preset number {choice} (1-{len(names)})",
                             fix="see the numbers in `switch_model.sh --list`")
        return catalog[names[index - 1]]
    for preset in catalog.values():
        if preset.repo.lower() == choice.lower():  # Hub repo ids are case-insensitive
            return preset
    return None


def _explicit(cfg: Config, key: str) -> bool:
    return cfg.get(key) != "" and cfg.source(key) not in USER_SOURCES_EXCLUDED


def resolve_model(cfg: Config, choice: str | None = None, catalog: dict[str, Preset] | None = None) -> ModelSpec:
    """MODEL (or ``choice``) as a ModelSpec. Preset values are defaults; values the user set explicitly
    (flag, environment, config.local.env) for the parallel sizes, context, memory, revision, image,
    trust-remote-code and expert parallel win."""
    catalog = catalog if catalog is not None else catalog_for(cfg)
    choice = choice or cfg.require("MODEL")
    preset = lookup(catalog, choice)
    if preset is None and not REPO_RE.match(choice):
        hint = did_you_mean(choice, [*catalog, *(p.repo for p in catalog.values())])
        raise SparkError(f"{choice!r} is neither a catalog preset nor a Hugging Face repo id",
                         fix=f"{hint} (sparkhelpers models list)" if hint
                         else "pick a name from `sparkhelpers models list`, or give org/name")
    sources: dict[str, str] = {}
    base = preset or Preset(name=choice, repo=choice, origin="raw repo id")

    def pick(key: str, preset_value: Any, convert) -> Any:  # noqa: ANN001
        if _explicit(cfg, key):
            sources[key] = cfg.source(key)
            return convert(key)
        if preset is not None:
            sources[key] = f"preset {preset.name}"
            return preset_value
        sources[key] = cfg.source(key)
        return convert(key) if cfg.get(key) != "" else preset_value

    pp = pick("PIPELINE_PARALLEL", base.pipeline_parallel, cfg.get_int)
    ask = _layout_ask(cfg, preset, pp, sources)
    lay = choose_layout(ask, available=available_nodes(cfg), runtime=cfg.get("RUNTIME", "vllm"), check=False)
    tp = lay.tensor_parallel
    max_len = pick("MAX_MODEL_LEN", base.max_model_len, cfg.get_int)
    util = pick("GPU_MEMORY_UTIL", base.gpu_memory_util, cfg.get_float)
    try:
        v.check("GPU_MEMORY_UTIL", util)
    except SparkError as exc:
        raise SparkError(f"{exc.message} ({sources['GPU_MEMORY_UTIL']})", fix=exc.fix) from None
    revision = pick("MODEL_REVISION", base.revision, cfg.get) or None
    trust = pick("TRUST_REMOTE_CODE", base.trust_remote_code, cfg.get_bool)
    ep_raw = cfg.get("ENABLE_EXPERT_PARALLEL", "auto").lower()
    if ep_raw in ("", "auto"):
        expert_parallel = base.expert_parallel and tp * pp > 1
        sources["ENABLE_EXPERT_PARALLEL"] = f"preset {preset.name}" if preset else "auto"
    else:
        expert_parallel = cfg.get_bool("ENABLE_EXPERT_PARALLEL")
        sources["ENABLE_EXPERT_PARALLEL"] = cfg.source("ENABLE_EXPERT_PARALLEL")
    image = cfg.get("VLLM_IMAGE") if _explicit(cfg, "VLLM_IMAGE") or not base.image else base.image
    return ModelSpec(
        name=preset.name if preset else choice, repo=base.repo, revision=revision, preset=preset,
        nodes=lay.nodes, tensor_parallel=tp, pipeline_parallel=lay.pipeline_parallel, max_model_len=max_len,
        gpu_memory_util=util,
        quantization=base.quantization, gated=base.gated, trust_remote_code=trust,
        expert_parallel=expert_parallel, image=image or None, extra_args=base.extra_args, arch=base.arch,
        sources=sources, ask=ask,
    )


def _layout_ask(cfg: Config, preset: Preset | None, pp: int, sources: dict[str, str]) -> LayoutAsk:
    """What the model asks of the layout rule (sparkhelpers.topology): the user's TP wins, then the
    preset's; a raw repo with none asks for one TP rank per node."""
    user_tp = _explicit(cfg, "TENSOR_PARALLEL") or (preset is None and cfg.get("TENSOR_PARALLEL") != "")
    if user_tp:
        sources["TENSOR_PARALLEL"] = cfg.source("TENSOR_PARALLEL")
        tp = cfg.get_int("TENSOR_PARALLEL")
        if tp < 1:
            raise SparkError(f"TENSOR_PARALLEL={tp} must be at least 1",
                             fix="sparkhelpers config set TENSOR_PARALLEL 1")
    else:
        sources["TENSOR_PARALLEL"] = f"preset {preset.name}" if preset else "one per node"
    if pp < 1:
        raise SparkError(f"PIPELINE_PARALLEL={pp} must be at least 1",
                         fix="sparkhelpers config set PIPELINE_PARALLEL 1")
    return LayoutAsk(pipeline_parallel=pp, tensor_parallel=tp if user_tp else None,
                     preset_tensor_parallel=preset.tensor_parallel if preset else None)
