"""The real vLLM argument parser, driven from outside (test infrastructure).

Runs with the Python of a real vLLM environment (tools/real-vllm.sh builds one), never imports
sparkhelpers, and needs no GPU:

    python vllm_parser.py dump         # the flag set of `vllm serve`, as the sim engine's JSON spec
    python vllm_parser.py check < argvs.json   # [["serve", MODEL, ...], ...] -> [{"ok": .., "error": ..}, ...]
    python vllm_parser.py both < argvs.json    # {"spec": <dump>, "verdicts": <check>}: one import of vLLM

``check`` parses each argv the way `vllm serve` does (FlexibleArgumentParser with the serve
sub-command's arguments), then runs vLLM's own post-parse validation, so unknown flags, bad values
and bad JSON are caught as vLLM would. It stops there: building the engine arguments already looks
the model up in the Hugging Face cache (a start-up check, which the real-engine track exercises).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import sys

PROBES = {"int": "7", "negative": "-1", "float": "0.5", "size": "32k", "auto": "auto",
          "json": '{"a": 1}', "word": "abc"}


def _imports():
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
    logging.disable(logging.WARNING)
    try:
        from vllm.utils.argparse_utils import FlexibleArgumentParser
    except ImportError:  # 0.19
        from vllm.utils import FlexibleArgumentParser
    try:
        from vllm.entrypoints.openai import cli_args
    except ImportError:
        from vllm.entrypoints.launchers import cli_args
    return FlexibleArgumentParser, cli_args


def serve_parser() -> argparse.ArgumentParser:
    """The parser of `vllm serve` (the serve sub-command adds the positional model tag)."""
    flexible, cli_args = _imports()
    p = flexible(prog="vllm serve", usage="vllm serve [model_tag] [options]")
    p.add_argument("model_tag", type=str, nargs="?", help="The model tag to serve")
    return cli_args.make_arg_parser(p)


def _kind(action: argparse.Action) -> str:
    name = type(action).__name__
    if name == "BooleanOptionalAction":
        return "bool_optional"
    if action.nargs == 0:
        return "store_true"  # store_true/store_false/store_const/count: a bare flag
    if action.choices:
        return "choice"
    if action.nargs in ("+", "*") or name == "_AppendAction":
        return "list"
    return _value_type(action)


def _value_type(action: argparse.Action) -> str:
    conv = action.type or str
    ok = set()
    for probe, text in PROBES.items():
        with contextlib.suppress(Exception):
            conv(text)
            ok.add(probe)
    if "word" in ok:
        return "str"
    if "json" in ok:
        return "json"
    if "size" in ok:
        return "size"
    if "float" in ok:
        return "float"
    if "int" in ok:
        return "int"
    return "str"


def _canonical(action: argparse.Action) -> str:
    longs = [o for o in action.option_strings if o.startswith("--") and not o.startswith("--no-")]
    preferred = "--" + action.dest.replace("_", "-")
    return preferred if preferred in longs else (longs or action.option_strings)[0]


def dump() -> dict:
    import vllm

    p = serve_parser()
    flags: dict[str, dict] = {}
    for action in p._actions:
        if not action.option_strings or type(action).__name__ in ("_HelpAction", "_VersionAction"):
            continue
        flag = _canonical(action)
        kind = _kind(action)
        names = [o for o in action.option_strings if o != flag and not (kind == "bool_optional" and
                                                                        o.startswith("--no-"))]
        meta: dict = {"type": kind, "dest": action.dest}
        if names:
            meta["aliases"] = names
        if kind == "choice":
            meta["choices"] = [str(c) for c in action.choices]
            if action.nargs in ("+", "*"):
                meta["nargs"] = "+"
        if action.nargs == "?":
            meta["optional_value"] = True
        if kind == "bool_optional" and action.default is True:
            meta["default"] = True  # on unless --no-X (recipes render `false` as --no-X for these)
        if kind == "size" and _accepts(action, "auto"):
            meta["also"] = ["auto"]
        flags[flag] = meta
    version = vllm.__version__.split("+")[0]
    return {"vllm_version": version,
            "about": f"Flags `vllm serve` accepts in vLLM {version}, generated from the real parser "
                     "(sparkhelpers sim flags --write; test infrastructure). Types: str, int, float, json, "
                     "size (an integer, optionally with k/m/g), choice, list (one or more values), "
                     "store_true (a bare flag), bool_optional (--x and --no-x).",
            "flags": dict(sorted(flags.items()))}


def _accepts(action: argparse.Action, text: str) -> bool:
    try:
        (action.type or str)(text)
        return True
    except Exception:  # noqa: BLE001 - any failure of the converter means "rejected"
        return False


def _argparse_error(text: str) -> str:
    """The parser's complaint in one line: from its `error:` line on (a pydantic error spans several lines),
    without pydantic's "For further information" links."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "For further information" not in ln]
    start = next((i for i, ln in enumerate(lines) if "error:" in ln), max(len(lines) - 1, 0))
    return " | ".join(lines[start:])[:400] or "argparse exit"


def check(argvs: list[list[str]]) -> list[dict]:
    _, cli_args = _imports()
    p = serve_parser()
    out = []
    for argv in argvs:
        err = io.StringIO()
        try:
            if not argv or argv[0] != "serve":
                raise ValueError("argv must start with 'serve'")
            with contextlib.redirect_stderr(err):
                ns = p.parse_args(argv[1:])
                if ns.model_tag:
                    ns.model = ns.model_tag
                cli_args.validate_parsed_serve_args(ns)
            out.append({"ok": True, "error": ""})
        except SystemExit:
            out.append({"ok": False, "error": _argparse_error(err.getvalue())})
        except Exception as exc:  # noqa: BLE001 - report any validation error as vLLM would fail
            out.append({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
    return out


def main() -> int:
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    real_stdout = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):  # vLLM logs at import; keep stdout for the answer
        if cmd == "dump":
            result: object = dump()
        elif cmd == "check":
            result = check(json.load(sys.stdin))
        elif cmd == "both":
            result = {"spec": dump(), "verdicts": check(json.load(sys.stdin))}
        else:
            print("usage: vllm_parser.py dump | check < argvs.json | both < argvs.json", file=sys.stderr)
            return 2
    json.dump(result, real_stdout, indent=1)
    real_stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
