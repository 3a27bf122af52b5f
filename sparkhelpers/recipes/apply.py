"""A recipe as the cluster runs it: the configuration it decides, and the ModelSpec the plan is built from.

The deployment (hosts, fabric, ports, state dir, secrets, timeouts) stays the configuration's; what is
served and how (model, image, runtime, layout, engine arguments, container env and settings) is the
recipe's alone, so no config.env engine key leaks into a recipe's start.
"""

from __future__ import annotations

import shlex

from sparkhelpers.config import Config
from sparkhelpers.errors import SparkError
from sparkhelpers.recipes.schema import Recipe

# Config keys that say how a model is served: a recipe's start ignores their configured values.
SERVED_KEYS_CLEARED = ("MAX_MODEL_LEN", "ENABLE_PREFIX_CACHING", "KV_CACHE_DTYPE", "ENABLE_CHUNKED_PREFILL",
                       "MAX_NUM_SEQS", "MAX_NUM_BATCHED_TOKENS", "SPECULATIVE_CONFIG", "LOAD_FORMAT", "EXTRA_ARGS",
                       "MODEL_REVISION", "TRUST_REMOTE_CODE", "ENABLE_EXPERT_PARALLEL", "GPU_MEMORY_UTIL")


def recipe_config(cfg: Config, recipe: Recipe) -> Config:
    """``cfg`` with the values the recipe decides on top (as flags: nothing wins over them)."""
    c = recipe.container
    overrides: dict[str, str | None] = {key: "" for key in SERVED_KEYS_CLEARED}
    overrides.update(
        MODEL=recipe.repo, RUNTIME=recipe.runtime, LAUNCH_MODE=recipe.launch, VLLM_IMAGE=recipe.image,
        SERVED_MODEL_NAME=recipe.served_name, TENSOR_PARALLEL=str(recipe.tensor_parallel),
        PIPELINE_PARALLEL=str(recipe.pipeline_parallel), IPC_HOST="true" if c["ipc_host"] else "false",
        SHM_SIZE=c["shm_size"], PRIVILEGED="true" if c["privileged"] else "false",
        EXTRA_DOCKER_ARGS=shlex.join(c["docker_args"]),
    )
    return cfg.with_overrides(**overrides)


def recipe_spec(recipe: Recipe):  # noqa: ANN201 - a models.catalog.ModelSpec
    """The ModelSpec of a recipe: the layout it fixes, the facts the fit estimate and model sync need."""
    from sparkhelpers.models.arch import Arch
    from sparkhelpers.models.catalog import ModelSpec
    from sparkhelpers.topology import LayoutAsk

    args = recipe.engine_args
    arch_raw = (recipe.metadata.get("arch") or {}) if isinstance(recipe.metadata, dict) else {}
    try:
        arch = Arch(**arch_raw)
    except TypeError:
        arch = Arch()
    max_len = args.get("max_model_len") if isinstance(args.get("max_model_len"), int) else None
    return ModelSpec(
        name=recipe.name, repo=recipe.repo, revision=recipe.revision or None, preset=None, nodes=recipe.nodes,
        tensor_parallel=recipe.tensor_parallel, pipeline_parallel=recipe.pipeline_parallel,
        max_model_len=max_len, gpu_memory_util=float(args.get("gpu_memory_utilization", 0.9)),
        quantization=args.get("quantization"), gated=False, trust_remote_code=bool(args.get("trust_remote_code")),
        expert_parallel=bool(args.get("enable_expert_parallel")), image=recipe.image, extra_args=(), arch=arch,
        sources={"recipe": recipe.source},
        ask=LayoutAsk(pipeline_parallel=recipe.pipeline_parallel, tensor_parallel=recipe.tensor_parallel),
        recipe=recipe)


