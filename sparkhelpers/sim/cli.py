"""``sparkhelpers sim``: an emulated DGX Spark cluster on this machine (test infrastructure)."""

from __future__ import annotations

from pathlib import Path

import typer

from sparkhelpers.appkit import info, new_app, print_json
from sparkhelpers.sim.netplan import MAX_NODES

app = new_app("Emulated Spark cluster on this machine: real sshd, dockerd, rsync and a tiny real model.")

NAME_HELP = "Cluster name (several clusters with different names can run side by side)."


def _state() -> Path:
    from sparkhelpers.config import load_config, state_dir

    return state_dir(load_config())


def _runner(dry_run: bool = False):  # noqa: ANN202
    from sparkhelpers.runner import Runner

    return Runner(dry_run=dry_run)


@app.command()
def up(
    nodes: int = typer.Option(2, "--nodes", "-n", help=f"Number of nodes, 1 to {MAX_NODES} (spark1 is the head)."),
    name: str = typer.Option("sim", "--name", help=NAME_HELP),
    fact: list[str] = typer.Option([], "--fact", metavar="NODE:KEY=VALUE",
                                   help="Change one emulated fact of a node (or all:), e.g. spark2:mtu=1500, "
                                        "spark2:driver_version=570.86.10, spark2:twin2_up=false. Repeatable."),
    facts_file: str = typer.Option("", "--facts-file", help='JSON file: {"spark2": {"mtu": 1500}}.'),
    image_on: str = typer.Option("head", "--image-on", help="Load the engine image on: head, all or none."),
    as_json: bool = typer.Option(False, "--json", help="Print the cluster as JSON."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the namespaces, links and node commands; "
                                                          "change nothing."),
) -> None:
    """Start N emulated nodes and print the config profile that points the scripts at them."""
    from sparkhelpers.sim import api
    from sparkhelpers.sim.cluster import dry_run_plan
    from sparkhelpers.sim.facts import load_facts_file, parse_fact_args

    facts = load_facts_file(facts_file) if facts_file else {}
    for node, values in parse_fact_args(fact, nodes).items():
        facts.setdefault(node, {}).update(values)
    if dry_run:
        typer.echo(dry_run_plan(name, nodes, facts))
        return
    cluster = api.up(name, nodes, facts=facts, image_on=image_on, state_dir=_state(), progress=info)
    if as_json:
        print_json(cluster.to_json())
        return
    for n in cluster.nodes:
        typer.echo(f"{n.name}  mgmt {n.mgmt_ip}  fabric {n.fabric_ip} / {n.fabric2_ip}")
    typer.echo(f"image    {cluster.image or '(none)'}")
    typer.echo(f"profile  {cluster.profile}")
    peer = cluster.workers[0].fabric_ip if cluster.workers else "localhost"
    typer.echo(f"try: sparkhelpers sim exec --name {name} spark1 -- ssh {peer} nvidia-smi -L")


