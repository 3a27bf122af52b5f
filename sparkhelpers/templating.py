"""Jinja2 rendering for generated shell and config. Templates live beside the code that renders them.

Every value that reaches generated shell passes through the one ``shell_quote`` filter (alias
``q``), the same function the runner uses, and undefined variables are errors.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from sparkhelpers.runner import shell_join, shell_quote


@cache
def _environment(package: str):  # noqa: ANN202
    import jinja2

    def load(name: str) -> str:
        return resources.files(package).joinpath(name).read_text(encoding="utf-8")

    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(load),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["shell_quote"] = shell_quote
    env.filters["q"] = shell_quote
    env.filters["shell_join"] = shell_join
    return env


def render(package: str, name: str, **context: object) -> str:
    """Render template ``name`` that sits in ``package`` (e.g. "sparkhelpers.cluster")."""
    return _environment(package).get_template(name).render(**context)
