"""``sparkhelpers models``: the catalog, the memory-fit estimate, download, verify and sync."""

from __future__ import annotations

import typer

from sparkhelpers.appkit import complete_preset, echo_status, info, new_app, print_json, warn
from sparkhelpers.errors import SparkError, UsageError

app = new_app("Model catalog, memory-fit estimate, download, verify and sync to the workers.")

JSON_OPT = typer.Option(False, "--json", help="Machine-readable output.")


def _cfg(**flags):  # noqa: ANN003, ANN202
    from sparkhelpers.config import load_config

    return load_config(flags=flags)


@app.command("list")
def list_(as_json: bool = JSON_OPT) -> None:
    """Numbered presets: size, nodes, context, gated, cached on this node, current (MODEL), fits on this cluster."""
    from sparkhelpers.models.listing import preset_rows

    cfg = _cfg()
    rows = preset_rows(cfg)
    if as_json:
        print_json(rows)
        return
    header = f"{'#':>3}  {'name':<28} {'size':>9} {'nodes':>5} {'context':>8}  {'gated':<5} {'cached':<6} fits"
    typer.echo(header)
    for r in rows:
        size = f"{r['size_gib']:.1f} GiB" if r["size_gib"] is not None else "unknown"
        fits = {True: "yes", False: "NO", None: "unknown"}[r["fits"]]
        fits += f" ({r['fits_why']})" if r["fits"] is False and r["fits_why"].startswith("needs") else ""
        mark = "*" if r["current"] else " "
        typer.echo(f"{r['number']:>3}{mark} {r['name']:<28} {size:>9} {r['nodes']:>5} {r['max_model_len'] or '-':>8}"
                   f"  {'yes' if r['gated'] else 'no':<5} {'yes' if r['cached'] else 'no':<6} {fits}")
    nodes = rows[0]["cluster_nodes"] if rows else 1
    typer.echo(f"* = current MODEL ({cfg.get('MODEL') or 'unset'}). fits = on this cluster ({nodes} node(s), "
               f"GB10 memory). Details: sparkhelpers models show NAME; sparkhelpers models fit NAME")


@app.command()
def show(
    name: str = typer.Argument(None, help="Preset name, list number or repo id (default: MODEL).",
                               autocompletion=complete_preset),
    as_json: bool = JSON_OPT,
    field: str = typer.Option("", "--field", help="Print one field of the resolved model (for scripts)."),
) -> None:
    """The model as the cluster would serve it: preset values with your explicit config on top."""
    from sparkhelpers.models.catalog import resolve_model

    spec = resolve_model(_cfg(), name)
    data = spec.as_dict()
    if field:
        if field not in data:
            raise UsageError(f"unknown field {field!r}", fix=f"one of: {', '.join(data)}")
        value = data[field]
        typer.echo(" ".join(value) if isinstance(value, list) else ("" if value is None else str(value)))
        return
    if as_json:
        print_json(data)
        return
    for key, value in data.items():
        if key in ("arch", "sources"):
            continue
        source = spec.sources.get(key.upper(), "")
        typer.echo(f"{key:<18} {value!s:<44} {('(' + source + ')') if source else ''}")
    if spec.preset and spec.preset.notes:
        typer.echo(f"{'notes':<18} {spec.preset.notes}")


@app.command("fit")
def fit_cmd(
    target: str = typer.Argument(..., help="Preset name, repo id, or a directory with config.json.",
                                 autocompletion=complete_preset),
    tp: int = typer.Option(None, "--tp", min=1, help="Tensor-parallel size (default: the preset's, or --nodes)."),
    nodes: int = typer.Option(None, "--nodes", min=1, help="Nodes (one GPU each) = TP x PP."),
    max_model_len: int = typer.Option(None, "--max-model-len", min=1, help="Context to fit (default: preset's)."),
    gpu_mem: float = typer.Option(None, "--gpu-mem", min=0.05, max=0.98, help="GPU memory utilization."),
    kv_cache_dtype: str = typer.Option("auto", "--kv-cache-dtype", help="auto, bf16, fp16, fp8, fp8_e5m2."),
    params: float = typer.Option(None, "--params", min=1, help="Parameter count (e.g. 70.6e9) if unknown."),
    dtype: str = typer.Option("", "--dtype", help="Weight dtype with --params when the files cannot tell "
                              "(bf16, fp8, nvfp4, int4...)."),
    as_json: bool = JSON_OPT,
) -> None:
    """Estimate whether a model fits: weights and KV cache per node against usable GB10 memory. A raw repo id is
    sized from its safetensors headers: the cached snapshot, else the Hub's metadata (headers only)."""
    from sparkhelpers.models import fit, sizing

    t = sizing.resolve(_cfg, target, params=params)
    inp = sizing.with_dtype(t.inp, dtype) if dtype else t.inp
    p_tp, p_pp, p_len, p_util = t.tp, t.pp, t.max_model_len, t.gpu_memory_util
    if nodes and tp and nodes % tp:
        raise UsageError(f"--nodes {nodes} is not a multiple of --tp {tp}", fix="nodes = tensor parallel x pipeline")
    if tp:
        pp = nodes // tp if nodes else 1
    elif nodes:
        tp, pp = nodes, 1
    else:
        tp, pp = p_tp, p_pp
    result = fit.estimate(inp, tp=tp, pp=pp, max_model_len=max_model_len or p_len,
                          gpu_memory_util=gpu_mem if gpu_mem is not None else p_util,
                          kv_cache_dtype=kv_cache_dtype, params=params)
    if as_json:
        print_json(result.as_dict())
        return
    _print_fit(result)
    if result.fits is False:
        raise typer.Exit(1)


