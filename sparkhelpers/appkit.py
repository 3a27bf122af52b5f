"""What every Typer sub-app shares: the app factory, JSON output and the error exit."""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Any

import typer


def new_app(help_text: str, **kwargs: Any) -> typer.Typer:
    """A sub-app with plain help (no rich: keeps start-up fast and --help output stable)."""
    kwargs.setdefault("no_args_is_help", True)
    return typer.Typer(help=help_text, add_completion=False, rich_markup_mode=None,
                       pretty_exceptions_enable=False, **kwargs)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def warn(message: str) -> None:
    typer.echo(f"sparkhelpers: warning: {message}", err=True)


def info(message: str) -> None:
    typer.echo(f"sparkhelpers: {message}", err=True)


# Status words at the start of a line, as every check list prints them (PASS/WARN/FAIL, ok, missing...).
_STATUS_COLOURS = {"PASS": "32", "OK": "32", "WARN": "33", "FAIL": "31", "MISSING": "31", "BAD": "31"}
_STATUS_RE = re.compile(r"^(\s*)(PASS|WARN|FAIL|ok|missing|bad)\b", re.MULTILINE)


def colour_enabled(stream=None) -> bool:  # noqa: ANN001
    """Colour only on a terminal, never with NO_COLOR set (https://no-color.org) or TERM=dumb."""
    stream = stream or sys.stdout
    if os.environ.get("NO_COLOR", "") != "" or os.environ.get("TERM") == "dumb":
        return False
    return bool(getattr(stream, "isatty", lambda: False)())


def colour_status(text: str, stream=None) -> str:  # noqa: ANN001
    """``text`` with its line-leading status words coloured when ``stream`` (stdout) is a terminal."""
    if not colour_enabled(stream):
        return text
    return _STATUS_RE.sub(lambda m: f"{m.group(1)}\033[{_STATUS_COLOURS[m.group(2).upper()]}m{m.group(2)}\033[0m",
                          text)


def echo_status(text: str) -> None:
    """typer.echo for check lists: the status words coloured on a terminal."""
    typer.echo(colour_status(text))
