"""The ``sparkhelpers`` command: a root group whose sub-apps are imported only when used.

Start-up time matters (scripts call us for every decision), so ``--help`` lists sub-commands from
the static table below and a sub-app's module is imported only when that sub-command runs.
"""

from __future__ import annotations

import importlib
import sys

import typer

from sparkhelpers import __version__
from sparkhelpers.appkit import SuggestGroup
from sparkhelpers.errors import SparkError
from sparkhelpers.examples import epilog

# name -> (module, attribute holding the typer.Typer, one-line help). One entry per concern.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "config": ("sparkhelpers.config.cli", "app", "Show, get and set configuration values and their sources."),
    "discover": ("sparkhelpers.discover.cli", "app", "Discover a host's fabric and NCCL settings; capture snapshots."),
    "sim": ("sparkhelpers.sim.cli", "app", "Emulated Spark cluster on this machine (test infrastructure)."),
    "models": ("sparkhelpers.models.cli", "app", "Model catalog, fit estimate, download, verify and sync to workers."),
    "doctor": ("sparkhelpers.discover.cli", "doctor_app", "Check every node and the links between them."),
    "cluster": ("sparkhelpers.cluster.cli", "app", "Start and stop the vLLM cluster."),
    "status": ("sparkhelpers.cluster.cli", "status_app", "Show containers, Ray, model, health and NCCL transport."),
    "logs": ("sparkhelpers.cluster.cli", "logs_app", "Print or follow a node's engine log."),
    "setup": ("sparkhelpers.discover.cli", "setup_app", "Interactive set-up of config.local.env (setup-env.sh)."),
    "bench": ("sparkhelpers.bench.cli", "app", "Benchmark a server (vllm bench serve metrics), ingest, compare."),
    "chat": ("sparkhelpers.chat", "app", "Chat with the served model (one-shot or interactive, streaming)."),
    "recipe": ("sparkhelpers.recipes.cli", "app", "Recipes: show, validate, hash, render, list, import, export."),
    "gateway": ("sparkhelpers.gateway.cli", "app", "One endpoint for the cluster: models on demand, keys, metrics."),
    "keys": ("sparkhelpers.gateway.keys_cli", "keys_app", "Gateway API keys: create, list, revoke, rotate."),
    "usage": ("sparkhelpers.gateway.keys_cli", "usage_app", "Gateway usage per key x model x day."),
    "tune": ("sparkhelpers.tune.cli", "app", "Tune a model's recipe: levers or an oracle, measured, kept if it wins."),
}


def load_command(name: str) -> typer.main.click.Command | None:  # type: ignore[name-defined]
    entry = COMMANDS.get(name)
    if entry is None:
        return None
    module, attr, _ = entry
    command = typer.main.get_command(getattr(importlib.import_module(module), attr))
    command.name = name
    _add_examples(command, name)
    return command


def _add_examples(command, path: str) -> None:  # noqa: ANN001
    """Each command's --help ends with its examples (sparkhelpers/examples.py)."""
    command.epilog = command.epilog or epilog(path)
    for sub_name, sub in (getattr(command, "commands", None) or {}).items():
        _add_examples(sub, f"{path} {sub_name}")


class LazyGroup(SuggestGroup):
    def list_commands(self, ctx):  # noqa: ANN001, ANN201
        return list(COMMANDS)

    def get_command(self, ctx, cmd_name):  # noqa: ANN001, ANN201
        return load_command(cmd_name)

    def format_commands(self, ctx, formatter):  # noqa: ANN001, ANN201
        rows = [(name, help_text) for name, (_, _, help_text) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx):  # noqa: ANN001, ANN201
        try:
            try:
                return super().invoke(ctx)
            except Exception as exc:  # a bad answer from a server is one line, never a traceback
                bad = server_answer_error(exc)
                if bad is None:
                    raise
                raise bad from None
        except SparkError as exc:
            typer.echo(f"sparkhelpers: {exc.message}", err=True)
            if exc.fix:
                typer.echo(f"sparkhelpers: fix: {exc.fix}", err=True)
            raise typer.Exit(exc.exit_code) from None


def server_answer_error(exc: Exception) -> SparkError | None:
    """An HTTP client error that escaped a command (unreachable server, non-JSON body, ...) as one line."""
    import sys

    requests = sys.modules.get("requests")  # only when a command imported it: keeps start-up fast
    if requests is None or not isinstance(exc, requests.RequestException):
        return None
    url = getattr(getattr(exc, "request", None), "url", "") or ""
    what = "not JSON" if isinstance(exc, requests.exceptions.JSONDecodeError) else type(exc).__name__
    return SparkError(f"bad answer from the server{f' at {url}' if url else ''} ({what}): {str(exc)[:200]}",
                      fix="check that the endpoint is the engine or gateway you meant (`sparkhelpers status`) "
                          "and read its log (`sparkhelpers logs --node 0`)")


app = typer.Typer(
    cls=LazyGroup,
    help="Turn DGX Spark boxes into a vLLM serving cluster, check it and measure it.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion and --show-completion (bash, zsh, fish)
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=epilog(""),
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sparkhelpers {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Turn DGX Spark boxes into a vLLM serving cluster, check it and measure it."""


def _terminated(signum, _frame) -> None:  # noqa: ANN001
    """SIGTERM (a `kill` of the PID the cluster lock names, systemd, timeout): our children end with us."""
    import os
    import signal

    from sparkhelpers.runner import end_descendants

    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one while we clean up changes nothing
    end_descendants()
    if not _flushed_within(f"sparkhelpers: terminated ({signal.Signals(signum).name})", 1.0):
        os._exit(128 + signum)  # a terminal that takes nothing (stopped, unread) must not keep us alive
    raise SystemExit(128 + signum)


def _flushed_within(line: str, seconds: float) -> bool:
    """Writes ``line`` to stderr and flushes both streams on a helper thread: False when that blocks longer
    than ``seconds`` (the interpreter's exit would flush them again and wait there for ever)."""
    import threading

    done = threading.Event()

    def write() -> None:
        try:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
            sys.stdout.flush()
        except (OSError, ValueError):  # a stream closed: nothing more to flush
            return
        done.set()

    threading.Thread(target=write, daemon=True).start()
    return done.wait(seconds)


def main() -> None:
    import signal

    # Commands that must clean up more (start, switch, sweep) install their own handler.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminated)
    app(prog_name="sparkhelpers")


if __name__ == "__main__":
    sys.exit(main())
