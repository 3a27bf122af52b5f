"""Finding and reading recipes: a file, a name on RECIPE_PATH, or a catalog preset (a preset is a recipe).

``load`` returns the exact Recipe for a node count; ``load_document`` the merged document (``include:``
followed, at most 8 levels, cycles refused) that ``export`` and ``show`` start from.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sparkhelpers.errors import SparkError
from sparkhelpers.recipes import schema as sc
from sparkhelpers.recipes.schema import Recipe, fail

MAX_INCLUDE_DEPTH = 8
MERGED_MAPS = ("engine_args", "env", "container", "metadata", "benchmark", "defaults")  # defaults: sparkrun's
SUFFIXES = (".yaml", ".yml")


def read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SparkError(f"recipe {path} does not exist", fix="check the path, or `sparkhelpers recipe list`") \
            from None
    except OSError as exc:
        raise SparkError(f"cannot read recipe {path}: {exc.strerror}", fix="check the file's permissions") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise SparkError(f"recipe {path} is not valid YAML{at}: {problem}", fix="fix the YAML syntax") from None
    if not isinstance(data, dict):
        raise SparkError(f"recipe {path} is not a mapping of fields", fix="start it with `recipe: 1` and `name:`")
    return data


def merge(base: dict, child: dict) -> dict:
    """The child's keys win; maps merge key by key; overrides lists concatenate (base first)."""
    out = {k: val for k, val in base.items() if k != "include"}
    for key, value in child.items():
        if key == "include":
            continue
        if key in MERGED_MAPS and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        elif key == "overrides" and isinstance(value, list) and isinstance(out.get(key), list):
            out[key] = out[key] + value
        else:
            out[key] = value
    return out


def load_document(path: Path, search: list[Path] | None = None, _seen: tuple[Path, ...] = ()) -> dict:
    """The recipe file with its ``include:`` chain merged in; secrets refused in every file."""
    path = path.resolve()
    if path in _seen:
        raise SparkError(f"recipe {_seen[0]}: include cycle through {path}", fix="remove one of the includes")
    if len(_seen) >= MAX_INCLUDE_DEPTH:
        raise SparkError(f"recipe {_seen[0]}: includes nest deeper than {MAX_INCLUDE_DEPTH} levels",
                         fix="flatten the chain of base recipes")
    doc = read_yaml(path)
    sc.check_no_secrets(str(path), doc)
    base_ref = doc.get("include")
    if base_ref is None:
        return doc
    if not isinstance(base_ref, str) or not base_ref:
        raise fail(str(path), "include must be one file or recipe name", "e.g. include: base.yaml")
    base_path = (path.parent / base_ref) if not Path(base_ref).is_absolute() else Path(base_ref)
    if not base_path.is_file():
        found = find_file(base_ref, search or [])
        if found is None:
            raise fail(str(path), f"include {base_ref} not found (next to the file or on RECIPE_PATH)",
                       "give the base recipe's path relative to this file")
        base_path = found
    return merge(load_document(base_path, search, (*_seen, path)), doc)


def search_dirs(recipe_path: str = "") -> list[Path]:
    """RECIPE_PATH (colon-separated) directories, in order."""
    raw = recipe_path if recipe_path else os.environ.get("RECIPE_PATH", "")
    return [Path(p).expanduser() for p in raw.split(":") if p]


def find_file(name: str, dirs: list[Path]) -> Path | None:
    for d in dirs:
        for suffix in ("", *SUFFIXES):
            candidate = d / f"{name}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def looks_like_path(ref: str) -> bool:
    return "/" in ref or ref.endswith(SUFFIXES)


def locate(ref: str, dirs: list[Path]) -> Path | None:
    """A recipe file for ``ref`` (a path, or a name on RECIPE_PATH); None when it is not a file."""
    if looks_like_path(ref):
        path = Path(ref).expanduser()
        if not path.is_file():
            raise SparkError(f"recipe {ref} does not exist", fix="check the path, or `sparkhelpers recipe list`")
        return path
    return find_file(ref, dirs)


def load(ref: str, *, nodes: int | None = None, recipe_path: str = "", catalog: dict | None = None,
         default_image: str = "", catalog_file: str = "") -> Recipe:
    """The exact recipe ``ref`` names: a file, a name on RECIPE_PATH, or a catalog preset."""
    if catalog is None and catalog_file:
        from sparkhelpers.models.catalog import load_catalog

        catalog = load_catalog(catalog_file)
    where, doc = _document(ref, search_dirs(recipe_path), catalog, default_image)
    return sc.resolve(where, doc, nodes)


def listing(dirs: list[Path]) -> list[tuple[str, Path]]:
    """(name, file) of every recipe file on RECIPE_PATH; the first directory wins a name."""
    seen: dict[str, Path] = {}
    for d in dirs:
        if not d.is_dir():
            continue
        for f in sorted(d.iterdir()):
            if f.suffix in SUFFIXES and f.stem not in seen:
                seen[f.stem] = f
    return list(seen.items())


def _document(ref: str, dirs: list[Path], catalog: dict | None, default_image: str) -> tuple[str, dict]:
    path = locate(ref, dirs)
    if path is not None:
        return str(path), load_document(path, dirs)
    from sparkhelpers.recipes.presets import preset_document

    doc = preset_document(ref, catalog, default_image)
    if doc is None:
        where = ", ".join(str(d) for d in dirs) or "RECIPE_PATH is empty"
        raise SparkError(f"no recipe file or preset named {ref} ({where})",
                         fix="give a file path, add its directory to RECIPE_PATH, or see `sparkhelpers recipe list`")
    return f"preset {ref}", doc


def validate_all(ref: str, *, recipe_path: str = "", catalog: dict | None = None,
                 default_image: str = "") -> list[Recipe]:
    """The recipe at every node count it allows (so an override that breaks at 2 nodes is caught)."""
    where, doc = _document(ref, search_dirs(recipe_path), catalog, default_image)
    first = sc.resolve(where, doc)
    low, high = first.nodes_range
    out = [first]
    fixed_tp = doc.get("tensor_parallel")
    for count in range(low, high + 1):
        if count == first.nodes or count % first.pipeline_parallel or (fixed_tp and fixed_tp * first.pipeline_parallel
                                                                       != count):
            continue
        out.append(sc.resolve(where, doc, count))
    return sorted(out, key=lambda r: r.nodes)


def catalog_rows(recipe_path: str, default_image: str, *, with_presets: bool = True,
                 catalog_file: str = "") -> list[dict]:
    """One row per recipe on RECIPE_PATH, then per preset (a recipe that does not load shows its error)."""
    from sparkhelpers.recipes.identity import recipe_id

    refs = [(name, str(path)) for name, path in listing(search_dirs(recipe_path))]
    catalog = None
    if with_presets:
        from sparkhelpers.models.catalog import load_catalog

        catalog = load_catalog(catalog_file or None)
        refs += [(name, f"preset ({p.origin})") for name, p in catalog.items()]
    rows = []
    for name, source in refs:
        ref = source if not source.startswith("preset") else name
        try:
            r = load(ref, recipe_path=recipe_path, catalog=catalog, default_image=default_image)
            rows.append({"name": r.name, "model": r.model, "nodes": r.nodes, "id": recipe_id(r), "source": source})
        except SparkError as exc:
            rows.append({"name": name, "model": "", "nodes": "", "id": "", "error": exc.message, "source": source})
    return rows
