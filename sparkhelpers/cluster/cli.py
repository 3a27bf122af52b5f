"""`sparkhelpers cluster start|stop`, `sparkhelpers status`, `sparkhelpers logs` (thin: parse, call, print)."""

from __future__ import annotations

import typer

from sparkhelpers.appkit import info, new_app, print_json, warn

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
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Start the cluster: preflight, image, model, containers, health, one chat request."""
    from sparkhelpers.cluster import lifecycle, render
    from sparkhelpers.cluster.fabric import native_supported, resolve_fabric
    from sparkhelpers.cluster.plan import build_plan
    from sparkhelpers.config import state_dir
    from sparkhelpers.locking import cluster_lock
    from sparkhelpers.runner import Runner

    cfg = _config()
    api_key = lifecycle.read_secret(cfg.get("API_KEY"), cfg.get("API_KEY_FILE"), "API_KEY")
    hf_token = lifecycle.read_secret(cfg.get("HF_TOKEN"), cfg.get("HF_TOKEN_FILE"), "HF_TOKEN")
    spec = _model_spec(cfg)
    runner = Runner()
    fabric = resolve_fabric(cfg, runner, nodes=nodes, solo=solo,
                            preset_nodes=spec.nodes if getattr(spec, "preset", None) else None)
    native = None
    if len(fabric) > 1 and cfg.get("LAUNCH_MODE", "auto") == "auto" and cfg.get("RUNTIME", "vllm") == "vllm":
        image = getattr(spec, "image", None) or cfg.get("VLLM_IMAGE")
        native = native_supported(runner, image, state_dir(cfg) / "image-probe.json", probe=not dry_run)
    plan = build_plan(cfg, nodes=nodes, solo=solo, timeout_s=timeout, spec=spec, fabric=fabric,
                      native_supported=native)
    if native is False:
        info("the image's vLLM is older than 0.10.2 (no Ray-less multi-node launch): using Ray")
    if nodes is None and not solo and getattr(spec, "preset", None) and len(cfg.get_list("WORKER_HOST")) + 1 != \
            len(plan.nodes):
        info(f"preset {spec.name} runs on {len(plan.nodes)} node(s); use --nodes N to spread it over more")
    secrets = {}
    if api_key:
        secrets["LLAMA_API_KEY" if plan.mode == "llama-cpp" else "VLLM_API_KEY"] = api_key
    if hf_token:
        secrets["HF_TOKEN"] = hf_token
    if dry_run:
        config_hash = plan.config_hash()
        typer.echo(render.describe(plan, render.start_phases(plan, config_hash, secrets), config_hash), nl=False)
        return

    def stop_all() -> None:
        _stop(cfg, runner, force=False, local_only=False, quiet=False)

    import signal

    def terminated(signum, frame):  # noqa: ANN001, ANN202
        raise KeyboardInterrupt  # SIGTERM cleans up like Ctrl-C: never leave a half-started cluster

    signal.signal(signal.SIGTERM, terminated)
    with cluster_lock(cfg, what="start_cluster.sh"):
        starter = lifecycle.Starter(plan, runner, secrets=secrets, replace=replace, keep_on_failure=keep_on_failure,
                                    drop_caches=cfg.get_bool("DROP_CACHES", False), api_key=api_key,
                                    say=info, stop_all=stop_all)
        report = starter.start()
    if as_json:
        print_json(report.as_dict())
        return
    if report.already_running:
        return
    typer.echo(f"cluster {plan.cluster} is ready: {plan.endpoint}/v1 serving {plan.served_name} "
               f"({plan.mode}, {len(plan.nodes)} node(s): "
               f"{', '.join(n.fabric_ip or n.host.label for n in plan.nodes)})")
    typer.echo(f"test answer: {report.answer[:200]!r}")
    typer.echo("phases: " + ", ".join(f"{k} {v:.1f}s" for k, v in report.phases.items()))


def _model_spec(cfg):  # noqa: ANN001, ANN202
    """The models helper's ModelSpec when it is installed (catalog presets), else None."""
    try:
        from sparkhelpers.models import resolve_model  # type: ignore[attr-defined]
    except ImportError:
        return None
    return resolve_model(cfg)