def load_for_start(cfg: Config, ref: str, nodes: int | None = None, solo: bool = False):  # noqa: ANN201
    """(config, spec) to start recipe ``ref`` with: the recipe resolved for the node count asked for."""
    from sparkhelpers.recipes.loader import load

    count = 1 if solo else nodes
    recipe = load(ref, nodes=count, recipe_path=cfg.get("RECIPE_PATH"), default_image=cfg.get("VLLM_IMAGE"),
                  catalog_file=cfg.get("MODEL_CATALOG"))
    return recipe_config(cfg, recipe), recipe_spec(recipe)


# Recipe fields (and deployment keys) a flag in EXTRA_ARGS would bypass -> the config key that sets it.
CONFIG_KEY_OF = {"model": "MODEL", "served_name": "SERVED_MODEL_NAME", "revision": "MODEL_REVISION",
                 "tensor_parallel": "TENSOR_PARALLEL", "pipeline_parallel": "PIPELINE_PARALLEL",
                 "launch": "LAUNCH_MODE", "nodes": "the start's --nodes"}


def config_recipe(spec, *, image: str, runtime: str, mode: str, served: str, lay, cfg: Config) -> Recipe:  # noqa: ANN001
    """The configured model (config.env + preset) as the recipe it amounts to; the plan renders its argv
    with the recipe renderer, so the configured route and a recipe share one rendering (and an id)."""
    from sparkhelpers import validate as v
    from sparkhelpers.recipes.schema import CONTAINER_DEFAULTS, NAME_RE

    flagset = config_flagset(cfg, runtime)
    container = {**CONTAINER_DEFAULTS, "shm_size": cfg.get("SHM_SIZE", "16g"),
                 "ipc_host": cfg.get_bool("IPC_HOST", True), "privileged": cfg.get_bool("PRIVILEGED", False),
                 "docker_args": shlex.split(cfg.get("EXTRA_DOCKER_ARGS"))}
    slug = spec.name.lower().replace("/", "-")
    return Recipe(name=slug if NAME_RE.match(slug) else "configured", model=spec.repo, runtime=runtime,
                  image=image, nodes=lay.nodes, tensor_parallel=lay.tensor_parallel,
                  pipeline_parallel=lay.pipeline_parallel,
                  launch=cfg.get("LAUNCH_MODE", "auto") if mode in ("ray", "native") else "auto",
                  served_name=served, revision=v.revision(spec.revision or ""),
                  engine_args=config_engine_args(cfg, spec, flagset), container=container,
                  engine_version=(v.setting(cfg, "ENGINE_VERSION") or "") if runtime == "vllm" else "",
                  source="config.env")


def config_flagset(cfg: Config, runtime: str):  # noqa: ANN201 - a flags.FlagSet
    """The flag set the configured route is checked against: vLLM's of ENGINE_VERSION (empty: the default)."""
    from sparkhelpers import validate as v
    from sparkhelpers.recipes import flags as fl

    return fl.flag_set(runtime, (v.setting(cfg, "ENGINE_VERSION") or None) if runtime == "vllm" else None)


def check_extra_args(cfg: Config) -> None:
    """Refuse a bad EXTRA_ARGS flag now, as the plan would at start: for callers that change something first
    (the switch stops the cluster before it starts the new model)."""
    from sparkhelpers import validate as v

    extra_args_map(cfg, config_flagset(cfg, v.setting(cfg, "RUNTIME", "vllm")))


def extra_args_problems(cfg: Config) -> list[SparkError]:
    """`config check`'s view of check_extra_args: [] when the flags are fine, or when RUNTIME, ENGINE_VERSION or
    EXTRA_ARGS is already bad by its own rule (validate.problems reports that one)."""
    from sparkhelpers import validate as v

    try:
        for key in ("RUNTIME", "ENGINE_VERSION", "EXTRA_ARGS"):
            v.setting(cfg, key)
    except SparkError:
        return []
    try:
        check_extra_args(cfg)
    except SparkError as exc:
        return [exc]
    return []


