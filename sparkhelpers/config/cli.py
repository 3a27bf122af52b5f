"""``sparkhelpers config``: show, get, set and check configuration."""

from __future__ import annotations

import os
import stat
import sys

import typer

from sparkhelpers import config as cfgmod
from sparkhelpers import secrets, validate
from sparkhelpers.appkit import echo_status, new_app, print_json, warn
from sparkhelpers.errors import SparkError, UsageError, did_you_mean

app = new_app("Show, get and set configuration values and their sources.")


def _known_keys(cfg: cfgmod.Config) -> list[str]:
    documented = [row["key"] for row in cfgmod.documented_keys()] if cfgmod.defaults_file().is_file() else []
    extra = [k for k in cfg.settings if k not in documented]
    return documented + sorted(extra)


def _warn_if_readable(path) -> None:  # noqa: ANN001
    if path.exists() and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        warn(f"{path} is readable by other users; it may hold secrets (fix: chmod 600 {path})")


@app.command()
def show(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Print every key with its value and where the value came from (secrets masked)."""
    cfg = cfgmod.load_config()
    _warn_if_readable(cfgmod.local_file())
    keys = _known_keys(cfg)
    if as_json:
        print_json({k: {"value": cfg.settings[k].display, "source": cfg.settings[k].source}
                    for k in keys if k in cfg.settings})
        return
    width = max(len(k) for k in keys)
    for k in keys:
        s = cfg.settings.get(k)
        if s is not None:
            typer.echo(f"{k:<{width}}  {s.display!s:<40}  ({s.source})")


@app.command()
def get(key: str = typer.Argument(..., help="Key name, e.g. VLLM_PORT.")) -> None:
    """Print one raw value (for scripts). Unknown keys are an error."""
    cfg = cfgmod.load_config()
    if key not in cfg.settings:
        raise SparkError(f"unknown config key {key}",
                         fix=did_you_mean(key, cfg.settings) or "see `sparkhelpers config show` for the keys")
    typer.echo(cfg.settings[key].value)


@app.command("set")
def set_(
    key: str = typer.Argument(..., help="Key name."),
    value: str = typer.Argument(..., help="New value, or - to read it from standard input (for secrets)."),
    new: bool = typer.Option(False, "--new", help="Allow a key that config.env does not define."),
) -> None:
    """Write KEY=VALUE into config.local.env (mode 0600) after checking VALUE against KEY's rule.

    Secrets: pass - and pipe the value in. Example: sparkhelpers config set VLLM_PORT 8001
    """
    documented = {row["key"] for row in cfgmod.documented_keys()}
    if key not in documented and not new:
        raise UsageError(f"{key} is not a key of config.env",
                         fix=did_you_mean(key, documented) or f"check the spelling, or pass --new to add {key}")
    if value == "-":
        value = sys.stdin.readline().rstrip("\n")
    elif cfgmod.is_secret(key) and value:
        raise UsageError(f"{key} is a secret and would show in the process list",
                         fix=f"printf '%s' \"$VALUE\" | sparkhelpers config set {key} -")
    validate.check(key, value)
    path = cfgmod.set_local(key, value)
    if key in os.environ:
        warn(f"{key} is also set in the environment, which takes precedence over {path}")
    typer.echo(f"{key} written to {path}", err=True)


@app.command()
def unset(key: str = typer.Argument(..., help="Key name.")) -> None:
    """Remove KEY from config.local.env (config.env's default applies again)."""
    path = cfgmod.unset_local(key)
    typer.echo(f"{key} removed from {path}", err=True)


@app.command()
def check() -> None:
    """Check the files' syntax (file:line), every key's value, EXTRA_ARGS's flags against the engine's flag set
    and every secret file (mode 0600, not empty).

    Every bad key is listed at once with its fix; exit 1 if there is any.
    """
    cfg = cfgmod.load_config()
    for path in cfg.files:
        echo_status(f"ok   {path}")
    from sparkhelpers.recipes.apply import extra_args_problems

    found = validate.problems(cfg) + extra_args_problems(cfg) + secrets.problems(cfg)
    for exc in found:
        typer.echo(f"bad  {exc.message}\n     fix: {exc.fix}")
    if found:
        raise SparkError(f"{len(found)} bad value{'s' if len(found) != 1 else ''} in the configuration",
                         fix="run each fix above, then sparkhelpers config check")


@app.command()
def shell() -> None:
    """Print the resolved configuration as quoted bash assignments (what the entry scripts eval).

    Secrets and names bash itself uses (PATH, IFS...) are left out; a config file that bash would
    execute is refused with file:line, exit 1. Example: eval "$(sparkhelpers config shell)"
    """
    from sparkhelpers.config import shell as shellmod

    typer.echo(shellmod.render(), nl=False)


@app.command()
def paths() -> None:
    """Print the files and directories in use (each can be redirected by an environment variable)."""
    cfg = cfgmod.load_config()
    rows = [
        ("SPARK_HOME", cfgmod.spark_home()),
        ("SPARK_CONFIG_DEFAULTS", cfgmod.defaults_file()),
        ("SPARK_CONFIG", cfgmod.local_file()),
        ("SPARK_STATE_DIR", cfgmod.state_dir(cfg)),
        ("RESULTS_DIR", cfgmod.results_dir(cfg)),
        ("HF_CACHE", cfg.get("HF_CACHE")),
    ]
    for name, value in rows:
        typer.echo(f"{name:<22} {value}")
