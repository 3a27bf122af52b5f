"""sparkrun v2 and eugr v1 recipes -> ours. What has no equivalent is refused with one line naming it.

Both formats keep serve flags in ``defaults`` and may render them through a ``command`` template
(`{key}` placeholders; eugr's single-pass ``str.format`` also turns `{{`/`}}` into braces). When a
command is given it is what runs, so its flags become our ``engine_args``; otherwise ``defaults`` do.
Deployment values (host, port) are the deployment's here; they are reported, not carried.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

from sparkhelpers.appkit import info
from sparkhelpers.errors import SparkError
from sparkhelpers.recipes import flags as fl
from sparkhelpers.recipes import schema as sc
from sparkhelpers.recipes.loader import merge, read_yaml
from sparkhelpers.recipes.render import args_to_map

# field -> what to do instead (no equivalent here)
REFUSED = {
    "mods": "apply the mod to the image yourself (build a derived image) and name that image",
    "builder": "build the image first, then name it in `image:`",
    "builder_config": "build the image first, then name it in `image:`",
    "build_args": "build the image first, then name it in `image:`",
    "pre_exec": "hooks do not run here; bake the step into the image",
    "post_exec": "hooks do not run here; bake the step into the image",
    "post_commands": "hooks do not run here; run the step after `start_cluster.sh`",
    "containers": "per-host images are not supported: every node runs one image (give `container:`)",
    "executor_config": "the executor is ours (docker on each node); remove it",
    "distribution_config": "download extra models with `sparkhelpers models download`; remove it",
    "runtime_config": "put the engine settings in `defaults`",
}
IGNORED = ("min_sparkrun_version", "recipe_version", "name", "description", "model", "model_revision", "runtime",
           "container", "min_nodes", "max_nodes", "defaults", "env", "command", "metadata", "benchmark",
           "include", "overrides", "mode", "solo_only", "cluster_only")
DEPLOYMENT_KEYS = ("host", "port")
SPARKRUN_ONLY_KEYS = ("executor", "image_prefix", "launcher_image", "use_sentinel_image", "save_build_logs",
                      "transformers", "kubectl", "benchmark_framework", "benchmark_output_dir", "init_port")
FIELD_KEYS = {"tensor_parallel": "tensor_parallel", "tensor_parallel_size": "tensor_parallel",
              "pipeline_parallel": "pipeline_parallel", "pipeline_parallel_size": "pipeline_parallel",
              "served_model_name": "served_name"}
ALIASES = {"-tp": "--tensor-parallel-size", "-pp": "--pipeline-parallel-size", "-dp": "--data-parallel-size",
           "-q": "--quantization", "-hf": "--model", "-m": "--model", "-c": "--ctx-size", "-a": "--alias",
           "-np": "--parallel", "-ngl": "--n-gpu-layers", "-fa": "--flash-attn", "-t": "--threads"}
RUNTIMES = {"": "vllm", "vllm": "vllm", "vllm-distributed": "vllm", "vllm-ray": "vllm", "eugr-vllm": "vllm",
            "llama-cpp": "llama-cpp", "llama.cpp": "llama-cpp"}
PLACEHOLDER = re.compile(r"(?<!\{)\{([A-Za-z_][A-Za-z0-9_]*)\}(?!\})")


def detect(doc: dict) -> str:
    version = str(doc.get("recipe_version", ""))
    if version == "2":
        return "sparkrun"
    if version == "1" or ("command" in doc and "name" in doc and "container" in doc):
        return "eugr"
    if doc.get("recipe") == sc.SCHEMA_VERSION:
        return "ours"
    raise SparkError("not a sparkrun v2 or eugr v1 recipe (no recipe_version: \"2\" or \"1\")",
                     fix="add recipe_version, or check that this is a recipe file")


def load_flat(path: Path, depth: int = 0) -> dict:
    """A sparkrun recipe with its include chain merged (the base's keys lose)."""
    doc = read_yaml(path)
    base = doc.get("include")
    if base is None:
        return doc
    if depth >= 8:
        raise SparkError(f"recipe {path}: includes nest deeper than 8 levels", fix="flatten the chain")
    if not isinstance(base, str) or base.startswith("@"):
        raise SparkError(f"recipe {path}: include {base!r} names a registry recipe, which is not fetched here",
                         fix="download the base recipe and include it by file path")
    return merge(load_flat((path.parent / base).resolve(), depth + 1), doc)


def import_file(path: Path, image: str = "") -> dict[str, Any]:
    """The recipe at ``path`` (sparkrun v2 or eugr v1) as our document, validated."""
    doc = load_flat(Path(path))
    kind = detect(doc)
    where = str(path)
    if kind == "ours":
        raise SparkError(f"recipe {where} is already in our format", fix="use it as it is")
    for key in doc:
        if key in REFUSED:
            raise SparkError(f"recipe {where}: {key} has no equivalent here", fix=REFUSED[key])
        if key not in IGNORED:
            raise SparkError(f"recipe {where}: unknown {kind} field {key}", fix="remove it or correct its spelling")
    sc.check_no_secrets(where, {"env": doc.get("env") or {}, "engine_args": doc.get("defaults") or {},
                                "command": doc.get("command") or ""})
    ours = convert(where, doc, kind, Path(path).stem, image)
    sc.resolve(where, ours)  # refuse now what would be refused at start (unknown flag, layout)
    return ours


def convert(where: str, doc: dict, kind: str, stem: str, image: str) -> dict[str, Any]:
    runtime_raw = str(doc.get("runtime") or "")
    command = str(doc.get("command") or "")
    runtime = _runtime(where, runtime_raw, command)
    defaults = dict(doc.get("defaults") or {})
    name = str(doc.get("name") or stem).lower()
    name = re.sub(r"[^a-z0-9._-]+", "-", name).strip("-") or "imported"
    container = doc.get("container") or image
    if not container:
        raise SparkError(f"recipe {where}: no container image", fix="pass --image repo:tag")
    model = str(doc.get("model") or defaults.get("model") or "")
    ours: dict[str, Any] = {"recipe": sc.SCHEMA_VERSION, "name": name, "model": model, "runtime": runtime,
                            "image": str(container)}
    if doc.get("description"):
        ours["description"] = str(doc["description"])
    if doc.get("model_revision"):
        ours["revision"] = str(doc["model_revision"])
    if runtime_raw == "vllm-ray" or defaults.get("distributed_executor_backend") == "ray":
        ours["launch"] = "ray"
    ours.update(_nodes(doc))
    flagset = fl.flag_set(runtime)
    if command:
        args, model_in_cmd = _command_args(where, command, {**defaults, "model": model}, flagset, runtime)
        ours["model"] = model or model_in_cmd
    else:
        args = _defaults_args(where, defaults, runtime)
    _lift_fields(where, args, ours)
    ours["engine_args"] = args
    if doc.get("env"):
        ours["env"] = dict(doc["env"])
    if doc.get("overrides"):
        ours["overrides"] = [_override(where, i, o, runtime) for i, o in enumerate(doc["overrides"])]
    ours["metadata"] = {"imported_from": f"{kind} ({Path(where).name})", **(doc.get("metadata") or {})}
    if not ours["model"]:
        raise SparkError(f"recipe {where}: no model", fix="add model: org/name")
    return ours


def _runtime(where: str, runtime: str, command: str) -> str:
    first = command.strip().split(" ", 2)
    if not runtime and command:
        if command.strip().startswith("llama-server"):
            return "llama-cpp"
        if first[:2] == ["sglang", "serve"] or first[0].startswith(("trtllm-serve", "python3 -m sglang")):
            runtime = first[0].split("-")[0]
    if runtime in RUNTIMES:
        return RUNTIMES[runtime]
    sc.check_runtime(where, runtime)  # sglang, trtllm: "not built yet"
    return runtime


def _nodes(doc: dict) -> dict[str, Any]:
    low, high = doc.get("min_nodes"), doc.get("max_nodes")
    if doc.get("solo_only") or doc.get("mode") == "solo":
        low, high = 1, 1
    elif doc.get("cluster_only") or doc.get("mode") == "cluster":
        low = max(int(low or 2), 2)
    if low is None and high is None:
        return {}
    low, high = int(low or 1), int(high or 8)
    return {"nodes": low if low == high else {"min": low, "max": high}}


def _defaults_args(where: str, defaults: dict, runtime: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in defaults.items():
        k = fl.flag_key(str(key))
        if k in DEPLOYMENT_KEYS or k == "model":
            info(f"{where}: defaults.{key} is not carried over (the deployment sets it: VLLM_HOST/VLLM_PORT)")
            continue
        if k in SPARKRUN_ONLY_KEYS:
            raise SparkError(f"recipe {where}: defaults.{key} is a sparkrun setting with no equivalent here",
                             fix="remove it")
        if k == "distributed_executor_backend":
            continue  # became `launch`
        if k == "data_parallel":
            raise SparkError(f"recipe {where}: defaults.data_parallel has no equivalent (one replica per recipe)",
                             fix="remove it; run one recipe per replica")
        if runtime == "llama-cpp" and k == "max_model_len":
            k = "ctx_size"
        out[k] = value
    return out


def _substitute(where: str, command: str, values: dict) -> str:
    command = command.replace("\\\n", " ")

    def one(m: re.Match) -> str:
        key = m.group(1)
        if key not in values or values[key] is None:
            raise SparkError(f"recipe {where}: the command uses {{{key}}}, which defaults do not set",
                             fix=f"add {key} to defaults")
        return str(values[key])

    return PLACEHOLDER.sub(one, command).replace("{{", "{").replace("}}", "}")


def _command_args(where: str, command: str, values: dict, flagset: fl.FlagSet,
                  runtime: str) -> tuple[dict[str, Any], str]:
    text = _substitute(where, command, values)
    try:
        tokens = shlex.split(text)
    except ValueError as exc:
        raise SparkError(f"recipe {where}: the command cannot be split ({exc})", fix="balance its quotes") from None
    tokens = [ALIASES.get(t, t) for t in tokens]
    model = ""
    if runtime == "vllm":
        if tokens[:2] != ["vllm", "serve"]:
            raise SparkError(f"recipe {where}: the command does not start with `vllm serve`",
                             fix="only a plain `vllm serve MODEL ...` command can be imported")
        tokens = tokens[2:]
        if tokens and not tokens[0].startswith("-"):
            model, tokens = tokens[0], tokens[1:]
    else:
        tokens = tokens[1:]
    ours_flags = dict(flagset.flags)
    for extra in ("tensor_parallel_size", "pipeline_parallel_size", "served_model_name", "host", "port", "model",
                  "alias", "data_parallel_size"):
        ours_flags.setdefault(extra, fl.Flag(extra, "--" + extra.replace("_", "-"), "str"))
    args = args_to_map(tokens, fl.FlagSet(flagset.runtime, flagset.version, ours_flags), f"recipe {where} command")
    for key in DEPLOYMENT_KEYS:
        args.pop(key, None)
    if "model" in args:
        model = str(args.pop("model"))
    if "alias" in args:
        args["served_model_name"] = args.pop("alias")
    if "data_parallel_size" in args:
        raise SparkError(f"recipe {where}: --data-parallel-size has no equivalent (one replica per recipe)",
                         fix="remove it; run one recipe per replica")
    if args.pop("distributed_executor_backend", None) not in (None, "ray", "mp"):
        raise SparkError(f"recipe {where}: unknown --distributed-executor-backend", fix="use ray, or remove it")
    return args, model


def _lift_fields(where: str, args: dict, ours: dict) -> None:
    """tensor/pipeline parallel and the served name are recipe fields here, not engine arguments."""
    for key in list(args):
        if key in FIELD_KEYS:
            value = args.pop(key)
            field = FIELD_KEYS[key]
            ours[field] = int(value) if field.endswith("parallel") else str(value)


def _override(where: str, i: int, raw: Any, runtime: str) -> dict[str, Any]:
    at = f"overrides[{i}]"
    if not isinstance(raw, dict) or not isinstance(raw.get("when"), dict):
        raise SparkError(f"recipe {where}: {at} has no `when:` map", fix="write when: {nodes: 2}")
    when = dict(raw["when"])
    bad = sorted(set(when) - {"nodes", "tp"})
    if bad:
        raise SparkError(f"recipe {where}: {at}.when.{bad[0]} has no equivalent (we match on nodes and tp only)",
                         fix="keep a separate recipe per hardware variant")
    out: dict[str, Any] = {"when": when}
    for key, value in raw.items():
        if key == "when":
            continue
        if key == "defaults":
            args = _defaults_args(where, dict(value or {}), runtime)
            lifted = sorted(set(args) & set(FIELD_KEYS))
            if lifted:
                raise SparkError(f"recipe {where}: {at} sets {lifted[0]}, which an override cannot change here",
                                 fix="write a separate recipe for that layout")
            out["engine_args"] = args
        elif key == "env":
            out["env"] = dict(value or {})
        elif key == "container":
            out["image"] = str(value)
        else:
            raise SparkError(f"recipe {where}: {at}.{key} has no equivalent", fix="an override sets defaults, "
                                                                                  "env or container")
    return out
