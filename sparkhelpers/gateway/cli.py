"""``sparkhelpers gateway``: run, start, stop, status, unit, check and export the gateway."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from sparkhelpers.appkit import info, new_app, print_json

app = new_app("One OpenAI-compatible endpoint for the cluster: models on demand, keys, quotas, usage, metrics.")

MODELS_HELP = "The models file (default: GATEWAY_MODELS_FILE, else SPARK_STATE_DIR/gateway/models.yaml)."


@app.callback()
def gateway() -> None:
    """One OpenAI-compatible endpoint for the cluster: models on demand, keys, quotas, usage, metrics.

    Example: sparkhelpers keys create admin --admin; sparkhelpers gateway start --models models.yaml
    """


def _load(models: str, listen: str = ""):  # noqa: ANN202
    from sparkhelpers.config import load_config, state_dir
    from sparkhelpers.errors import UsageError
    from sparkhelpers.gateway import launcher, models_file, service

    spark_cfg = load_config()
    sdir = state_dir(spark_cfg)
    path = Path(models) if models else service.default_models_file(sdir)
    cfg = models_file.load(path)
    launcher.served_names(cfg, spark_cfg)
    for name, address in _node_addresses(spark_cfg).items():  # the cluster's own names, unless the file maps them
        cfg.nodes.setdefault(name, address)
    if listen:
        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit():
            raise UsageError(f"--listen {listen!r} is not HOST:PORT", fix="e.g. --listen 0.0.0.0:4000")
        cfg.listen_host, cfg.listen_port = host, int(port)
    return cfg, path, sdir


def _node_addresses(spark_cfg) -> dict[str, str]:  # noqa: ANN001
    """Node name -> the address its API answers on: ``head`` (rank 0, HEAD_HOST from a control machine) and each
    WORKER_HOST entry, from the cluster's topology."""
    from sparkhelpers.errors import SparkError
    from sparkhelpers.topology import topology

    try:
        nodes = topology(spark_cfg).nodes
    except SparkError:
        return {}
    return {n.name: "127.0.0.1" if n.host.is_local else n.host.address for n in nodes}


@app.command("run")
def run_cmd(
    models: str = typer.Option("", "--models", "-m", help=MODELS_HELP),
    listen: str = typer.Option("", "--listen", help="HOST:PORT to bind (overrides the models file's listen)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print each replica's command and URL; start nothing."),
) -> None:
    """Run the gateway in the foreground until SIGTERM/SIGINT (what systemd runs); it stops its engines on exit."""
    from sparkhelpers.gateway import launcher, server

    cfg, _, sdir = _load(models, listen)
    if dry_run:
        key_file = str(server.gateway_dir(sdir) / "internal.key")
        for entry in cfg.models.values():
            for rep in entry.replicas:
                spec = launcher.launch_spec(cfg, entry, rep, key_file)
                serves = f", serves {entry.upstream_model}" if entry.upstream_model else ""
                print(f"{rep.id} on {','.join(rep.nodes)}: {spec.base_url} "
                      f"(health {spec.health_url or 'none'}{serves}): {' '.join(spec.argv)}")
        return
    server.serve(cfg, sdir)


@app.command("check")
def check_cmd(models: str = typer.Option("", "--models", "-m", help=MODELS_HELP)) -> None:
    """Validate the models file: print its models, replicas, node sets and ports."""
    cfg, path, _ = _load(models)
    for entry in cfg.models.values():
        sets = " ".join(f"[{','.join(r.nodes)}]:{r.port}" for r in entry.replicas)
        print(f"{entry.name}: {'recipe ' + entry.recipe if entry.recipe else 'cmd'}; replicas {sets}; "
              f"ttl {entry.ttl:g}; concurrency {entry.concurrency}" + (f"; group {entry.group}" if entry.group else ""))
    info(f"{path}: {len(cfg.models)} models, listen {cfg.listen_host}:{cfg.listen_port}")


