"""What every Typer sub-app shares: the app factory, JSON output and the error exit."""

from __future__ import annotations

import json
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