def _stop(cfg, runner, *, force: bool, local_only: bool, quiet: bool) -> list:  # noqa: ANN001
    from sparkhelpers.cluster import lifecycle
    from sparkhelpers.cluster.plan import worker_hosts
    from sparkhelpers.config import state_dir
    from sparkhelpers.runner import LOCAL
    from sparkhelpers.validate import cluster_name

    cluster = cluster_name(cfg.get("CLUSTER_NAME", "spark"))
    hosts = [("head", LOCAL)] + ([] if local_only else [(h.address, h) for h in worker_hosts(cfg)])
    results = lifecycle.stop_nodes(runner, cluster, f"{state_dir(cfg)}/run/{cluster}", hosts, force=force,
                                   grace_s=cfg.get_int("STOP_TIMEOUT", 20))
    if not quiet:
        for r in results:
            if r.ok:
                info(f"{r.node}: {r.removed} container(s) of cluster {cluster} removed" if r.removed
                     else f"{r.node}: nothing of cluster {cluster} running")
            else:
                warn(f"{r.node}: could not stop (unreachable?): {r.error}")
    return results


@app.command("stop")
def stop(
    local_only: bool = typer.Option(False, "-l", "--local-only", help="Stop only the containers on this node."),
    force: bool = typer.Option(False, "-f", "--force", help="Kill containers without a clean shutdown."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the commands per node and change nothing."),
    as_json: bool = typer.Option(False, "--json", help="Print per-node results as JSON."),
) -> None:
    """Stop this cluster's containers (found by label) on every node in parallel."""
    from sparkhelpers.errors import SparkError
    from sparkhelpers.locking import cluster_lock
    from sparkhelpers.runner import Runner

    cfg = _config()
    runner = Runner(dry_run=dry_run, echo=typer.echo)
    if dry_run:
        _stop(cfg, runner, force=force, local_only=local_only, quiet=True)
        return
    if force:  # --force must work even while a hung start holds the lock (that start then fails cleanly)
        results = _stop(cfg, runner, force=force, local_only=local_only, quiet=False)
    else:
        with cluster_lock(cfg, what="stop_cluster.sh", wait_s=30):
            results = _stop(cfg, runner, force=force, local_only=local_only, quiet=False)
    if as_json:
        print_json([{"node": r.node, "ok": r.ok, "removed": r.removed, "docker_s": round(r.docker_s, 3),
                     "error": r.error} for r in results])
    failed = [r.node for r in results if not r.ok]
    if failed:
        raise SparkError(f"could not reach {', '.join(failed)}; its containers may still be running",
                         fix="bring the node back and run stop_cluster.sh again (stopping twice is harmless)")


@status_app.command("status")
def status(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Per node: our containers and their state, MemAvailable, NCCL transport; Ray; model and health."""
    from sparkhelpers.cluster import status as st
    from sparkhelpers.runner import Runner

    cfg = _config()
    data = st.collect(cfg, Runner())
    if as_json:
        print_json(data)
    else:
        typer.echo(st.format_text(data), nl=False)
    if not data["healthy"] and data["running"]:
        raise typer.Exit(1)


@logs_app.command("logs")
def logs(
    node: str = typer.Option("0", "--node", "-n", help="Rank (0 = head) or worker host name."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines."),
    tail: int = typer.Option(100, "--tail", help="Lines to print from the end."),
    ray: bool = typer.Option(False, "--ray", help="The Ray log instead of the engine log."),
) -> None:
    """Print the last lines of a node's engine log (kept on the host under SPARK_STATE_DIR/logs)."""
    from sparkhelpers.cluster import nodes as nd
    from sparkhelpers.cluster.status import pick_node
    from sparkhelpers.config import state_dir
    from sparkhelpers.runner import Runner

    cfg = _config()
    rank, host = pick_node(cfg, node)
    cluster = cfg.get("CLUSTER_NAME", "spark")
    script = nd.tail_cmd(f"{state_dir(cfg)}/logs/{cluster}", rank, tail, follow, "ray" if ray else "")
    try:
        r = Runner().on(host, script, capture=False, timeout=None)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    if not r.ok:
        raise typer.Exit(r.returncode if r.returncode != 255 else 1)