@app.command("start")
def start_cmd(
    models: str = typer.Option("", "--models", "-m", help=MODELS_HELP),
    timeout: float = typer.Option(30.0, "--timeout", help="Seconds to wait for the gateway to answer /health."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the command; start nothing."),
) -> None:
    """Start the gateway in the background (log: SPARK_STATE_DIR/gateway/gateway.log); ready when it answers."""
    from sparkhelpers.gateway import service
    from sparkhelpers.runner import Runner

    cfg, path, sdir = _load(models)
    pid, what = service.start(cfg, path, sdir, timeout, Runner(dry_run=dry_run))
    if not dry_run:
        info(f"gateway {what}: {service.url_of(cfg)} (pid {pid})")


@app.command("stop")
def stop_cmd(timeout: float = typer.Option(120.0, "--timeout", help="Seconds to wait before SIGKILL.")) -> None:
    """Stop the background gateway (SIGTERM: it stops its engines first)."""
    from sparkhelpers.config import load_config, state_dir
    from sparkhelpers.gateway import service

    info("gateway " + service.stop(state_dir(load_config()), timeout))


@app.command("status")
def status_cmd(
    models: str = typer.Option("", "--models", "-m", help=MODELS_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Is the gateway up, and which models run where (its GET /running)."""
    from sparkhelpers.errors import SparkError
    from sparkhelpers.gateway import service

    cfg, _, sdir = _load(models)
    url, pid = service.url_of(cfg), service.read_pid(sdir)
    if not service.healthy(url):
        raise SparkError(f"no gateway answers at {url}" + (f" (pid {pid} is alive)" if pid else ""),
                         fix="sparkhelpers gateway start --models FILE")
    running = service.control_get(sdir, url, "/running").get("running", [])
    if as_json:
        print_json({"url": url, "pid": pid, "running": running})
        return
    from tabulate import tabulate

    print(f"gateway {url} (pid {pid or '?'}): {len(running)} replica(s) running")
    if running:
        rows = [[r["replica"], r["state"], ",".join(r["nodes"]), r["proxy"], r["in_flight"], r["idle_s"]]
                for r in running]
        print(tabulate(rows, headers=["replica", "state", "nodes", "engine", "in flight", "idle s"]))


@app.command("unit")
def unit_cmd(
    models: str = typer.Option("", "--models", "-m", help=MODELS_HELP),
    user: str = typer.Option("", "--user", help="User= line of the unit (default: none, i.e. root)."),
) -> None:
    """Print a systemd unit for the gateway (save as /etc/systemd/system/sparkhelpers-gateway.service)."""
    from sparkhelpers.gateway import service

    _, path, sdir = _load(models)
    sys.stdout.write(service.unit_text(path, sdir, user))


@app.command("export")
def export_cmd(
    models: str = typer.Option("", "--models", "-m", help=MODELS_HELP),
    litellm: bool = typer.Option(False, "--litellm", help="A LiteLLM proxy config with the gateway as backend."),
    llama_swap: bool = typer.Option(False, "--llama-swap", help="A llama-swap config.yaml of the same models "
                                                                "(recipe models as `recipe export --to llama-swap`)."),
    per_engine: bool = typer.Option(False, "--per-engine", help="LiteLLM: each engine as a backend, not the gateway."),
    url: str = typer.Option("", "--url", help="The gateway URL LiteLLM should use (default: from listen)."),
    key_env: str = typer.Option("SPARK_GATEWAY_KEY", "--key-env", help="Env var LiteLLM reads the key from."),
    output: str = typer.Option("", "-o", "--output", help="Write to FILE instead of stdout."),
) -> None:
    """Export the models as another tool's config (no key inside): --litellm (LiteLLM proxy) or --llama-swap.

    Example: sparkhelpers gateway export --llama-swap -o llama-swap.yaml
    """
    from sparkhelpers.config import load_config
    from sparkhelpers.errors import UsageError
    from sparkhelpers.gateway import export, service

    if litellm == llama_swap:
        raise UsageError("choose one format", fix="sparkhelpers gateway export --litellm (or --llama-swap)")
    cfg, _, _ = _load(models)
    if litellm:
        text = export.litellm_yaml(cfg, url or service.url_of(cfg), per_engine=per_engine, key_env=key_env)
    else:
        text, warnings = export.llama_swap_yaml(cfg, load_config())
        for message in warnings:
            info(f"warning: {message}")
    if output:
        Path(output).write_text(text)
        info(f"wrote {output}")
    else:
        sys.stdout.write(text)
