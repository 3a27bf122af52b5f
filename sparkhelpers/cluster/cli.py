"""`sparkhelpers cluster start|stop`, `sparkhelpers status`, `sparkhelpers logs` (thin: parse, call, print)."""

from __future__ import annotations

import typer

from sparkhelpers.appkit import complete_preset, info, new_app, print_json
from sparkhelpers.errors import SparkError, UsageError

app = new_app("Start and stop the vLLM cluster (what start_cluster.sh and stop_cluster.sh run).")
status_app = new_app("Show the cluster: containers per node, Ray, the served model and health, NCCL transport.",
                     no_args_is_help=False)
logs_app = new_app("Print or follow the engine log of one node (logs live on each host).", no_args_is_help=False)


def _config(**flags: str | None):  # noqa: ANN202
    from sparkhelpers.config import load_config

    return load_config(flags=flags)


@app.command("start")
def start(
    dry_run: bool = typer.Option(False, "--dry-run", help="Print every command per node and change nothing."),
    nodes: int | None = typer.Option(None, "--nodes", help="Use the head plus the first N-1 workers."),
    solo: bool = typer.Option(False, "--solo", help="Single node: the head only."),
    replace: bool = typer.Option(False, "--replace", help="Stop a different running configuration first."),
    keep_on_failure: bool = typer.Option(False, "--keep-on-failure",
                                         help="Leave containers running after a failure, for debugging."),
    timeout: int | None = typer.Option(None, "--timeout", help="Seconds to wait for health (START_TIMEOUT)."),
    recipe: str | None = typer.Option(None, "--recipe", help="Serve this recipe (file, name on RECIPE_PATH, or "
                                                             "preset) instead of the configured MODEL."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Start the cluster: preflight, image, model, containers, health, one chat request."""
    import signal

    from sparkhelpers.cluster import control
    from sparkhelpers.locking import cluster_lock

    cfg, spec = _recipe_start(_config(), recipe, nodes, solo)
    if dry_run:
        outcome = control.start_cluster(cfg, nodes=nodes, solo=solo, timeout=timeout, dry_run=True, spec=spec)
        typer.echo(outcome.dry_run_text, nl=False)
        return
    signal.signal(signal.SIGTERM, _terminated)
    with cluster_lock(cfg, what="start_cluster.sh"):
        outcome = control.start_cluster(cfg, nodes=nodes, solo=solo, replace=replace,
                                        keep_on_failure=keep_on_failure, timeout=timeout, spec=spec)
    plan, report = outcome.plan, outcome.report
    if as_json:
        print_json(report.as_dict())
        return
    if report.already_running:
        return
    _print_ready(plan, report)


def _recipe_start(cfg, recipe: str | None, nodes: int | None, solo: bool):  # noqa: ANN001, ANN202
    """(config, spec): the configured model (spec None: control resolves MODEL), or the recipe's."""
    recipe = recipe or cfg.get("RECIPE")
    if not recipe:
        return cfg, None
    from sparkhelpers.recipes.apply import load_for_start

    return load_for_start(cfg, recipe, nodes, solo)


@app.command("run")
def run(
    recipe: str = typer.Option(..., "--recipe", help="The recipe to serve (file, name on RECIPE_PATH, or preset)."),
    nodes: str | None = typer.Option(None, "--nodes", help="A node count, or the node set H1,H2,... "
                                                           "(configured nodes; the first serves the API)."),
    solo: bool = typer.Option(False, "--solo", help="Single node: the head only."),
    port: int | None = typer.Option(None, "--port", help="Serve on this port (VLLM_PORT)."),
    replace: bool = typer.Option(False, "--replace", help="Stop a different running configuration first."),
    timeout: int | None = typer.Option(None, "--timeout", help="Seconds to wait for health (START_TIMEOUT)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print every command per node and change nothing."),
) -> None:
    """Foreground mode: start the recipe, stay while every rank is alive and healthy; SIGTERM/SIGINT stop every
    rank (exit 0); a rank that dies stops the rest (exit 1). What llama-swap, systemd or the gateway run.

    Example: sparkhelpers cluster run --recipe qwen3-8b --nodes 2 --port 8001
    """
    import signal

    from sparkhelpers.cluster import control, foreground
    from sparkhelpers.locking import cluster_lock
    from sparkhelpers.runner import Runner

    base = _config(VLLM_PORT=str(port) if port else None)
    count, base = _node_set(base, nodes)
    cfg, spec = _recipe_start(base, recipe, count, solo)
    if dry_run:
        outcome = control.start_cluster(cfg, nodes=count, solo=solo, timeout=timeout, dry_run=True, spec=spec)
        typer.echo(outcome.dry_run_text, nl=False)
        return
    signal.signal(signal.SIGTERM, _terminated)
    runner = Runner()
    with cluster_lock(cfg, what="sparkhelpers cluster run"):
        outcome = control.start_cluster(cfg, nodes=count, solo=solo, replace=replace, timeout=timeout, spec=spec,
                                        runner=runner)
    _print_ready(outcome.plan, outcome.report)
    foreground.install_stop_signals()
    try:
        reason = foreground.Watch(outcome.plan, runner, info).serve()
    except foreground.Stop as why:
        info(f"{why}: stopping every rank")
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with cluster_lock(cfg, what="sparkhelpers cluster run (stop)", wait_s=60):
            control.stop_cluster(cfg, runner)
        control.close_ssh(cfg, runner)
        return
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    info(f"{reason}: stopping the other ranks")
    with cluster_lock(cfg, what="sparkhelpers cluster run (stop)", wait_s=60):
        control.stop_cluster(cfg, runner, force=True)
    control.close_ssh(cfg, runner)
    raise SparkError(f"recipe {recipe} stopped serving: {reason.splitlines()[0]}",
                     fix="read the rank's log (`sparkhelpers logs --node N`), then run it again")


def _node_set(cfg, nodes: str | None):  # noqa: ANN001, ANN202
    """--nodes N (a count) or H1,H2,...: the configuration narrowed to those nodes, the first as rank 0."""
    if nodes is None or nodes.isdigit():
        return (int(nodes) if nodes else None), cfg
    from sparkhelpers.topology import topology

    topo = topology(cfg)
    picked = [topo.pick(name.strip()) for name in nodes.split(",") if name.strip()]
    if len({n.rank for n in picked}) != len(picked) or not picked:
        raise UsageError(f"--nodes {nodes} names a node twice (or none)", fix="list each node once: H1,H2")
    head, workers = picked[0], picked[1:]
    flags = {"WORKER_HOST": " ".join(w.host.address for w in workers),
             "WORKER_IB_IP": " ".join(w.fabric_ip for w in workers) if all(w.fabric_ip for w in workers) else "",
             "HEAD_IP": head.fabric_ip,  # the second twin narrowed alike (its lists must match WORKER_HOST)
             "WORKER_IB_IP2": " ".join(w.fabric2_ip for w in workers) if all(w.fabric2_ip for w in workers) else "",
             "HEAD_IP2": head.fabric2_ip}
    if head.rank != 0:
        flags["HEAD_HOST"] = head.host.address
    return len(picked), cfg.with_overrides(**flags)


def _terminated(signum, frame):  # noqa: ANN001, ANN202
    from sparkhelpers.cluster.lifecycle import Terminated
    from sparkhelpers.runner import end_descendants

    end_descendants()  # what runs now (an ssh, a docker run) ends; the cleanup starts its own
    raise Terminated  # SIGTERM cleans up like Ctrl-C (never a half-started cluster), reported as SIGTERM


def _print_ready(plan, report) -> None:  # noqa: ANN001
    typer.echo(f"cluster {plan.cluster} is ready: {plan.endpoint}/v1 serving {plan.served_name} "
               f"({plan.mode}, {len(plan.nodes)} node(s): "
               f"{', '.join(n.fabric_ip or n.host.label for n in plan.nodes)})")
    typer.echo(f"test answer: {report.answer[:200]!r}")
    typer.echo("phases: " + ", ".join(f"{k} {v:.1f}s" for k, v in report.phases.items()))
    for message in report.warnings:
        typer.echo(f"warning: {message}")


@app.command("stop")
def stop(
    local_only: bool = typer.Option(False, "-l", "--local-only", help="Stop only the containers on this node."),
    force: bool = typer.Option(False, "-f", "--force",
                               help="End the command holding the cluster lock, then kill the containers at once."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the commands per node and change nothing."),
    as_json: bool = typer.Option(False, "--json", help="Print per-node results as JSON."),
) -> None:
    """Stop this cluster's containers (found by label) on every node in parallel."""
    from sparkhelpers.cluster import control
    from sparkhelpers.locking import cluster_lock, end_holder, lock_path
    from sparkhelpers.runner import Runner

    cfg = _config()
    runner = Runner(dry_run=dry_run, echo=typer.echo)
    if dry_run:
        control.stop_cluster(cfg, runner, force=force, local_only=local_only, quiet=True)
        control.close_ssh(cfg, runner)
        return
    if force:  # --force must work while a hung start or a sweep holds the lock: end the holder, then stop
        end_holder(lock_path(cfg))
        results = control.stop_cluster(cfg, runner, force=force, local_only=local_only)
    else:
        with cluster_lock(cfg, what="stop_cluster.sh", wait_s=30):
            results = control.stop_cluster(cfg, runner, force=force, local_only=local_only)
    control.close_ssh(cfg, runner)  # the shared SSH connections go with the cluster
    if as_json:
        print_json([{"node": r.node, "ok": r.ok, "removed": r.removed, "docker_s": round(r.docker_s, 3),
                     "error": r.error} for r in results])
    failed = control.stop_failures(results)
    if failed:
        raise SparkError(f"could not reach {', '.join(failed)}; its containers may still be running",
                         fix="bring the node back and run stop_cluster.sh again (stopping twice is harmless)")


@app.command("switch")
def switch_cmd(
    name: str = typer.Argument(None, help="Preset name, its number from --list, or a Hugging Face repo id.",
                               autocompletion=complete_preset),
    list_: bool = typer.Option(False, "-l", "--list", help="List the model presets (numbered) and exit."),
    download_only: bool = typer.Option(False, "-d", "--download-only",
                                       help="Download (and sync) the model; leave the config and cluster alone."),
    skip_download: bool = typer.Option(False, "--skip-download",
                                       help="Do not download or sync; the model must already be on every node."),
    skip_restart: bool = typer.Option(False, "-s", "--skip-restart",
                                      help="Write the choice into config.local.env; do not restart the cluster."),
    wait: int = typer.Option(0, "--wait", min=0, help="Seconds to wait for a start, stop or sweep holding "
                                                          "the cluster lock (default: refuse at once)."),
    recipe: str | None = typer.Option(None, "--recipe", help="Serve this recipe (file, name on RECIPE_PATH, or "
                                                             "preset); written as RECIPE=..."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Serve another model: resolve, check the layout, download/sync, write MODEL, stop, start, smoke chat.

    Example: sparkhelpers cluster switch qwen3-8b --skip-download
    """
    import signal

    from sparkhelpers.cluster import switch as sw
    from sparkhelpers.locking import cluster_lock

    if list_:
        return _list_models()
    if recipe and name:
        raise UsageError("give a model NAME or --recipe, not both", fix="switch_model.sh --recipe FILE")
    if not name and not recipe:
        name = _menu_choice()
    req = sw.SwitchRequest(name or "", download_only=download_only, skip_download=skip_download,
                           skip_restart=skip_restart, recipe=recipe or "")
    req.check()
    cfg = _config()
    signal.signal(signal.SIGTERM, _terminated)
    try:
        if download_only:  # touches neither the config nor the cluster: no lock (a download may take an hour)
            report = sw.switch(cfg, req)
        else:
            with cluster_lock(cfg, what="switch_model.sh", wait_s=wait):
                report = sw.switch(cfg, req)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM outside the start (which cleans up and reports itself)
        from sparkhelpers.cluster.lifecycle import Interrupted

        raise Interrupted("switch interrupted (a start in progress removed what it had started)",
                          fix="run switch_model.sh again (downloads resume); sparkhelpers status shows the "
                              "cluster") from None
    if as_json:
        print_json(report.as_dict())
    elif download_only:
        info(f"{report.name} is downloaded (and on every worker it needs); config unchanged")
    elif skip_restart:
        info(f"MODEL={report.name} written to config.local.env; serve it with: ./stop_cluster.sh && "
             "./start_cluster.sh")
    else:
        typer.echo(f"{report.name} is serving at {report.endpoint}/v1; test answer: {report.answer[:200]!r}")


def _list_models() -> None:
    from sparkhelpers.models.cli import list_

    list_(as_json=False)


def _menu_choice() -> str:
    """No model named: on a terminal, the numbered list and a prompt; otherwise a usage error."""
    import sys

    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError("name a model: a preset, its number from --list, or a Hugging Face repo id",
                         fix="switch_model.sh --list, then switch_model.sh NAME")
    _list_models()
    choice = typer.prompt("Model (number or name; empty to cancel)", default="", show_default=False).strip()
    if not choice:
        raise typer.Exit(1)
    return choice


@status_app.command("status")
def status(
    as_json: bool = typer.Option(False, "--json", help="Print JSON (with --watch: one object per refresh)."),
    watch_: bool = typer.Option(False, "--watch", "-w", help="Refresh in place until Ctrl-C (off a terminal: once)."),
    interval: float = typer.Option(2.0, "--interval", min=0.2, help="Seconds between refreshes (--watch)."),
    count: int = typer.Option(0, "--count", min=0, help="Stop after this many refreshes (--watch; 0 = never)."),
) -> None:
    """Per node: our containers and their state, MemAvailable, NCCL transport; Ray; model and health; the
    engine's requests running/waiting, KV-cache use and prefix hits (its /metrics).

    Exit 0 running and healthy (the API answers with the configured key), 1 not, 2 a node could not be asked.
    """
    from sparkhelpers.cluster import status as st
    from sparkhelpers.errors import SparkError
    from sparkhelpers.runner import Runner

    cfg = _config()
    if watch_:
        from sparkhelpers.cluster.watch import watch

        watch(lambda: st.collect(cfg, Runner()), st.format_text, interval_s=interval, as_json=as_json, count=count)
        return
    data = st.collect(cfg, Runner())
    if as_json:
        print_json(data)
    else:
        typer.echo(st.format_text(data), nl=False)
    code = st.exit_code(data)
    if data["errors"]:  # never report absence where we could not look
        err = SparkError(f"could not look at {len(data['errors'])} node(s): {'; '.join(data['errors'])}",
                         fix="start Docker there (sudo systemctl start docker) or bring the node back, "
                             "then run status again")
        err.exit_code = code
        raise err
    if code:
        raise typer.Exit(code)


def _require_ssh(host, rank: int) -> None:  # noqa: ANN001
    """A node that does not answer is one clear line, not a bare ssh error (logs stay on each host)."""
    from sparkhelpers.errors import SparkError
    from sparkhelpers.runner import Runner

    if host.is_local:
        return
    r = Runner().on(host, "true", timeout=host.connect_timeout + 10, mutating=False)
    if not r.ok:
        raise SparkError(f"cannot read node {rank}'s log: {host.address} does not answer SSH "
                         f"({r.last_line or f'exit {r.returncode}'})",
                         fix=f"bring the node back (`ssh -o BatchMode=yes {host.target} true` must work); its "
                             "logs are kept on it under SPARK_STATE_DIR/logs")


@logs_app.command("logs")
def logs(
    node: str = typer.Option("0", "--node", "-n", help="Rank (0 = head) or worker host name."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines."),
    tail: int = typer.Option(100, "--tail", help="Lines to print from the end."),
    ray: bool = typer.Option(False, "--ray", help="The Ray log instead of the engine log."),
) -> None:
    """Print the last lines of a node's engine log (kept on the host under SPARK_STATE_DIR/logs)."""
    from sparkhelpers.cluster import nodes as nd
    from sparkhelpers.config import state_dir
    from sparkhelpers.runner import Runner
    from sparkhelpers.topology import topology

    cfg = _config()
    picked = topology(cfg).pick(node)
    cluster = cfg.get("CLUSTER_NAME", "spark")
    script = nd.tail_cmd(f"{state_dir(cfg)}/logs/{cluster}", picked.rank, tail, follow, "ray" if ray else "")
    _require_ssh(picked.host, picked.rank)
    try:
        r = Runner().on(picked.host, script, capture=False, timeout=None)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    if not r.ok:
        raise typer.Exit(r.returncode if r.returncode != 255 else 1)
