"""``sparkhelpers discover``, ``sparkhelpers doctor`` and ``sparkhelpers setup``: thin CLI over discover/*."""

from __future__ import annotations

from pathlib import Path

import typer

from sparkhelpers.appkit import echo_status, new_app, print_json

app = new_app("Discover this host's fabric (ConnectX-7 twins, IPs, MTU, GIDs) and the NCCL environment it needs.",
              no_args_is_help=False, invoke_without_command=True)


def _facts_for(snapshot: Path | None, host: str | None, cfg):  # noqa: ANN001, ANN202
    from sparkhelpers.discover import facts as factsmod
    from sparkhelpers.discover import probe
    from sparkhelpers.discover.nodes import worker_host
    from sparkhelpers.runner import LOCAL, Runner

    if snapshot is not None:
        return factsmod.discover_snapshot(str(snapshot))
    import tempfile

    with tempfile.TemporaryDirectory(prefix="spark-discover-") as tmp:
        target = worker_host(cfg, host) if host else LOCAL
        snap = probe.capture(Runner(), Path(tmp) / "snap", target, hf_cache=cfg.get("HF_CACHE"),
                             image=cfg.get("VLLM_IMAGE"))
        return factsmod.discover_snapshot(str(snap))


def _export_lines(data: dict) -> list[str]:
    return [f"export {key}={value}" for key, value in data["nccl_env"].items()]


def _local_summary(cfg):  # noqa: ANN001, ANN202
    from sparkhelpers.discover import fabric

    facts = _facts_for(None, None, cfg)
    single = not cfg.get_list("WORKER_HOST")
    return facts, fabric.summary(facts, single_node=single, mtu=cfg.get_int("FABRIC_MTU", fabric.RECOMMENDED_MTU))


