"""A recipe as the cluster runs it: the configuration it decides, and the ModelSpec the plan is built from.

The deployment (hosts, fabric, ports, state dir, secrets, timeouts) stays the configuration's; what is
served and how (model, image, runtime, layout, engine arguments, container env and settings) is the
recipe's alone, so no config.env engine key leaks into a recipe's start.
"""

from __future__ import annotations

import shlex

from sparkhelpers.config import Config
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


def config_recipe(spec, *, image: str, runtime: str, mode: str, served: str, lay, args: list[str],  # noqa: ANN001
                  cfg: Config) -> Recipe:
    """The configured model (config.env + preset) as the recipe it amounts to: the served values the plan
    rendered, so the configured route has an id like any recipe (`recipe export` can write it out)."""
    from sparkhelpers.recipes import flags as fl
    from sparkhelpers.recipes.render import args_to_map
    from sparkhelpers.recipes.schema import CONTAINER_DEFAULTS, NAME_RE, OWNED_ARGS

    flagset = fl.flag_set(runtime)
    engine = {k: val for k, val in args_to_map(list(args), flagset_with_owned(flagset), "the configured engine "
                                               "arguments").items() if k not in OWNED_ARGS and k != "ctx_size"}
    if runtime == "llama-cpp" and spec.max_model_len:
        engine["ctx_size"] = spec.max_model_len
    container = {**CONTAINER_DEFAULTS, "shm_size": cfg.get("SHM_SIZE", "16g"),
                 "ipc_host": cfg.get_bool("IPC_HOST", True), "privileged": cfg.get_bool("PRIVILEGED", False),
                 "docker_args": shlex.split(cfg.get("EXTRA_DOCKER_ARGS"))}
    name = spec.name.lower().replace("/", "-") if NAME_RE.match(spec.name.lower().replace("/", "-")) else "configured"
    return Recipe(name=name, model=spec.repo, runtime=runtime, image=image, nodes=lay.nodes,
                  tensor_parallel=lay.tensor_parallel, pipeline_parallel=lay.pipeline_parallel,
                  launch=cfg.get("LAUNCH_MODE", "auto") if mode in ("ray", "native") else "auto",
                  served_name=served, revision=spec.revision or "", engine_args=engine, container=container,
                  source="config.env")


def flagset_with_owned(flagset):  # noqa: ANN001, ANN201
    """The flag set plus the flags the plan itself renders (parallel sizes, served name, revision, host)."""
    from sparkhelpers.recipes import flags as fl

    extra = {k: fl.Flag(k, "--" + k.replace("_", "-"), "str") for k in
             ("served_model_name", "tensor_parallel_size", "pipeline_parallel_size", "revision", "host", "port",
              "alias", "ctx_size")}
    return fl.FlagSet(flagset.runtime, flagset.version, {**extra, **flagset.flags})


def config_recipe_id(spec, *, cfg: Config, **plan) -> str:  # noqa: ANN001
    """The id of what a plan serves: its recipe's, or the configured model's as a recipe ("" when the
    configuration holds engine flags a recipe cannot carry, e.g. one unknown to the engine's flag set)."""
    from sparkhelpers.errors import SparkError
    from sparkhelpers.recipes.identity import recipe_id

    if spec.recipe is not None:
        return recipe_id(spec.recipe)
    try:
        return recipe_id(config_recipe(spec, cfg=cfg, **plan))
    except SparkError:
        return ""


def running_recipe_id(cfg: Config) -> str:
    """The recipe id the running cluster was started with (its start's state file), "" when unknown."""
    import json

    from sparkhelpers.config import state_dir

    path = state_dir(cfg) / "run" / cfg.get("CLUSTER_NAME", "spark") / "state.json"
    try:
        return str(json.loads(path.read_text()).get("recipe_id") or "")
    except (OSError, ValueError, AttributeError):
        return ""
