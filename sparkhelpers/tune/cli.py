"""`sparkhelpers tune run|list|show|retune|delete` (thin: parse, call sparkhelpers.tune.jobs, print)."""

from __future__ import annotations

import typer

from sparkhelpers.appkit import info, new_app, print_json

app = new_app("Tune a model's recipe on this cluster: candidates from the first-tier levers (or an oracle LLM), "
              "measured with repeats, kept only when they win by the fixed rule; results under "
              "SPARK_STATE_DIR/tuned/<id>/.")

OBJECTIVE_HELP = "METRIC@cN[:IN/OUT] to maximize or minimize (metrics: output_tps, total_tps, req_tps, goodput" \
                 "[ttft<=MS,tpot<=MS], ttft, ttft_p99, tpot, tpot_p99, itl, e2el)."
GUARD_HELP = "METRIC@cN[:IN/OUT]<=+5% (relative to the incumbent) or <=VALUE (absolute); 'none' for no guard."
LEVER_HELP = "Only this lever (repeatable): NAME or NAME=v1,v2 (max_num_seqs, prefix_caching, kv_cache_dtype, " \
             "chunked_prefill, max_num_batched_tokens, ngram_spec, loader)."


def _cfg():  # noqa: ANN202
    from sparkhelpers.config import load_config

    return load_config()


def _print_record(record: dict) -> None:
    from tabulate import tabulate

    rows = []
    for c in record.get("candidates", []):
        for m in c.get("measurements") or [{}]:
            rows.append([c["name"][:60], c.get("origin", ""), m.get("run", "-"),
                         ("confirm " if m.get("confirmation") else "") + (m.get("status") or "refused"),
                         f"{m['median']:.4g}" if m.get("median") is not None else "-",
                         f"{m.get('scatter', 0) * 100:.1f}%" if m else "-",
                         (c.get("refused") or m.get("message") or "")[:70]])
    typer.echo(tabulate(rows, headers=["candidate", "origin", "run", "status", "median", "scatter", "note"],
                        tablefmt="simple", disable_numparse=True))
    w = record.get("winner") or {}
    verdict = "incumbent kept" if w.get("kept_incumbent") else f"winner {w.get('name')}"
    typer.echo(f"{record['id']}: {record.get('state')}, {record.get('runs', 0)} run(s), {verdict} "
               f"[{w.get('recipe_id', '-')}] ({record['objective']['text']}); cluster {record.get('restore', '-')}")
    if record.get("error"):
        typer.echo(f"error: {record['error']}")
    if record.get("report"):
        typer.echo(f"report: {record['report']}")


