"""``sparkhelpers bench``: load generator, other frameworks, results store, matrix and sweeps."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from sparkhelpers.appkit import info, new_app, print_json, warn
from sparkhelpers.bench import runflags
from sparkhelpers.errors import SparkError
from sparkhelpers.secrets import secret_value

app = new_app("Benchmark an OpenAI-compatible server (vllm bench serve's metrics and flags), compare results.")


@app.callback()
def bench() -> None:
    """Benchmark an OpenAI-compatible server (vllm bench serve's metrics and flags), compare results."""


@app.command("run")
@runflags.command
def run_cmd(**flags) -> None:  # noqa: ANN003
    """Run one benchmark against an OpenAI-compatible server, with vllm bench serve's definitions."""
    from sparkhelpers.bench import current, results, summary
    from sparkhelpers.bench.run import execute, workload_section
    from sparkhelpers.config import load_config, results_dir

    cfg = load_config()
    opts, cmd = runflags.to_options(flags, current.configured_url(cfg))
    out_dir = Path(cmd.result_dir) if cmd.result_dir else results_dir(cfg)
    if cmd.framework != "sparkhelpers":
        from sparkhelpers.bench import frameworks

        for p in frameworks.run_framework(cmd.framework, opts, cfg, out_dir=out_dir, dry_run=cmd.dry_run,
                                          api_key=secret_value(cfg, "API_KEY")):
            info(f"saved {p}")
        return
    if cmd.dry_run:
        opts.validate()
        info(f"would send {opts.num_prompts} request(s) to {opts.base_url} (nothing sent):")
        print_json(workload_section(opts, opts.ignore_eos or opts.dataset_name == "random"))
        return
    from sparkhelpers.bench.node_memory import cluster_nodes

    doc, records = execute(opts, api_key=secret_value(cfg, "API_KEY"),
                           progress=summary.progress("bench", cmd.disable_tqdm),
                           nodes=cluster_nodes(cfg, opts.base_url) if opts.node_memory else ())
    if cmd.save_detailed:
        doc.update(results.detailed_fields(records))
    if not cmd.as_json:
        sys.stdout.write(summary.format_summary(doc) + "\n")
    for reason in doc["run"]["invalid_reasons"]:
        warn(f"run marked invalid: {reason}")
    if cmd.save_result:
        path, side = results.save_result(doc, records, out_dir / (cmd.result_filename or results.default_filename(doc)))
        info(f"saved {path} and {side.name}")
    if cmd.as_json:
        print_json(results.clean_floats(doc))
    if doc["failed"]:
        for line in summary.failure_lines(doc):
            warn(line)
        raise SparkError(f"{doc['failed']} of {doc['failed'] + doc['completed']} requests failed (causes above)",
                         fix="see the server's log (sparkhelpers logs); --save-result keeps every error per request")


@app.command("current")
def current_cmd(
    profile: str = typer.Option("", "--profile", help="Profile name (default: BENCH_PROFILE)."),
    single: bool = typer.Option(False, "-s", "--single", help="The 'single' profile: one request at concurrency 1."),
    quick: bool = typer.Option(False, "-q", "--quick", help="The 'quick' profile: 20 requests at concurrency 16."),
    url: str = typer.Option("", "-u", "--url", help="Server root (default: the cluster's endpoint)."),
    num_prompts: int = typer.Option(None, "-n", "--num-prompts", help="Requests per run (overrides the profile)."),
    concurrency: str = typer.Option("", "-c", "--concurrency", help="Concurrency or a ladder, e.g. 1,4,16."),
    dataset: str = typer.Option("", "-d", "--dataset", help="A local ShareGPT JSON file instead of the cells."),
    output: str = typer.Option("", "-o", "--output", help="Results directory (default: RESULTS_DIR)."),
    variant: str = typer.Option("", "--variant", help="Configuration variant name recorded in the results."),
    as_json: bool = typer.Option(False, "--json", help="Print the run summaries as JSON."),
) -> None:
    """Benchmark the model the cluster serves now with a profile; save results with the cluster configuration."""
    from sparkhelpers.bench import current, profiles
    from sparkhelpers.config import load_config, results_dir
    from sparkhelpers.errors import UsageError

    if sum(bool(x) for x in (profile, single, quick)) > 1:
        raise UsageError("--single, --quick and --profile exclude each other", fix="choose one")
    cfg = load_config()
    name = "single" if single else "quick" if quick else profile or cfg.get("BENCH_PROFILE", "default")
    prof = profiles.with_overrides(profiles.get(name, cfg.get("BENCH_PROFILES_FILE")), num_prompts=num_prompts,
                                   concurrency=profiles.parse_ladder(concurrency) if concurrency else None,
                                   dataset_path=dataset)
    from sparkhelpers.bench.client import normalize_base_url

    base_url = normalize_base_url(url) if url else current.configured_url(cfg)
    key = secret_value(cfg, "API_KEY")
    model = current.resolve_model(base_url, key, cfg)
    out_dir = Path(output) if output else results_dir(cfg)
    gateway = current.gateway_of(base_url, key, model)  # measured through the gateway: say so in every result
    outcomes, timed_out = current.run_profile(cfg, prof, base_url=base_url, model=model, out_dir=out_dir,
                                              variant=variant or cfg.get("BENCH_VARIANT"), api_key=key,
                                              timeout_s=cfg.get_float("BENCH_TIMEOUT", 0.0),
                                              echo=lambda line: info(line),
                                              target_extra={"gateway": gateway} if gateway else None)
    if as_json:
        print_json([{"run": o.plan.key, "file": str(o.path) if o.path else None, "error": o.error,
                     "valid": o.doc["run"]["valid"] if o.doc else None} for o in outcomes])
    else:
        sys.stdout.write(current.format_summary(outcomes, model, base_url) + "\n")
    saved = [o.path for o in outcomes if o.path]
    if saved:
        info(f"saved {len(saved)} result file(s) in {saved[0].parent}")
    if timed_out:
        raise SparkError(f"the benchmark ran out of its BENCH_TIMEOUT budget "
                         f"({cfg.get('BENCH_TIMEOUT')} s) after {len(outcomes)} run(s)",
                         fix="raise BENCH_TIMEOUT or choose a smaller profile")
    bad = current.failures(outcomes)
    if bad:
        for line in bad:
            warn(line)
        raise SparkError(f"{len(bad)} of {len(outcomes)} runs had failed requests",
                         fix="see the per-request .requests.jsonl files and the server log")


@app.command("ingest")
def ingest_cmd(
    files: list[Path] = typer.Argument(..., help="vllm bench serve --save-result or llama-benchy JSON files."),
    variant: str = typer.Option("", "--variant", help="Configuration variant to record for these files."),
    output: str = typer.Option("", "-o", "--output", help="Results store (default: RESULTS_DIR)."),
) -> None:
    """Import result files of vllm bench serve or llama-benchy into the results store."""
    from sparkhelpers.bench import ingest
    from sparkhelpers.config import load_config, results_dir

    store = Path(output) if output else results_dir(load_config())
    written = ingest.ingest_files(list(files), store, variant=variant)
    info(f"ingested {len(files)} file(s) as {len(written)} result(s) under {store / 'ingested'}")


@app.command("matrix")
def matrix_cmd(
    directory: Path = typer.Argument(None, help="Directory of results, searched recursively (default: RESULTS_DIR)."),
    baseline: str = typer.Option("", "--baseline", help="Variant (or MODEL:VARIANT) to show deltas against."),
    fmt: str = typer.Option("table", "--format", help="table, md, csv, json or html."),
    output: Path = typer.Option(None, "-o", "--output", help="Write to this file instead of stdout."),
) -> None:
    """Compare results: rows = model x variant, columns = workload x concurrency, repeats with 95% CI."""
    from sparkhelpers.bench import ingest, matrix, report
    from sparkhelpers.config import load_config, results_dir
    from sparkhelpers.errors import UsageError

    renderers = {"table": lambda m: matrix.to_table(m) + "\n", "md": matrix.to_markdown, "csv": matrix.to_csv,
                 "json": matrix.to_json}
    if fmt not in (*renderers, "html"):
        raise UsageError(f"--format {fmt!r} is not supported", fix="use table, md, csv, json or html")
    root = directory or results_dir(load_config())
    if not root.is_dir():
        raise SparkError(f"{root} is not a directory", fix="pass the results directory (RESULTS_DIR)")
    found = ingest.load_dir(root)
    if not found:
        raise SparkError(f"no result files under {root}", fix="run benchmark_current.sh or bench ingest first")
    m = matrix.build([doc for _, doc in found], baseline=baseline)
    if baseline and not any(c.delta_pct is not None for c in m.cells.values()):
        warn(f"baseline {baseline!r} matches no row with results in the same columns")
    text = report.to_html(m, source=str(root)) if fmt == "html" else renderers[fmt](m)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text, encoding="utf-8")
        info(f"wrote {output} ({len(found)} result(s), {len(m.rows)} row(s) x {len(m.cols)} column(s))")
    else:
        sys.stdout.write(text)


