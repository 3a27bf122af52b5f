"""What every Typer sub-app shares: the app factory, JSON output and the error exit."""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Any

import typer
from typer.core import TyperGroup


class SuggestGroup(TyperGroup):
    """An unknown sub-command names the close ones, case-insensitively ("MODELS", "modles" -> models)."""

    def resolve_command(self, ctx, args):  # noqa: ANN001, ANN201
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            from click.exceptions import UsageError as ClickUsageError

            from sparkhelpers.errors import did_you_mean

            hint = did_you_mean(name, self.list_commands(ctx))
            raise ClickUsageError(f"No such command {name!r}." + (f" {hint[0].upper()}{hint[1:]}" if hint else ""),
                                  ctx)
        return super().resolve_command(ctx, args)


def new_app(help_text: str, **kwargs: Any) -> typer.Typer:
    """A sub-app with plain help (no rich: keeps start-up fast and --help output stable)."""
    kwargs.setdefault("no_args_is_help", True)
    kwargs.setdefault("cls", SuggestGroup)
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


def complete_preset(incomplete: str) -> list[str]:
    """Shell completion of a model preset name (the built-in catalog plus MODEL_CATALOG's)."""
    try:
        from sparkhelpers.config import load_config
        from sparkhelpers.models.catalog import catalog_for

        names = list(catalog_for(load_config()))
    except Exception:  # noqa: BLE001 - a broken config must not break the user's shell
        return []
    return [n for n in names if n.startswith(incomplete.lower())]