@app.command("run")
def run(target: str = typer.Argument(..., help="Model (preset or org/name), recipe file, or recipe name."),
        objective: str = typer.Option("output_tps@c16:1024/128", "--objective", help=OBJECTIVE_HELP),
        guard: str = typer.Option("tpot@c1<=+5%", "--guard", help=GUARD_HELP),
        profile: str = typer.Option("", "--profile", help="Bench profile for prompt counts, warm-ups, repeats "
                                                          "(and the cell when the objective gives none)."),
        budget: int = typer.Option(0, "--budget", help="At most N runs, confirmations included (0 = no cap)."),
        oracle: bool = typer.Option(False, "--oracle", help="Also ask ORACLE_URL/ORACLE_MODEL for candidates."),
        grid: bool = typer.Option(False, "--grid", help="Every lever combination (default: adaptive search)."),
        lever: list[str] = typer.Option([], "--lever", help=LEVER_HELP),
        candidate: list[str] = typer.Option([], "--candidate", help="A hand-written variant recipe (repeatable)."),
        repeats: int = typer.Option(3, "--repeats", help="Repeats per point (medians; at least 3)."),
        nodes: int | None = typer.Option(None, "--nodes", help="Node count for the recipe."),
        background: bool = typer.Option(False, "--background", help="Start the job detached and print its id."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Show the plan and the candidates; start nothing."),
        as_json: bool = typer.Option(False, "--json", help="Print the job record as JSON."),
        job_id: str = typer.Option("", "--job", hidden=True)) -> None:
    """Tune TARGET: control + candidates, each started, warmed up and measured; the winner is kept.

    Example: sparkhelpers tune run qwen3-8b --objective output_tps@c16:1024/128 --guard 'tpot@c1<=+5%'
    """
    from sparkhelpers.tune import jobs

    cfg = _cfg()
    if job_id:
        record = jobs.run_queued(cfg, job_id, log=info)
    else:
        req = jobs.TuneRequest(target, objective, guard, profile, budget, oracle, grid, repeats, nodes,
                               tuple(lever), tuple(candidate))
        if dry_run:
            _show_plan(jobs.dry_run(cfg, req), as_json)
            return
        record = jobs.submit(cfg, req, background=background, log=info)
    _finish(record, as_json)


def _finish(record: dict, as_json: bool) -> None:
    if as_json:
        print_json(record)
    elif "candidates" not in record:
        typer.echo(f"job {record['job_id']} for {record.get('id')}: {record.get('state')} (log {record.get('log')})")
    else:
        if record.get("existing"):
            info(f"{record['id']} is already tuned for this objective (sparkhelpers tune retune {record['id']} "
                 "to tune again)")
        _print_record(record)
    if record.get("state") == "failed":
        raise typer.Exit(1)


def _show_plan(plan: dict, as_json: bool) -> None:
    if as_json:
        print_json(plan)
        return
    typer.echo(f"id {plan['id']} ({plan['strategy']}); objective {plan['objective']['text']}; guard "
               f"{(plan.get('guard') or {}).get('text', 'none')}")
    for c in plan["candidates"]:
        what = f"REFUSED: {c['refused']}" if c["refused"] else c["recipe_id"]
        typer.echo(f"  {c['origin']:<9} {c['name'][:70]:<70} {what}")
    for s in plan.get("skipped_levers", []):
        typer.echo(f"  skipped lever {s['lever']}: {s['reason']}")
    typer.echo(f"grid: {plan['grid_candidates']} candidate(s); adaptive first round: {plan['adaptive_first_round']}; "
               "nothing was started")


@app.command("retune")
def retune(tuned_id: str = typer.Argument(..., help="The tuned model's id (sparkhelpers tune list)."),
           objective: str | None = typer.Option(None, "--objective", help=OBJECTIVE_HELP),
           guard: str | None = typer.Option(None, "--guard", help=GUARD_HELP),
           budget: int | None = typer.Option(None, "--budget", help="At most N runs (0 = no cap)."),
           grid: bool = typer.Option(False, "--grid", help="Every lever combination."),
           lever: list[str] = typer.Option([], "--lever", help=LEVER_HELP),
           candidate: list[str] = typer.Option([], "--candidate", help="A hand-written variant recipe."),
           repeats: int | None = typer.Option(None, "--repeats", help="Repeats per point (at least 3)."),
           background: bool = typer.Option(False, "--background", help="Start the job detached."),
           dry_run: bool = typer.Option(False, "--dry-run", help="Show the plan; start nothing."),
           as_json: bool = typer.Option(False, "--json", help="Print the job record as JSON."),
           job_id: str = typer.Option("", "--job", hidden=True)) -> None:
    """Tune a stored model again, its winner as the incumbent; replaced only when a candidate wins by the rule.

    Example: sparkhelpers tune retune qwen3-8b@vllm@0123456789ab --lever kv_cache_dtype
    """
    from sparkhelpers.tune import jobs, store

    cfg = _cfg()
    if job_id:
        _finish(jobs.run_queued(cfg, job_id, log=info), as_json)
        return
    changes = {"objective": objective, "guard": guard, "budget": budget, "repeats": repeats,
               "grid": grid or None, "levers": list(lever) or None, "candidates": list(candidate) or None}
    if dry_run:
        record = store.load(cfg, tuned_id)
        req = jobs.retune_request(record, **changes)
        _show_plan(jobs.dry_run(cfg, req, (record.get("winner") or {}).get("changes")), as_json)
        return
    _finish(jobs.retune(cfg, tuned_id, background=background, log=info, **changes), as_json)


@app.command("list")
def list_(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """The tuned models: id, state, objective, winner.

    Example: sparkhelpers tune list --json
    """
    from tabulate import tabulate

    from sparkhelpers.tune import jobs

    rows = jobs.list_tuned(_cfg())
    if as_json:
        print_json(rows)
        return
    typer.echo(tabulate([[r["id"], r["state"], r["objective"], r["guard"] or "none", r["winner"] or "-", r["runs"]]
                         for r in rows], headers=["id", "state", "objective", "guard", "winner", "runs"],
                        tablefmt="simple", disable_numparse=True) if rows else "no tuned models")


@app.command("show")
def show(tuned_id: str = typer.Argument(..., help="The tuned model's id."),
         as_json: bool = typer.Option(False, "--json", help="Print the whole job record as JSON.")) -> None:
    """Every candidate's figures, the winner and where the report is.

    Example: sparkhelpers tune show qwen3-8b@vllm@0123456789ab
    """
    from sparkhelpers.tune import jobs

    record = jobs.get(_cfg(), tuned_id)
    if as_json:
        print_json(record)
    else:
        _print_record(record)


@app.command("delete")
def delete(tuned_id: str = typer.Argument(..., help="The tuned model's id."),
           keep_engine: bool = typer.Option(False, "--keep-engine", help="Do not stop a cluster serving it."),
           as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Stop the cluster if it serves this tuned model, then remove its files.

    Example: sparkhelpers tune delete qwen3-8b@vllm@0123456789ab
    """
    from sparkhelpers.tune import jobs

    out = jobs.delete(_cfg(), tuned_id, stop_engine=not keep_engine)
    if as_json:
        print_json(out)
    else:
        typer.echo(f"{tuned_id}: {'removed' if out['removed'] else 'nothing stored'}"
                   f"{', cluster stopped' if out['stopped'] else ''}")