@app.callback()
def discover(
    ctx: typer.Context,
    snapshot: Path = typer.Option(None, "--snapshot", help="Replay a snapshot directory instead of probing a host."),
    host: str = typer.Option(None, "--host", help="Probe this worker over SSH (one round trip) instead of this host."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output (facts, nccl_env, problems)."),
    exports: bool = typer.Option(False, "--exports", help="Print only the nccl_env as export lines."),
) -> None:
    """Show this host's fabric and the NCCL variables it needs. Exit 1 when a problem is an error."""
    if ctx.invoked_subcommand is not None:
        return
    from sparkhelpers.config import load_config
    from sparkhelpers.discover import fabric, render

    cfg = load_config()
    facts = _facts_for(snapshot, host, cfg)
    single = not cfg.get_list("WORKER_HOST")
    data = fabric.summary(facts, single_node=single, mtu=cfg.get_int("FABRIC_MTU", fabric.RECOMMENDED_MTU))
    if as_json:
        print_json(data)
    elif exports:
        typer.echo("\n".join(_export_lines(data)))
    else:
        typer.echo(render.facts_text(facts, data["nccl_env"], data["problems"]))
    if any(p["severity"] == "error" for p in data["problems"]):
        raise typer.Exit(1)


@app.command()
def capture(
    directory: Path = typer.Argument(..., help="New directory to write the snapshot into."),
    host: str = typer.Option(None, "--host", help="Capture this worker over SSH instead of this host."),
) -> None:
    """Write this host's facts into DIRECTORY (sys/, proc/, cmd/); never secrets. Attach it to bug reports."""
    from sparkhelpers.config import load_config
    from sparkhelpers.discover import probe
    from sparkhelpers.discover.nodes import worker_host
    from sparkhelpers.runner import LOCAL, Runner

    cfg = load_config()
    target = worker_host(cfg, host) if host else LOCAL
    path = probe.capture(Runner(), directory, target, hf_cache=cfg.get("HF_CACHE"), image=cfg.get("VLLM_IMAGE"))
    typer.echo(str(path))


doctor_app = new_app("Check every node and the links between them; exit 1 when a check fails.",
                     no_args_is_help=False, invoke_without_command=True)


@doctor_app.callback()
def doctor(
    snapshot: list[str] = typer.Option(None, "--snapshot", metavar="NAME=DIR",
                                       help="Check snapshots instead of live nodes (repeat; the first is the head)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable results."),
    quick: bool = typer.Option(False, "--quick", help="Fast checks that start nothing (default)."),
    ib: bool = typer.Option(False, "--ib", "--infiniband",
                            help="Also measure RDMA bandwidth with ib_write_bw when installed."),
    nccl: bool = typer.Option(False, "--nccl", help="Also run nccl-tests when installed and read the engine log."),
    full: bool = typer.Option(False, "--full", help="Everything, and write a redacted report bundle."),
    config: bool = typer.Option(False, "--config", help="Print this node's suggested NCCL export lines and exit."),
) -> None:
    """Per-node and cross-node checks: fabric, SSH, pings, GPU/driver/kernel, image, docker, disk, memory, ports."""
    from sparkhelpers.appkit import info
    from sparkhelpers.config import load_config
    from sparkhelpers.discover import doctor as doc
    from sparkhelpers.discover import render
    from sparkhelpers.errors import UsageError

    if config:
        typer.echo("\n".join(_export_lines(_local_summary(load_config())[1])))
        return

    chosen = [name for name, on in (("quick", quick), ("ib", ib), ("nccl", nccl), ("full", full)) if on]
    if len(chosen) > 1:
        raise UsageError(f"choose one of --quick, --ib, --nccl, --full (got {', '.join('--' + c for c in chosen)})")
    level = chosen[0] if chosen else "quick"
    cfg = load_config()
    snaps = doc.parse_snapshot_args(snapshot or [])
    report = doc.run(cfg, level=level, snapshots=snaps, progress=(lambda m: None) if as_json else info)
    if as_json:
        print_json(report.to_dict())
    else:
        echo_status(render.checks_text(report.checks))
        if report.bundle:
            typer.echo(f"report bundle: {report.bundle}")
    if report.failed:
        raise typer.Exit(1)


setup_app = new_app("Set up config.local.env: discover the head, ask for workers/user/model, validate (setup-env.sh).",
                    no_args_is_help=False, invoke_without_command=True)


@setup_app.callback()
def setup(
    non_interactive: bool = typer.Option(False, "--non-interactive", help="Never prompt; flags, config, discovery."),
    workers: str = typer.Option(None, "--workers", help="Worker SSH addresses, space- or comma-separated."),
    user: str = typer.Option(None, "--user", help="SSH user on the workers."),
    model: str = typer.Option(None, "--model", help="Model preset or Hugging Face repo id."),
    worker: bool = typer.Option(False, "--worker", help="Worker mode: check this node, print what the head needs."),
    hf_token_stdin: bool = typer.Option(False, "--hf-token-stdin", help="Read the HF token from one stdin line."),
    print_exports: bool = typer.Option(False, "--print-exports", help="Print export lines (for a sourced script)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Ask and validate, then show what would be written."),
    head: bool = typer.Option(False, "--head", help="Head mode (the default): this node is rank 0; ask for workers."),
    discover_first: bool = typer.Option(False, "--discover",
                                        help="Show this node's fabric and NCCL settings before the questions."),
) -> None:
    """Validate each answer (SSH, fabric IP, no-fragment ping) and write config.local.env (mode 0600)."""
    import tempfile

    from sparkhelpers.config import load_config, local_file
    from sparkhelpers.discover import probe, render
    from sparkhelpers.discover import setup as setupmod
    from sparkhelpers.discover.facts import discover_snapshot
    from sparkhelpers.errors import UsageError
    from sparkhelpers.runner import LOCAL, Runner

    if head and worker:
        raise UsageError("--head and --worker exclude each other", fix="run --head on rank 0, --worker on the others")
    if discover_first:  # stderr: a sourced setup-env.sh evaluates stdout
        facts, data = _local_summary(load_config())
        typer.echo(render.facts_text(facts, data["nccl_env"], data["problems"]), err=True)

    if worker:
        cfg = load_config()
        with tempfile.TemporaryDirectory(prefix="spark-worker-") as tmp:
            snap = probe.capture(Runner(), f"{tmp}/snap", LOCAL, hf_cache=cfg.get("HF_CACHE"))
            lines, ok = setupmod.worker_report(discover_snapshot(str(snap)))
        typer.echo("\n".join(lines), err=print_exports)
        if not ok:
            raise typer.Exit(1)
        return
    console = setupmod.Console(interactive=not non_interactive)
    result = setupmod.run_setup(console, workers=workers, user=user, model=model, token_from_stdin=hf_token_stdin,
                                dry_run=dry_run)
    if result.failed:
        bad = [c for c in result.checks if c.status == "fail"]
        from sparkhelpers.errors import SparkError

        raise SparkError(f"nothing written: {len(bad)} check(s) failed ({bad[0].node}: {bad[0].message})",
                         fix=bad[0].fix or "fix the failures above and run setup-env.sh again")
    if dry_run:
        for key in result.changed:
            console.out(f"[dry-run] would write {key}={'********' if key == 'HF_TOKEN' else result.written[key]}")
        console.out(f"[dry-run] {local_file()} not changed")
        return
    if result.changed:
        console.out(f"wrote {', '.join(result.changed)} to {local_file()} (mode 0600)")
    else:
        console.out(f"nothing changed in {local_file()}")
    if print_exports:
        for line in setupmod.export_lines(result.written):
            typer.echo(line)
