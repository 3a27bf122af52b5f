"""Engine arguments -> argv, by the documented rules, and back (argv -> a map, for imports and presets).

Rules: keys are flags (`max_model_len` -> `--max-model-len`), emitted in key order so one recipe id is one
argv; `true` -> the bare flag; `false` -> `--no-FLAG` for the flags the engine turns on by itself, else
nothing; maps and lists -> one compact JSON argument (a list for a multi-value flag: one value each);
everything else -> `--flag value`. ``null`` means unset.
"""

from __future__ import annotations

import json
from typing import Any

from sparkhelpers.errors import SparkError
from sparkhelpers.recipes import flags as fl
from sparkhelpers.recipes.schema import Recipe


def scalar(value: Any) -> str:
    return str(value)


def json_arg(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def render_args(args: dict[str, Any], flagset: fl.FlagSet) -> list[str]:
    out: list[str] = []
    for key in sorted(args):
        value = args[key]
        flag = flagset.get(key)
        name = flag.flag if flag else "--" + key.replace("_", "-")
        if value is None:
            continue
        if value is True:
            out.append(name)
        elif value is False:
            if flag is not None and flag.default_on and flag.type == "bool_optional":
                out.append("--no-" + name[2:])
        elif isinstance(value, list) and flag is not None and flag.type == "list":
            out += [name, *(scalar(x) for x in value)]
        elif isinstance(value, (dict, list)):
            out += [name, json_arg(value)]
        else:
            out += [name, scalar(value)]
    return out


def engine_argv(recipe: Recipe) -> list[str]:
    """The arguments every rank shares (the plan adds host/port and the per-node rendezvous)."""
    flagset = fl.flag_set(recipe.runtime, recipe.engine_version or None)
    if recipe.runtime == "llama-cpp":
        args = dict(recipe.engine_args)
        ctx = recipe.engine_args.get("ctx_size")
        head = ["--alias", recipe.served_name] + (["--ctx-size", str(ctx)] if ctx else [])
        args.pop("ctx_size", None)
        return head + render_args(args, flagset)
    head = ["--served-model-name", recipe.served_name, "--tensor-parallel-size", str(recipe.tensor_parallel),
            "--pipeline-parallel-size", str(recipe.pipeline_parallel)]
    if recipe.revision:
        head += ["--revision", recipe.revision]
    return head + render_args(recipe.engine_args, flagset)


def serve_argv(recipe: Recipe) -> list[str]:
    """The serve command as one node would run it alone (what `recipe render --serve` prints)."""
    if recipe.runtime == "llama-cpp":
        return ["llama-server", "-m", recipe.model, *engine_argv(recipe)]
    return ["vllm", "serve", recipe.model, *engine_argv(recipe)]


def _convert(text: str, flag: fl.Flag) -> Any:
    if flag.type == "int":
        try:
            return int(text)
        except ValueError:
            return text
    if flag.type == "float":
        try:
            return float(text)
        except ValueError:
            return text
    return text  # JSON text stays as written: rendered back byte for byte


def args_to_map(tokens: list[str], flagset: fl.FlagSet, where: str, hint: str = "") -> dict[str, Any]:
    """`--flag value`, `--flag=value`, `--flag`, `--no-flag`, aliases (`-tp 2`) -> {key: value}, later
    occurrences winning (as argparse does). Unknown flags are refused (``hint`` adds to the fix)."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("-"):
            raise SparkError(f"{where}: argument {tok!r} does not follow a flag", fix="write it as --flag value")
        name, eq, inline = tok.partition("=")
        key = fl.flag_key(name)
        flag = flagset.get(key)
        negated = flagset.get(key[3:]) if flag is None and key.startswith("no_") else None
        if negated is not None:
            out[negated.key] = False
            i += 1
            continue
        if flag is None:
            raise SparkError(f"{where}: {flagset.runtime} {flagset.version} has no flag {name}",
                             fix=fl.unknown_fix(key, flagset, hint))
        if flag.type in ("store_true", "bool_optional") and not eq:
            out[flag.key] = True
            i += 1
            continue
        if eq:
            value, i = inline, i + 1
        elif i + 1 < len(tokens):
            value, i = tokens[i + 1], i + 2
        else:
            raise SparkError(f"{where}: {name} needs a value", fix=f"write {name} VALUE")
        if flag.type == "list":
            values = [value]
            while i < len(tokens) and not tokens[i].startswith("-"):
                values.append(tokens[i])
                i += 1
            out[flag.key] = values if len(values) > 1 else value
        else:
            out[flag.key] = _convert(value, flag)
    return out
