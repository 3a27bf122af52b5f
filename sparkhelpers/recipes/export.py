"""Recipe -> other formats: our own (exact, defaults explicit), sparkrun v2, llama-swap, Kubernetes."""

from __future__ import annotations

from typing import Any

from sparkhelpers.recipes.identity import normalized, recipe_id
from sparkhelpers.recipes.render import render_args
from sparkhelpers.recipes.schema import SCHEMA_VERSION, Recipe

TARGETS = ("recipe", "sparkrun", "llama-swap", "rayservice", "raycluster", "lws")


def dump_yaml(data: Any) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True, width=120)


def to_document(recipe: Recipe) -> dict[str, Any]:
    """Our format, exact: what `recipe show` prints and what hashes to the same id."""
    doc: dict[str, Any] = {"recipe": SCHEMA_VERSION, "name": recipe.name, "id": recipe_id(recipe)}
    if recipe.description:
        doc["description"] = recipe.description
    doc.update({k: val for k, val in normalized(recipe).items() if k != "recipe"})
    if recipe.engine_version:
        doc["engine_version"] = recipe.engine_version
    for key in ("benchmark", "metadata"):
        if getattr(recipe, key):
            doc[key] = getattr(recipe, key)
    return doc


def to_sparkrun(recipe: Recipe) -> dict[str, Any]:
    """sparkrun v2. The serve command is a `{key}` template over `defaults`, so sparkrun renders exactly our
    flags (its own flag map drops keys it does not know) and its `-o key=value` still overrides them."""
    from sparkhelpers.recipes import flags as fl

    flagset = fl.flag_set(recipe.runtime, recipe.engine_version or None)
    defaults: dict[str, Any] = {"served_model_name": recipe.served_name}
    parts: list[str] = []
    if recipe.runtime == "llama-cpp":
        parts = ["llama-server", "-hf", "{model}", "--alias", "{served_model_name}", "--host", "{host}",
                 "--port", "{port}"]
    else:
        defaults.update(tensor_parallel=recipe.tensor_parallel, pipeline_parallel=recipe.pipeline_parallel)
        parts = ["vllm", "serve", "{model}", "--served-model-name", "{served_model_name}",
                 "--tensor-parallel-size", "{tensor_parallel}", "--pipeline-parallel-size", "{pipeline_parallel}",
                 "--host", "{host}", "--port", "{port}"]
        if recipe.revision:
            parts += ["--revision", recipe.revision]
        if recipe.launch == "ray" and recipe.nodes > 1:
            defaults["distributed_executor_backend"] = "ray"
    defaults.update(host="0.0.0.0", port=8000)
    for key in sorted(recipe.engine_args):
        value = recipe.engine_args[key]
        rendered = render_args({key: value}, flagset)
        if isinstance(value, (bool, dict, list)) or not rendered or _sparkrun_literal(str(value)) != str(value):
            # booleans are literal; JSON and anything needing quotes stays one quoted argument
            parts += [_sparkrun_literal(a) for a in rendered]
        else:
            defaults[key] = value
            parts += [rendered[0], "{" + key + "}"]
    doc: dict[str, Any] = {"recipe_version": "2", "model": recipe.model}
    if recipe.revision:
        doc["model_revision"] = recipe.revision
    doc["runtime"] = recipe.runtime
    doc["container"] = recipe.image
    doc["min_nodes"] = doc["max_nodes"] = recipe.nodes
    doc["defaults"] = defaults
    if recipe.env:
        doc["env"] = dict(recipe.env)
    doc["command"] = " ".join(parts)
    doc["metadata"] = {"description": recipe.description or recipe.name, "sparkhelpers_id": recipe_id(recipe)}
    return doc


def _sparkrun_literal(arg: str) -> str:
    """A literal argument in a sparkrun command template: shell-quoted (JSON), braces kept literal."""
    import shlex

    return shlex.quote(arg)


def export(recipe: Recipe, to: str, *, ref: str = "", ttl: int = 0, tools_image: str = "",
           hf_cache: str = "") -> str:
    if to == "recipe":
        return dump_yaml(to_document(recipe))
    if to == "sparkrun":
        return dump_yaml(to_sparkrun(recipe))
    from sparkhelpers.recipes import deploy

    return dump_yaml(deploy.export(recipe, to, ref=ref or recipe.name, ttl=ttl, tools_image=tools_image,
                                   hf_cache=hf_cache or deploy.HF_CACHE))
