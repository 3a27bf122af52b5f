"""Recipes: one versioned file says how a model is served (format, identity, render, import, export).

Public API: ``load`` (a file, a name on RECIPE_PATH or a catalog preset -> an exact ``Recipe``),
``recipe_id``, ``engine_argv`` and ``serve_argv``.
"""

from sparkhelpers.recipes.identity import content_hash, recipe_id
from sparkhelpers.recipes.loader import load, load_document
from sparkhelpers.recipes.render import engine_argv, serve_argv
from sparkhelpers.recipes.schema import Recipe

__all__ = ["Recipe", "content_hash", "engine_argv", "load", "load_document", "recipe_id", "serve_argv"]