def _fmt(value, unit: str = "", nd: int = 1) -> str:  # noqa: ANN001
    if value is None:
        return "unknown"
    if isinstance(value, float):
        return f"{value:,.{nd}f}{unit}"
    return f"{value:,}{unit}"


def _print_fit(r) -> None:  # noqa: ANN001
    lines = [
        ("model", r.model),
        ("layout", f"{r.nodes} node(s) = TP {r.tensor_parallel} x PP {r.pipeline_parallel}"),
        ("attention", r.attention or "unknown"),
        ("weights", f"{_fmt(r.weights_gib_total, ' GiB')} total, {_fmt(r.weights_gib_per_node, ' GiB')} per node"
                    f" ({r.weight_dtype or 'dtype unknown'})"),
        ("KV per token", f"{_fmt(r.kv_bytes_per_token, ' B')} whole model, {_fmt(r.kv_bytes_per_token_per_node, ' B')}"
                         f" per node ({r.kv_dtype or 'dtype unknown'})"),
        ("KV per node", f"{_fmt(r.kv_gib_per_node, ' GiB', 2)} for one {_fmt(r.max_model_len)}-token sequence"),
        ("usable", f"{r.usable_gib_per_node:.1f} GiB per node = {r.capacity_gib} GiB x {r.gpu_memory_util} "
                   f"- {r.reserve_gib:g} GiB reserve"),
        ("max context", _fmt(r.max_context_tokens, " tokens")),
        ("verdict", r.verdict),
    ]
    if r.recurrent_state_gib_per_node is not None:
        lines.insert(6, ("state", f"{r.recurrent_state_gib_per_node * 1024:.1f} MiB per sequence per node"))
    for key, value in lines:
        typer.echo(f"{key:<13} {value}")
    for note in r.notes:
        typer.echo(f"{'note':<13} {note}")


# ---- download, verify, sync ---------------------------------------------------------------------

NAME_ARG = typer.Argument(None, help="Preset name, list number or repo id (default: MODEL).",
                          autocompletion=complete_preset)


@app.command()
def download(
    name: str = NAME_ARG,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    as_json: bool = JSON_OPT,
) -> None:
    """Download into HF_CACHE (resumes; skips original/ and metal/), then verify. Token: HF_TOKEN or
    HF_TOKEN_FILE, never a flag."""
    from sparkhelpers.models.catalog import resolve_model
    from sparkhelpers.models.download import download as do_download

    cfg = _cfg()
    spec = resolve_model(cfg, name)
    report = do_download(cfg, spec, progress=not quiet, echo=info)
    if as_json:
        print_json({k: v for k, v in report.items() if k != "files"})
        return
    info(f"{spec.repo}: complete, {len(report['files'])} files, {report['total_bytes'] / 1024**3:.2f} GiB "
         f"at {report['snapshot']}")


def _worker_arg(cfg, node: str):  # noqa: ANN001, ANN202
    from sparkhelpers.models import sync

    return sync.select(sync.workers_from_config(cfg), [node])[0]


