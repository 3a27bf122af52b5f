"""The status page (/ui): models and their state, node sets, idle time, memory, per-key usage today.

HTML from a Jinja2 template beside this module, autoescaped (model and key names are user input). The page
refreshes itself every 5 s and needs no JavaScript.
"""

from __future__ import annotations

import time
from functools import cache
from importlib import resources

from sparkhelpers.gateway import launcher


@cache
def _template():  # noqa: ANN202
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    text = resources.files("sparkhelpers.gateway").joinpath("status.html.j2").read_text(encoding="utf-8")
    return env.from_string(text)


def _mib(n: int) -> str:
    return f"{n / 1048576:,.0f} MiB" if n else "-"


def model_rows(manager) -> list[dict]:  # noqa: ANN001
    now = time.monotonic()
    rows = []
    for rs in manager.replicas.values():
        idle = now - rs.last_used if rs.last_used and rs.state == "ready" else None
        rows.append({"model": rs.entry.name, "replica": rs.id, "aliases": ", ".join(rs.entry.aliases),
                     "state": rs.state, "nodes": ", ".join(rs.replica.nodes), "in_flight": rs.in_flight,
                     "idle": f"{idle:.0f} s" if idle is not None else "-",
                     "ttl": f"{rs.entry.ttl:g} s" if rs.entry.ttl else "never",
                     "memory": _mib(rs.proc.rss_bytes()) if rs.proc else "-", "error": rs.last_error})
    return rows


def render(manager, usage: list[dict], cfg) -> str:  # noqa: ANN001
    return _template().render(models=model_rows(manager), usage=usage,
                              mem_available=_mib(launcher.mem_available_kib() * 1024),
                              listen=f"{cfg.listen_host}:{cfg.listen_port}", now=time.strftime("%Y-%m-%d %H:%M:%S UTC",
                                                                                            time.gmtime()))
