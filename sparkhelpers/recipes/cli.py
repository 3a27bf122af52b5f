"""`sparkhelpers recipe show|validate|hash|render|list|import|export` (thin: parse, call, print)."""

from __future__ import annotations

from pathlib import Path

import typer

from sparkhelpers.appkit import info, new_app, print_json

app = new_app("Recipes: one versioned file says how a model is served. Show, validate, hash, render, list, "
              "import (sparkrun v2, eugr v1) and export (sparkrun, llama-swap, Kubernetes).")

NODES_HELP = "Resolve for this node count (overrides matched on it); default: the recipe's own."


def _cfg():  # noqa: ANN202
    from sparkhelpers.config import load_config

    return load_config()


def _load(ref: str, nodes: int | None):  # noqa: ANN202
    from sparkhelpers.recipes import load

    cfg = _cfg()
    return load(ref, nodes=nodes, recipe_path=cfg.get("RECIPE_PATH"), default_image=cfg.get("VLLM_IMAGE"))


@app.command("show")
def show(ref: str = typer.Argument(..., help="Recipe file, name on RECIPE_PATH, or catalog preset."),
         nodes: int | None = typer.Option(None, "--nodes", help=NODES_HELP),
         as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Print the resolved recipe (include and overrides applied, defaults explicit) and its id.

    Example: sparkhelpers recipe show qwen3-8b --nodes 2
    """
    from sparkhelpers.recipes import export

    recipe = _load(ref, nodes)
    data = export.to_document(recipe)
    if as_json:
        print_json(data)
    else:
        typer.echo(export.dump_yaml(data), nl=False)


@app.command("validate")
def validate(files: list[str] = typer.Argument(..., help="Recipe files or names."),
             as_json: bool = typer.Option(False, "--json", help="Print per-file results as JSON.")) -> None:
    """Check recipes: fields, secrets, layout, engine flags (at every node count they allow). Exit 1 on errors.

    Example: sparkhelpers recipe validate recipes/*.yaml
    """
    from sparkhelpers.errors import SparkError
    from sparkhelpers.recipes import recipe_id
    from sparkhelpers.recipes.loader import validate_all

    cfg = _cfg()
    results, failed = [], 0
    for ref in files:
        try:
            recipes = validate_all(ref, recipe_path=cfg.get("RECIPE_PATH"), default_image=cfg.get("VLLM_IMAGE"))
            results.append({"recipe": ref, "ok": True, "ids": {r.nodes: recipe_id(r) for r in recipes}})
            if not as_json:
                typer.echo(f"ok: {ref} ({', '.join(f'{r.nodes} node(s): {recipe_id(r)}' for r in recipes)})")
        except SparkError as exc:
            failed += 1
            results.append({"recipe": ref, "ok": False, "error": exc.message, "fix": exc.fix})
            if not as_json:
                typer.echo(f"sparkhelpers: {exc.message}" + (f" (fix: {exc.fix})" if exc.fix else ""), err=True)
    if as_json:
        print_json(results)
    if failed:
        raise typer.Exit(1)


@app.command("hash")
def hash_(ref: str = typer.Argument(..., help="Recipe file, name, or preset."),
          nodes: int | None = typer.Option(None, "--nodes", help=NODES_HELP),
          image_id: str = typer.Option("", "--image-id", help="The image's ID (docker image inspect) to include.")
          ) -> None:
    """Print the recipe id: <model-slug>@<runtime>@<12 hex of the content hash + image ID/digest>.

    Example: sparkhelpers recipe hash my.yaml --image-id sha256:3f2a...
    """
    from sparkhelpers.recipes.identity import pinned, recipe_id

    recipe = _load(ref, nodes)
    typer.echo(recipe_id(recipe, image_id))
    if not pinned(recipe, image_id):
        info("the image is a tag: this id covers the tag only (pin image@sha256:..., or pass --image-id)")


@app.command("render")
def render(ref: str = typer.Argument(..., help="Recipe file, name, or preset."),
           nodes: int | None = typer.Option(None, "--nodes", help=NODES_HELP),
           serve: bool = typer.Option(False, "--serve", help="Only the serve command, as one node runs it."),
           as_json: bool = typer.Option(False, "--json", help="Print the argv as JSON.")) -> None:
    """Print the commands the recipe runs on each configured node, in order, without touching any host
    (what `cluster run --recipe` / `start_cluster.sh --recipe` would run; fabric facts discovery would read at
    start are shown as <discovered at start>).

    Example: sparkhelpers recipe render my.yaml --nodes 2
    """
    from sparkhelpers.recipes import recipe_id, serve_argv
    from sparkhelpers.runner import shell_join

    recipe = _load(ref, nodes)
    argv = serve_argv(recipe)
    if as_json:
        print_json({"id": recipe_id(recipe), "nodes": recipe.nodes, "serve": argv})
        return
    if serve:
        typer.echo(shell_join(argv))
        return
    from sparkhelpers.cluster import control
    from sparkhelpers.recipes.apply import recipe_config, recipe_spec

    cfg = recipe_config(_cfg(), recipe)
    outcome = control.start_cluster(cfg, nodes=recipe.nodes, dry_run=True, spec=recipe_spec(recipe), say=info)
    typer.echo(f"# recipe {recipe.name} ({recipe_id(recipe)})\n{outcome.dry_run_text}", nl=False)


@app.command("list")
def list_(as_json: bool = typer.Option(False, "--json", help="Print JSON."),
          presets: bool = typer.Option(True, "--presets/--no-presets", help="Include the catalog presets.")) -> None:
    """List the recipes on RECIPE_PATH and the catalog presets (each preset is a recipe)."""
    from sparkhelpers.recipes.loader import catalog_rows

    cfg = _cfg()
    rows = catalog_rows(cfg.get("RECIPE_PATH"), cfg.get("VLLM_IMAGE"), with_presets=presets,
                        catalog_file=cfg.get("MODEL_CATALOG"))
    if as_json:
        print_json(rows)
        return
    from tabulate import tabulate

    typer.echo(tabulate([[r["name"], r["model"], r["nodes"], r["id"] or r.get("error", ""), r["source"]]
                         for r in rows], headers=["name", "model", "nodes", "id", "source"]))


@app.command("import")
def import_(file: Path = typer.Argument(..., help="A sparkrun v2 or eugr v1 recipe."),
            output: Path | None = typer.Option(None, "-o", "--output", help="Write here instead of stdout."),
            image: str = typer.Option("", "--image", help="Image for a recipe that names none.")) -> None:
    """Convert a sparkrun v2 or eugr v1 recipe into ours; fields without an equivalent are refused.

    Example: sparkhelpers recipe import ~/sparkrun/qwen3.yaml -o recipes/qwen3.yaml
    """
    from sparkhelpers.recipes import export, imports

    doc = imports.import_file(file, image=image)
    _write(export.dump_yaml(doc), output)


@app.command("export")
def export_(ref: str = typer.Argument(..., help="Recipe file, name, or preset."),
            to: str = typer.Option(..., "--to", help="sparkrun | llama-swap | rayservice | raycluster | lws"),
            nodes: int | None = typer.Option(None, "--nodes", help=NODES_HELP),
            output: Path | None = typer.Option(None, "-o", "--output", help="Write here instead of stdout."),
            ttl: int = typer.Option(0, "--ttl", help="llama-swap: seconds idle before unloading (0 = never)."),
            tools_image: str = typer.Option("", "--tools-image",
                                            help="Kubernetes: image with sparkhelpers for the discovery init step."),
            hf_cache: str = typer.Option("", "--hf-cache", help="Kubernetes: the nodes' HF cache (default HF_CACHE)."),
            ) -> None:
    """Export a recipe: to sparkrun v2, a llama-swap config.yaml entry, or Kubernetes manifests.

    Example: sparkhelpers recipe export my.yaml --to llama-swap --ttl 600
    """
    from sparkhelpers.errors import UsageError
    from sparkhelpers.recipes import export

    if to not in export.TARGETS:
        raise UsageError(f"--to {to} is not an export target", fix=f"use one of {', '.join(export.TARGETS)}")
    recipe = _load(ref, nodes)
    from sparkhelpers.recipes.loader import looks_like_path

    where = str(Path(ref).resolve()) if looks_like_path(ref) else ref  # llama-swap may run from another cwd
    _write(export.export(recipe, to, ref=where, ttl=ttl, tools_image=tools_image,
                         hf_cache=hf_cache or _cfg().get("HF_CACHE")), output)


def _write(text: str, output: Path | None) -> None:
    if output is None:
        typer.echo(text, nl=False)
        return
    output.write_text(text, encoding="utf-8")
    info(f"wrote {output}")
