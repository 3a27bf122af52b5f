"""A recipe's identity: a content hash over what it serves, plus the image it serves it with.

Normalized = every served field with its default made explicit, engine-argument keys in one spelling,
unset (null) arguments dropped, keys sorted, compact JSON: so key order, comments and whitespace never
change the id, and any served value (or the image ID/digest) does. Name, description, metadata and the
benchmark profile are not served and not hashed. ``id = <model-slug>@<runtime>@<12 hex>``.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from sparkhelpers.recipes.schema import SCHEMA_VERSION, Recipe

ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*@[a-z-]+@[0-9a-f]{12}$")


def normalized(recipe: Recipe) -> dict[str, Any]:
    return {
        "recipe": SCHEMA_VERSION, "model": recipe.model, "revision": recipe.revision, "runtime": recipe.runtime,
        "image": recipe.image, "nodes": recipe.nodes, "tensor_parallel": recipe.tensor_parallel,
        "pipeline_parallel": recipe.pipeline_parallel, "launch": recipe.launch, "served_name": recipe.served_name,
        "engine_args": {k: val for k, val in recipe.engine_args.items() if val is not None},
        "env": dict(recipe.env), "container": dict(recipe.container),
    }


def image_identity(image: str, image_id: str = "") -> str:
    """A pinned digest is in the reference itself; a tag is identified by the image ID when it is known."""
    if "@sha256:" in image:
        return image.split("@", 1)[1]
    return image_id


def content_hash(recipe: Recipe, image_id: str = "") -> str:
    blob = json.dumps({"recipe": normalized(recipe), "image_id": image_identity(recipe.image, image_id)},
                      sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def model_slug(model: str) -> str:
    base = model.rstrip("/").rsplit("/", 1)[-1]
    return re.sub(r"[^a-z0-9._]+", "-", base.lower()).strip("-._") or "model"


def recipe_id(recipe: Recipe, image_id: str = "") -> str:
    return f"{model_slug(recipe.model)}@{recipe.runtime}@{content_hash(recipe, image_id)}"


def pinned(recipe: Recipe, image_id: str = "") -> bool:
    """True when the id covers the image's content (a digest, or a known image ID), not only its tag."""
    return bool(image_identity(recipe.image, image_id))