def _split(text: str) -> list[str]:
    return [x.strip() for x in text.replace(" ", ",").split(",") if x.strip()]


@app.command("sweep")
def sweep_cmd(
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask (required when stdin is not a terminal)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the latest (or --name) sweep; skip finished cells."),
    profile: str = typer.Option("", "--profile", help="Profile(s), comma-separated (default: BENCH_PROFILE)."),
    models: str = typer.Option("", "--models", help="Models (presets, list numbers or repo ids), comma-separated "
                                                    "(default: MODEL)."),
    variants: str = typer.Option("baseline", "--variants", help="Configuration variants from the profiles file."),
    recipes: str = typer.Option("", "--recipes", help="Recipes (files, names on RECIPE_PATH or presets), "
                                                      "comma-separated; each served as written."),
    name: str = typer.Option("", "--name", help="Sweep name (directory under RESULTS_DIR/sweeps; default: a date)."),
    download: bool = typer.Option(False, "--download", help="Download and sync missing models (default: do not)."),
    single_node: bool = typer.Option(False, "--single-node", help="Only single-node models (all presets if no "
                                                                  "--models)."),
    multi_node: bool = typer.Option(False, "--multi-node", help="Only multi-node models (all presets if no --models)."),
    skip_token: bool = typer.Option(False, "--skip-token", help="Skip gated models (they need a Hugging Face token)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and the commands, run nothing."),
) -> None:
    """Sweep models x configuration variants x profiles (benchmark_all.sh): resumable, cron-safe.

    Example: sparkhelpers bench sweep --yes --models qwen3-8b --variants tier1-off,tier1-on --profile smoke
    """
    from tabulate import tabulate

    from sparkhelpers.bench import sweep, sweep_steps
    from sparkhelpers.config import load_config
    from sparkhelpers.errors import SparkError, UsageError

    cfg = load_config()
    opts = sweep_steps.SweepOptions(models=_split(models), recipes=_split(recipes), profiles=_split(profile),
                                    variants=_split(variants), name=name, resume=resume, download=download,
                                    single_node=single_node, multi_node=multi_node, skip_token=skip_token)
    if resume and (models or profile or recipes):
        warn("--resume continues the saved plan; --models/--recipes/--profile are ignored")
    if not (yes or dry_run or sys.stdin.isatty()):
        raise UsageError("refusing to run without --yes: stdin is not a terminal (cron?)",
                         fix="add --yes to run unattended")

    def confirm(cells: int) -> bool:
        return yes or typer.confirm(f"Sweep {cells} cell(s) (this restarts the cluster)?", default=False)

    run = sweep_steps.execute(cfg, opts, dry_run=dry_run, confirm=confirm, api_key=secret_value(cfg, "API_KEY"))
    if dry_run:
        typer.echo("\n".join(run.dry_run_lines))
        return
    if run.state is None:
        raise typer.Exit(1)
    typer.echo(tabulate(sweep.summary(run.state), headers=["model", "variant", "profile", "status", "message"]))
    if not run.ok:
        raise SparkError("some cells did not succeed (see the table above and sweep.log)",
                         fix=f"fix the cause, then: benchmark_all.sh --yes --resume --name {run.directory.name}")