def config_engine_args(cfg: Config, spec, flagset) -> dict:  # noqa: ANN001
    """The configured route's engine arguments as a recipe map, later sources winning as in argparse: the
    model spec (the preset with the user's values on top), the Tier-1 keys, the preset's extra_args, then
    EXTRA_ARGS, whose every flag must be one of the engine version's."""
    from sparkhelpers import validate as v
    from sparkhelpers.recipes.render import args_to_map

    if flagset.runtime == "llama-cpp":
        args: dict = {"ctx_size": v.check("MAX_MODEL_LEN", spec.max_model_len)} if spec.max_model_len else {}
        return {**args, **extra_args_map(cfg, flagset)}
    args = {"gpu_memory_utilization": v.check("GPU_MEMORY_UTIL", spec.gpu_memory_util)}
    if spec.max_model_len:
        args["max_model_len"] = v.check("MAX_MODEL_LEN", spec.max_model_len)
    if spec.trust_remote_code:
        args["trust_remote_code"] = True
    if spec.expert_parallel:
        args["enable_expert_parallel"] = True
    args.update(tier1_map(cfg))
    args.update(args_to_map(list(spec.extra_args), flagset, f"preset {spec.name} extra_args"))
    args.update(extra_args_map(cfg, flagset))
    return args


def tier1_map(cfg: Config) -> dict:
    """The engine options set in config only (prefix caching, KV dtype, batching, speculation, loading)."""
    from sparkhelpers import validate as v

    out: dict = {}  # each key is its engine argument in upper case; empty (and "auto") = the engine's default
    for key in ("ENABLE_PREFIX_CACHING", "KV_CACHE_DTYPE", "ENABLE_CHUNKED_PREFILL", "MAX_NUM_SEQS",
                "MAX_NUM_BATCHED_TOKENS", "SPECULATIVE_CONFIG", "LOAD_FORMAT"):
        if v.setting(cfg, key) not in (None, "", "auto"):
            out[key.lower()] = v.setting(cfg, key)
    return out


def extra_args_map(cfg: Config, flagset) -> dict:  # noqa: ANN001
    """EXTRA_ARGS as engine arguments: an unknown flag, or one a config key owns, is refused in one line."""
    from sparkhelpers import validate as v
    from sparkhelpers.recipes import flags as fl
    from sparkhelpers.recipes.render import args_to_map
    from sparkhelpers.recipes.schema import OWNED_ARGS

    hint = (f"ENGINE_VERSION picks the vLLM whose flags are checked (known: {', '.join(fl.known_versions())})"
            if flagset.runtime == "vllm" else "")
    args = args_to_map(v.setting(cfg, "EXTRA_ARGS", []), flagset_with_owned(flagset), "EXTRA_ARGS", hint)
    for key in args:
        if key in OWNED_ARGS:
            owner = OWNED_ARGS[key]
            owner = CONFIG_KEY_OF.get(owner, owner.removeprefix("the deployment (").rstrip(")"))
            raise SparkError(f"EXTRA_ARGS: --{key.replace('_', '-')} is set by {owner}, not by EXTRA_ARGS",
                             fix=f"remove it from EXTRA_ARGS{'' if ' ' in owner else f' and set {owner}'}")
    return args


def flagset_with_owned(flagset):  # noqa: ANN001, ANN201
    """The flag set plus the flags the plan itself renders (parallel sizes, served name, revision, host), so
    EXTRA_ARGS naming one is parsed, then refused with the config key that owns it."""
    from sparkhelpers.recipes import flags as fl

    extra = {k: fl.Flag(k, "--" + k.replace("_", "-"), "str") for k in
             ("served_model_name", "tensor_parallel_size", "pipeline_parallel_size", "revision", "host", "port",
              "alias", "model")}
    return fl.FlagSet(flagset.runtime, flagset.version, {**extra, **flagset.flags}, flagset.aliases)


def running_recipe_id(cfg: Config) -> str:
    """The recipe id the running cluster was started with (its start's state file), "" when unknown."""
    import json

    from sparkhelpers.config import state_dir

    path = state_dir(cfg) / "run" / cfg.get("CLUSTER_NAME", "spark") / "state.json"
    try:
        return str(json.loads(path.read_text()).get("recipe_id") or "")
    except (OSError, ValueError, AttributeError):
        return ""
