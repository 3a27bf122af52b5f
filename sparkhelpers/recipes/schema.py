"""The recipe format (schema version 1) and its validation: a raw YAML mapping -> a ``Recipe``.

A recipe document may hold ``nodes: {min, max}`` and ``overrides:``; ``resolve`` fixes the node count
(asked for, or the recipe's own), applies the matching overrides and checks every served value, so a
``Recipe`` is always exact. Every error is one line naming the file and the field, with the fix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from sparkhelpers import validate as v
from sparkhelpers.errors import SparkError
from sparkhelpers.recipes import flags as fl

SCHEMA_VERSION = 1
RUNTIMES = ("vllm", "llama-cpp")
PLANNED_RUNTIMES = ("sglang", "trtllm")
LAUNCH_MODES = ("auto", "native", "ray")
CONTAINER_DEFAULTS: dict[str, Any] = {"shm_size": "16g", "ipc_host": True, "privileged": False, "docker_args": []}
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
GGUF_RE = re.compile(r"^(?P<repo>[^:]+):(?P<quant>[A-Za-z0-9_.-]+)$")
VAR_REF_RE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")

# key -> (what it holds, default shown in the README table, hashed: part of what is served)
FIELDS: dict[str, tuple[str, str, bool]] = {
    "recipe": ("schema version; must be 1", "required", True),
    "name": ("lower-case name (letters, digits, . _ -)", "required", False),
    "description": ("free text", '""', False),
    "model": ("Hugging Face repo id, `repo:QUANT` (GGUF file of a llama-cpp recipe) or an absolute path",
              "required", True),
    "revision": ("branch, tag or commit of the model", '""', True),
    "runtime": ("`vllm` or `llama-cpp` (`sglang`, `trtllm`: reserved, refused)", "vllm", True),
    "engine_version": ("engine version whose flag set `engine_args` is checked against", "the known one", False),
    "image": ("container image: `repo:tag`, or pinned `repo@sha256:...`", "required", True),
    "nodes": ("node count, or `{min: N, max: M, default: D}` (D: the count when none is asked for)",
              "tensor x pipeline", True),
    "tensor_parallel": ("tensor-parallel size", "nodes / pipeline", True),
    "pipeline_parallel": ("pipeline-parallel size", "1", True),
    "launch": ("multi-node launch: `auto`, `native` (Ray-less) or `ray`", "auto", True),
    "served_name": ("model name clients send", "model", True),
    "engine_args": ("engine arguments as a map (rendering rules below)", "{}", True),
    "env": ("container environment (no secrets, no per-node fabric variables)", "{}", True),
    "container": ("`shm_size`, `ipc_host`, `privileged`, `docker_args`", "16g, true, false, []", True),
    "benchmark": ("optional benchmark profile: `{profile: NAME, args: {...}}`", "none", False),
    "metadata": ("free facts (architecture, notes); not served", "{}", False),
    "include": ("a base recipe (file relative to this one, or a recipe name); this file's keys win", "none",
                False),
    "overrides": ("list of `{when: {nodes: N, tp: T}, ...}` setting engine_args, env, container, image or "
                  "launch", "[]", False),
}
OVERRIDE_KEYS = ("when", "engine_args", "env", "container", "image", "launch")
WHEN_KEYS = ("nodes", "tp")
# Engine arguments a recipe field owns (or the plan sets per node): naming them in engine_args is refused.
OWNED_ARGS = {
    "model": "model", "model_tag": "model", "served_model_name": "served_name", "revision": "revision",
    "tensor_parallel_size": "tensor_parallel", "tensor_parallel": "tensor_parallel",
    "pipeline_parallel_size": "pipeline_parallel", "pipeline_parallel": "pipeline_parallel",
    "distributed_executor_backend": "launch", "host": "the deployment (VLLM_HOST)",
    "port": "the deployment (VLLM_PORT)", "nnodes": "nodes", "node_rank": "the plan (per node)",
    "master_addr": "the plan (per node)", "master_port": "the deployment (MASTER_PORT)",
    "headless": "the plan (per node)", "alias": "served_name", "api_key": "the deployment (API_KEY_FILE)",
    "hf_token": "the deployment (HF_TOKEN_FILE)",
}
# Container variables the plan sets per node from discovery: a recipe cannot pin them cluster-wide.
PER_NODE_ENV = ("VLLM_HOST_IP", "MASTER_ADDR", "NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME", "TP_SOCKET_IFNAME",
                "UCX_NET_DEVICES", "OMPI_MCA_btl_tcp_if_include", "NCCL_IB_HCA", "NCCL_IB_GID_INDEX")


def fail(where: str, what: str, fix: str) -> SparkError:
    return SparkError(f"recipe {where}: {what}", fix=fix)


@dataclass(frozen=True)
class Recipe:
    """One exact, validated recipe: what is served and how (a node count fixed, overrides applied)."""

    name: str
    model: str
    runtime: str
    image: str
    nodes: int
    tensor_parallel: int
    pipeline_parallel: int
    launch: str = "auto"
    served_name: str = ""
    revision: str = ""
    engine_args: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    container: dict[str, Any] = field(default_factory=lambda: dict(CONTAINER_DEFAULTS))
    benchmark: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    engine_version: str = ""
    nodes_range: tuple[int, int] = (1, 8)
    source: str = ""  # the file, or "preset NAME", for messages

    @property
    def repo(self) -> str:
        """The repo id (without a GGUF `:QUANT` pick)."""
        m = GGUF_RE.match(self.model)
        return m.group("repo") if m and not self.model.startswith("/") else self.model

    @property
    def quant(self) -> str:
        m = GGUF_RE.match(self.model)
        return m.group("quant") if m and not self.model.startswith("/") else ""


# ---- secret references ----------------------------------------------------------------------------

def check_no_secrets(where: str, doc: Any, path: str = "") -> None:
    """Refuse `${HF_TOKEN}`-style references and literal secret values anywhere in the document."""
    from sparkhelpers.config import is_secret

    if isinstance(doc, dict):
        for key, value in doc.items():
            sub = f"{path}.{key}" if path else str(key)
            if path.endswith("env") and is_secret(str(key)):
                raise fail(where, f"{sub}: a recipe may not carry a secret ({key})",
                           f"remove it; the token reaches the engine from {_secret_file(str(key))}")
            check_no_secrets(where, value, sub)
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            check_no_secrets(where, value, f"{path}[{i}]")
    elif isinstance(doc, str):
        for name in VAR_REF_RE.findall(doc):
            if is_secret(name) or "TOKEN" in name:
                raise fail(where, f"{path}: refers to the secret ${{{name}}} (recipes are shared data)",
                           f"remove it; set {_secret_file(name)} in config.local.env and the engine gets it "
                           "privately")
            if path.startswith(("env", "engine_args")):
                raise fail(where, f"{path}: ${{{name}}} would stay literal (recipes are data: host variables "
                                  "are never expanded)", "write the value itself")


def _secret_file(name: str) -> str:
    return "HF_TOKEN_FILE" if "HF" in name or "HUGGING" in name else "API_KEY_FILE"


# ---- field checks ---------------------------------------------------------------------------------

def _type(where: str, key: str, value: Any, types: tuple[type, ...], what: str) -> Any:
    if isinstance(value, types) and not (isinstance(value, bool) and bool not in types):
        return value
    raise fail(where, f"{key} must be {what}, not {value!r}", f"write {key} as {what}")


def check_top_level(where: str, doc: dict) -> None:
    unknown = [k for k in doc if k not in FIELDS]
    if unknown:
        hint = ("this looks like a sparkrun or eugr recipe: convert it with `sparkhelpers recipe import FILE`"
                if {"recipe_version", "defaults", "container", "command"} & set(doc)
                else f"known fields: {', '.join(FIELDS)}")
        raise fail(where, f"unknown field {unknown[0]}", hint)
    for key in ("recipe", "name", "model", "image"):
        if key not in doc or doc[key] in (None, ""):
            raise fail(where, f"{key} is required", _REQUIRED_FIX[key])
    if doc["recipe"] != SCHEMA_VERSION:
        raise fail(where, f"recipe (schema version) is {doc['recipe']!r}; this sparkhelpers reads version "
                          f"{SCHEMA_VERSION}", "set `recipe: 1` (or upgrade sparkhelpers)")


_REQUIRED_FIX = {"recipe": "start the file with `recipe: 1`", "name": "add `name: my-model` (lower case)",
                 "model": "add `model: org/name` (the Hugging Face repo id)",
                 "image": "add `image: repo:tag` (or repo@sha256:... to pin it)"}


def check_runtime(where: str, runtime: Any) -> str:
    if runtime in PLANNED_RUNTIMES:
        raise fail(where, f"runtime {runtime} is not built yet (the format reserves it)",
                   f"use runtime: vllm or llama-cpp; {runtime} support is planned")
    if runtime not in RUNTIMES:
        raise fail(where, f"runtime {runtime!r} is unknown", "use runtime: vllm or llama-cpp")
    return runtime


def check_model(where: str, model: Any, runtime: str) -> str:
    model = _type(where, "model", model, (str,), "a repo id string")
    m = GGUF_RE.match(model)
    if m and not model.startswith("/"):
        if runtime != "llama-cpp":
            raise fail(where, f"model {model}: `repo:QUANT` picks a GGUF file, which only llama-cpp serves",
                       "set runtime: llama-cpp, or drop the :QUANT suffix")
        repo = m.group("repo")
    else:
        repo = model
    try:
        v.model_id(repo, "model")
    except SparkError as exc:
        raise fail(where, exc.message, "use org/name (letters, digits, . _ -), org/name:QUANT or /abs/path") from None
    return model


def check_nodes(where: str, doc: dict) -> tuple[int | None, tuple[int, int]]:
    """(the count when none is asked for: the exact one, or the range's default; None: from the sizes or the
    range's min), (min, max)."""
    raw = doc.get("nodes")
    if raw is None:
        return None, (1, 8)
    if isinstance(raw, dict):
        extra = sorted(set(raw) - {"min", "max", "default"})
        if extra:
            raise fail(where, f"nodes.{extra[0]} is unknown", "write nodes: {min: 1, max: 4, default: 2}, or a number")
        low = _type(where, "nodes.min", raw.get("min", 1), (int,), "a whole number")
        high = _type(where, "nodes.max", raw.get("max", 8), (int,), "a whole number")
        if not 1 <= low <= high <= 8:
            raise fail(where, f"nodes {{min: {low}, max: {high}}} is not a range within 1-8",
                       "make 1 <= min <= max <= 8")
        default = raw.get("default")
        if default is not None and not low <= _type(where, "nodes.default", default, (int,), "a whole number") <= high:
            raise fail(where, f"nodes.default {default} is outside {{min: {low}, max: {high}}}",
                       "make min <= default <= max")
        return default, (low, high)
    count = _type(where, "nodes", raw, (int,), "a whole number or {min, max}")
    if not 1 <= count <= 8:
        raise fail(where, f"nodes {count} is outside 1-8", "a Spark cluster has 1 to 8 nodes")
    return count, (count, count)


def check_env(where: str, env: Any) -> dict[str, str]:
    env = _type(where, "env", env or {}, (dict,), "a map of NAME: value")
    out: dict[str, str] = {}
    for key, value in env.items():
        if not ENV_NAME_RE.match(str(key)):
            raise fail(where, f"env.{key} is not a variable name", "use letters, digits and _ (not starting "
                                                                  "with a digit)")
        if key in PER_NODE_ENV:
            raise fail(where, f"env.{key} is set per node from discovery", "remove it (each node gets its own)")
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise fail(where, f"env.{key} must be a string or a number, not {value!r}", f'quote it: {key}: "..."')
        out[str(key)] = str(value)
    return out


def check_container(where: str, raw: Any) -> dict[str, Any]:
    raw = _type(where, "container", raw or {}, (dict,), "a map")
    unknown = sorted(set(raw) - set(CONTAINER_DEFAULTS))
    if unknown:
        raise fail(where, f"container.{unknown[0]} is unknown", f"known: {', '.join(CONTAINER_DEFAULTS)}")
    out = {**CONTAINER_DEFAULTS, **raw}
    out["shm_size"] = str(out["shm_size"])
    if not v._SIZE.match(out["shm_size"]):
        raise fail(where, f"container.shm_size {out['shm_size']!r} is not a size", "e.g. shm_size: 16g")
    for key in ("ipc_host", "privileged"):
        _type(where, f"container.{key}", out[key], (bool,), "true or false")
    args = _type(where, "container.docker_args", out["docker_args"], (list,), "a list of strings")
    if not all(isinstance(a, str) and v._SAFE_ARG.match(a) for a in args):
        raise fail(where, "container.docker_args must be strings without control characters",
                   'e.g. docker_args: ["--ulimit", "memlock=-1"]')
    out["docker_args"] = list(args)
    return out


def check_engine_args(where: str, raw: Any, flagset: fl.FlagSet) -> dict[str, Any]:
    """Every key must be a flag of the engine version in use; values must fit the flag's type."""
    raw = _type(where, "engine_args", raw or {}, (dict,), "a map of flag: value")
    out: dict[str, Any] = {}
    for name, value in raw.items():
        flag = flagset.get(fl.flag_key(str(name)))
        key = flag.key if flag else fl.flag_key(str(name))  # an alias (-tp) is its flag's key
        if key in out:
            raise fail(where, f"engine_args names {key} twice ({name})", "keep one spelling")
        if key in OWNED_ARGS:
            raise fail(where, f"engine_args.{name} is set by {OWNED_ARGS[key]}, not by engine_args",
                       f"remove it{'' if ' ' in OWNED_ARGS[key] else f'; use the `{OWNED_ARGS[key]}` field'}")
        if flag is None:
            raise fail(where, f"engine_args.{name}: {flagset.runtime} {flagset.version} has no flag "
                              f"--{key.replace('_', '-')}", fl.unknown_fix(key, flagset))
        if value is None:
            continue  # null unsets a value an include or override gave
        out[key] = _check_value(where, f"engine_args.{name}", value, flag)
    return out


def _check_value(where: str, key: str, value: Any, flag: fl.Flag) -> Any:
    kind = flag.type
    if kind in ("store_true", "bool_optional"):
        return _type(where, key, value, (bool,), "true or false")
    if isinstance(value, bool):
        raise fail(where, f"{key} takes a value, not {value!r}", f"give {flag.flag} a value")
    if kind == "int":
        return _type(where, key, value, (int,), "a whole number")
    if kind == "float":
        return _type(where, key, value, (int, float), "a number")
    if kind == "size":
        if isinstance(value, int) or (isinstance(value, str) and re.fullmatch(r"\d+(\.\d+)?[kKmMgG]?", value)):
            return value
        raise fail(where, f"{key} must be a size (32768 or 32k), not {value!r}", "e.g. 32k")
    if kind == "choice":
        if str(value) not in flag.choices:
            raise fail(where, f"{key} must be one of {', '.join(flag.choices)}, not {value!r}",
                       f"pick one of {', '.join(flag.choices)}")
        return value
    if kind == "json":
        return _type(where, key, value, (dict, list, str), "a map (rendered as one JSON argument)")
    if kind == "list":
        if isinstance(value, list):
            if not all(isinstance(x, (str, int, float)) and not isinstance(x, bool) for x in value):
                raise fail(where, f"{key} must be a list of plain values", "e.g. [a, b]")
            return value
        return _type(where, key, value, (str, int, float), "a value or a list of values")
    if isinstance(value, (dict, list)):
        return value  # maps and lists become one JSON argument
    if isinstance(value, str) and not v._SAFE_ARG.match(value):
        raise fail(where, f"{key} contains control characters", "remove newlines and tabs")
    return _type(where, key, value, (str, int, float), "a value")


# ---- overrides and the exact layout ---------------------------------------------------------------

def check_overrides(where: str, raw: Any) -> list[dict]:
    raw = _type(where, "overrides", raw or [], (list,), "a list of {when: ..., ...}")
    for i, item in enumerate(raw):
        at = f"overrides[{i}]"
        _type(where, at, item, (dict,), "a map with `when:`")
        unknown = sorted(set(item) - set(OVERRIDE_KEYS))
        if unknown:
            raise fail(where, f"{at}.{unknown[0]} cannot be overridden",
                       f"an override sets {', '.join(OVERRIDE_KEYS[1:])}")
        when = _type(where, f"{at}.when", item.get("when"), (dict,), "a map such as {nodes: 2}")
        bad = sorted(set(when) - set(WHEN_KEYS))
        if bad or not when:
            raise fail(where, f"{at}.when.{bad[0] if bad else ''} cannot be matched".replace(". ", " "),
                       "match on nodes and/or tp, e.g. when: {nodes: 2}")
        for key, value in when.items():
            _type(where, f"{at}.when.{key}", value, (int,), "a whole number")
    return raw


def matches(when: dict, nodes: int, tp: int) -> bool:
    return all({"nodes": nodes, "tp": tp}[k] == val for k, val in when.items())


def layout(where: str, doc: dict, asked: int | None) -> tuple[int, int, int, tuple[int, int]]:
    """(nodes, tp, pp, range) for this recipe: the asked count, else its own. nodes = TP x PP (one GPU each)."""
    exact, (low, high) = check_nodes(where, doc)
    pp = _type(where, "pipeline_parallel", doc.get("pipeline_parallel", 1), (int,), "a whole number")
    tp = doc.get("tensor_parallel")
    if tp is not None:
        _type(where, "tensor_parallel", tp, (int,), "a whole number")
    if doc.get("runtime", "vllm") == "llama-cpp":
        if (asked or exact or 1) != 1 or (tp or 1) != 1 or pp != 1:
            raise fail(where, "runtime llama-cpp serves from one node", "set nodes: 1 (or use runtime: vllm)")
        return 1, 1, 1, (1, 1)
    count = asked if asked is not None else exact if exact is not None else None if tp else low
    if count is not None and not low <= count <= high:
        span = f"{low}" if low == high else f"{low}-{high}"
        raise fail(where, f"runs on {span} node(s), but {count} were asked for",
                   f"ask for {span} node(s) (--nodes), or change the recipe's nodes")
    if not 1 <= (tp or 1) <= 8 or not 1 <= pp <= 8:
        raise fail(where, f"tensor_parallel {tp} / pipeline_parallel {pp} must be 1-8", "use 1 to 8")
    lay = _layout(where, tp, pp, count)
    if not low <= lay.nodes <= high:
        raise fail(where, f"tensor_parallel {lay.tensor_parallel} x pipeline_parallel {pp} needs {lay.nodes} "
                          f"node(s), outside the recipe's nodes {low}-{high}",
                   "widen nodes, or change tensor_parallel")
    return lay.nodes, lay.tensor_parallel, pp, (low, high)


def _layout(where: str, tp: int | None, pp: int, count: int | None):  # noqa: ANN202 - a topology.Layout
    """The one layout rule (sparkhelpers.topology.choose_layout) for the recipe's sizes, said in its terms."""
    from sparkhelpers.topology import MAX_NODES, LayoutAsk, LayoutMismatch, choose_layout

    try:
        return choose_layout(LayoutAsk(pipeline_parallel=pp, tensor_parallel=tp), available=MAX_NODES, nodes=count,
                             name=where)
    except LayoutMismatch as exc:
        gpus = exc.tensor_parallel * exc.pipeline_parallel
        raise fail(where, f"tensor_parallel {exc.tensor_parallel} x pipeline_parallel {exc.pipeline_parallel} = "
                          f"{gpus} GPUs, but the recipe runs on {exc.nodes} node(s) (one GB10 GPU each)",
                   f"make nodes = tensor_parallel x pipeline_parallel (e.g. nodes: {gpus})") from None


def apply_overrides(doc: dict, nodes: int, tp: int) -> dict:
    """The document with every matching override merged in, in file order (later wins)."""
    out = dict(doc)
    for item in doc.get("overrides") or []:
        if not matches(item["when"], nodes, tp):
            continue
        for key, value in item.items():
            if key == "when":
                continue
            if key in ("engine_args", "env", "container"):
                out[key] = {**(out.get(key) or {}), **(value or {})}
            else:
                out[key] = value
    return out


def resolve(where: str, doc: dict, nodes: int | None = None) -> Recipe:
    """A merged document (include done) -> an exact, validated Recipe for ``nodes`` (None: its own)."""
    check_top_level(where, doc)
    name = _type(where, "name", doc["name"], (str,), "a string")
    if not NAME_RE.match(name):
        raise fail(where, f"name {name!r} is not a valid recipe name", "use lower-case letters, digits, . _ -")
    runtime = check_runtime(where, doc.get("runtime", "vllm"))
    model = check_model(where, doc["model"], runtime)
    check_overrides(where, doc.get("overrides"))
    count, tp, pp, span = layout(where, doc, nodes)
    doc = apply_overrides(doc, count, tp)
    launch = doc.get("launch", "auto")
    if launch not in LAUNCH_MODES:
        raise fail(where, f"launch {launch!r} is unknown", "use launch: auto, native or ray")
    image = _type(where, "image", doc["image"], (str,), "an image reference")
    try:
        v.image(image, "image")
        rev = v.revision(str(doc.get("revision") or ""))
        served = v.served_name(str(doc.get("served_name") or model))
    except SparkError as exc:
        raise fail(where, exc.message.replace("SERVED_MODEL_NAME", "served_name").replace("MODEL_REVISION",
                                                                                           "revision"),
                   "use letters, digits and . _ : / + -") from None
    version = str(doc.get("engine_version") or "")
    flagset = fl.flag_set(runtime, version or None)
    bench = _type(where, "benchmark", doc.get("benchmark") or {}, (dict,), "a map {profile, args}")
    if set(bench) - {"profile", "args"}:
        raise fail(where, f"benchmark.{sorted(set(bench) - {'profile', 'args'})[0]} is unknown",
                   "benchmark takes profile and args")
    return Recipe(
        name=name, model=model, runtime=runtime, image=image, nodes=count, tensor_parallel=tp,
        pipeline_parallel=pp, launch=launch, served_name=served, revision=rev,
        engine_args=check_engine_args(where, doc.get("engine_args"), flagset),
        env=check_env(where, doc.get("env")), container=check_container(where, doc.get("container")),
        benchmark=bench, metadata=_type(where, "metadata", doc.get("metadata") or {}, (dict,), "a map"),
        description=str(doc.get("description") or ""), engine_version=version, nodes_range=span, source=where)