@app.command()
def verify(
    name: str = NAME_ARG,
    node: str = typer.Option("head", "--node", help="head, or a worker (WORKER_HOST entry, fabric IP or number)."),
    as_json: bool = JSON_OPT,
) -> None:
    """Check a model is complete in a node's cache: config, tokenizer, every indexed shard, sizes."""
    from sparkhelpers.models import snapshot_check, sync
    from sparkhelpers.models.catalog import resolve_model
    from sparkhelpers.runner import Runner

    cfg = _cfg()
    spec = resolve_model(cfg, name)
    if node in ("head", "local"):
        report = snapshot_check.check(cfg.require("HF_CACHE"), spec.repo, spec.revision)
    else:
        worker = _worker_arg(cfg, node)
        result, report = sync.check_on(Runner(), worker, spec)
        if report is None:
            raise SparkError(f"cannot check {worker.name}: {result.last_line or 'no answer'}",
                             fix=f"ssh {worker.host.target} true   (SSH keys, python3 on the worker)")
    if as_json:
        print_json({k: v for k, v in report.items() if k != "files"})
    elif report["complete"]:
        echo_status(f"ok  {spec.repo} on {node}: {len(report['files'])} files, "
                   f"{report['total_bytes'] / 1024**3:.2f} GiB, commit {report['commit'][:12]}")
    else:
        for problem in report["problems"]:
            echo_status(f"missing  {problem}")
    if not report["complete"]:
        raise SparkError(f"{spec.repo} is incomplete on {node} ({len(report['problems'])} problem(s))",
                         fix=f"sparkhelpers models download {spec.name}" if node in ("head", "local")
                         else f"sparkhelpers models sync {spec.name} --to {node}")


@app.command()
def sync(
    name: str = NAME_ARG,
    to: list[str] = typer.Option(None, "--to", help="all (default) or a worker; repeat for several."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check the workers, print the copies, copy nothing."),
    idle_timeout: int = typer.Option(120, "--idle-timeout", min=5, help="Abort a copy idle this many seconds."),
    bwlimit: int = typer.Option(None, "--bwlimit", min=1, help="Cap each copy at this many KiB/s."),
    method: str = typer.Option("relay", "--method",
                               help="relay: the head sends once, each worker forwards (both twins); "
                                    "fanout: rsync from the head to every worker at once."),
    as_json: bool = JSON_OPT,
) -> None:
    """Copy the model from the head to every worker lacking it (fabric relay, both twins), then verify."""
    from sparkhelpers.models import sync as syncmod
    from sparkhelpers.models.catalog import resolve_model
    from sparkhelpers.runner import Runner
    from sparkhelpers.topology import topology

    cfg = _cfg()
    spec = resolve_model(cfg, name)
    nodes = syncmod.select(syncmod.workers_from_config(cfg), list(to or []))
    if not nodes:
        warn("no workers configured (WORKER_HOST is empty); nothing to sync")
    try:
        rows = syncmod.ensure_on_nodes(Runner(dry_run=dry_run), spec, nodes, head_cache=cfg.require("HF_CACHE"),
                                       head=topology(cfg).head.host,
                                       idle_timeout=idle_timeout, bwlimit_kbps=bwlimit, method=method)
    except SparkError as exc:
        if as_json and getattr(exc, "rows", None):
            print_json(exc.rows)  # which workers completed, which failed (exit 1 all the same)
        raise
    if as_json:
        print_json(rows)
        return
    for r in rows:
        moved = f", {r['bytes'] / 1024**2:.1f} MiB in {r['seconds']:.1f} s" if r["action"] == "copied" else ""
        typer.echo(f"{r['worker']:<20} {r['action']:<10} via {r['via']} {r['address']}{moved}")


@app.command("smoke")
def smoke_cmd(
    url: str = typer.Option("", "--url", help="API base URL (default: the cluster's endpoint, VLLM_HOST:VLLM_PORT)."),
    model: str = typer.Option("", "--model", help="Model id the API must list (default: any; first one)."),
    timeout: float = typer.Option(None, "--timeout", min=1, help="Seconds to wait for /health (START_TIMEOUT)."),
    as_json: bool = JSON_OPT,
) -> None:
    """Wait until the engine's /health answers, then send one short chat request and show the reply."""
    from sparkhelpers.models.smoke import smoke
    from sparkhelpers.secrets import secret_value

    cfg = _cfg()
    from sparkhelpers.topology import endpoint

    base = url or endpoint(cfg)
    result = smoke(base.rstrip("/"), key=secret_value(cfg, "API_KEY"), expect_model=model,
                   timeout_s=timeout if timeout is not None else cfg.get_float("START_TIMEOUT", 1800), echo=info)
    if as_json:
        print_json(result.__dict__)
        return
    echo_status(f"ok  {result.model} answered {result.reply!r} ({result.completion_tokens} tokens) in "
               f"{result.seconds_to_answer:.1f} s; healthy after {result.seconds_to_healthy:.1f} s")