@app.command()
def status(
    name: str = typer.Option("", "--name", help="Only this cluster (default: every recorded cluster)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Show the recorded clusters, their nodes and whether each node's sshd and dockerd answer."""
    from sparkhelpers.sim import api

    rows = api.status(_state(), name or None)
    if as_json:
        print_json(rows)
        return
    if not rows:
        typer.echo("no emulated clusters (start one: sparkhelpers sim up)")
        return
    for c in rows:
        typer.echo(f"cluster {c['name']}: {c['state']}  profile {c['profile']}  image {c['image'] or '(none)'}")
        for n in c["nodes"]:
            typer.echo(f"  {n['name']:<7} {n['state']:<5} mgmt {n['mgmt_ip']:<15} fabric {n['fabric_ip']:<15} "
                       f"sshd {n['sshd']:<4} dockerd {n['dockerd']:<4} {' '.join(n['faults'])}")


@app.command()
def profile(name: str = typer.Option("sim", "--name", help=NAME_HELP)) -> None:
    """Print the path of the cluster's config profile (use it as SPARK_CONFIG on the head)."""
    from sparkhelpers.sim import api

    typer.echo(api.get(name, _state()).profile)


@app.command()
def down(
    name: str = typer.Option("sim", "--name", help=NAME_HELP),
    all_: bool = typer.Option(False, "--all", help="Every cluster recorded under this SPARK_STATE_DIR."),
) -> None:
    """Stop a cluster and remove everything it made (processes, namespaces, cgroups, keys, data)."""
    from sparkhelpers.sim import api

    names = api.recorded_names(_state()) if all_ else [name]
    for n in names:
        gone = api.down(n, _state())
        info(f"sim cluster {n}: {'removed' if gone else 'nothing to remove'}")


@app.command(context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True})
def exec(  # noqa: A001
    node: str = typer.Argument(..., help="Node name (spark1 is the head) or number."),
    argv: list[str] = typer.Argument(..., help="Command and arguments (put -- before them)."),
    name: str = typer.Option("sim", "--name", help=NAME_HELP),
) -> None:
    """Run a command on a node as root, with the node's own view (network, mounts, processes)."""
    from sparkhelpers.sim import api

    cluster = api.get(name, _state())
    if argv and argv[0] == "--":
        argv = argv[1:]
    res = cluster.exec(node, argv, timeout=None, interactive=True)
    raise typer.Exit(res.returncode)


@app.command()
def fault(
    node: str = typer.Argument(..., help="Node name, e.g. spark2."),
    kind: str = typer.Argument(..., help="Fault: see the list above, or 'clear'."),
    arg: str = typer.Argument("", help="Argument of the fault (e.g. the N of engine-crash-after, the twin)."),
    name: str = typer.Option("sim", "--name", help=NAME_HELP),
) -> None:
    """Inject a fault into a running node.

    Kinds: stop-node, start-node, kill-sshd, link-down [twin1|twin2|both|mgmt|all], link-up [..],
    fill-disk, limit-disk MIB (room left, fill-disk takes the rest), free-disk, engine-crash-load,
    engine-crash-after N, engine-hang-load, engine-ok,
    slow-fabric [RATE, default 1gbit], clear (undo every fault; a stopped node boots again)."""
    from sparkhelpers.sim import api, faults

    cluster = api.get(name, _state())
    info(faults.inject(cluster, node, kind, arg))


@app.command("seed-model")
def seed_model(
    node: str = typer.Argument(..., help="Node name, e.g. spark1."),
    model: str = typer.Argument(..., help="Hugging Face repo id, e.g. Qwen/Qwen3-0.6B."),
    gguf: bool = typer.Option(False, "--gguf", help="Also put the real SmolLM2 GGUF in (for llama-server)."),
    name: str = typer.Option("sim", "--name", help=NAME_HELP),
) -> None:
    """Put a placeholder snapshot of MODEL in a node's /raid/hf-cache (the sim cannot download; its
    engine serves SmolLM2-135M under the requested name)."""
    from sparkhelpers.sim import api

    typer.echo(api.get(name, _state()).seed_model(node, model, gguf=gguf))


image_app = new_app("The locally built engine image (test infrastructure: real Ray, a vllm stand-in, real tiny model).")
app.add_typer(image_app, name="image")


@image_app.command("build")
def image_build(
    force: bool = typer.Option(False, "--force", help="Rebuild even when the cached build matches."),
) -> None:
    """Build the engine image tarball from host files (no network), cached by content hash."""
    from sparkhelpers.sim import image

    built = image.build(force=force, progress=info)
    typer.echo(f"{built.tag}  {built.tar}")


@app.command()
def flags(
    version: list[str] = typer.Option([], "--version", help="Only this vLLM version (repeatable; default: every "
                                                            "supported one that is installed)."),
    write: bool = typer.Option(False, "--write", help="Write the generated flag sets into the package."),
) -> None:
    """Compare (or --write) the stand-in's vLLM flag sets with the real vLLM parser's.

    Needs the real vLLM side environment: tools/real-vllm.sh --parser-only (cached under
    /var/cache/sparkhelpers/real-vllm). Exits 1 when a checked-in flag set is stale.
    Example: sparkhelpers sim flags --write --version 0.32.0"""
    from sparkhelpers.errors import SparkError
    from sparkhelpers.sim import realvllm

    wanted = version or [v for v in realvllm.SUPPORTED if realvllm.available(v)]
    if not wanted:
        raise SparkError("no real vLLM parser is installed", fix=realvllm.BUILD_HINT)
    stale = []
    for v in wanted:
        spec = realvllm.generate(v)
        same = realvllm.flags_path(v).is_file() and realvllm.load_flags(v) == spec
        if write and not same:
            info(f"vLLM {v}: {len(spec['flags'])} flags written to {realvllm.write_flags(v, spec)}")
        else:
            typer.echo(f"vLLM {v}: {len(spec['flags'])} flags, {'current' if same else 'STALE'}")
            stale += [] if same else [v]
    if stale:
        raise SparkError(f"the flag set of vLLM {', '.join(stale)} differs from the real parser's",
                         fix="sparkhelpers sim flags --write")
