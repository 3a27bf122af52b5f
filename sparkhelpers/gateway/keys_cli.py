"""``sparkhelpers keys`` (create, list, revoke, rotate) and ``sparkhelpers usage``."""

from __future__ import annotations

import csv
import sys

import typer

from sparkhelpers.appkit import info, new_app, print_json

keys_app = new_app("API keys of the gateway: create (printed once), list, revoke, rotate. Stored hashed.")
usage_app = new_app("Gateway usage per key x model x day: requests, tokens, errors, latency.", no_args_is_help=False,
                    invoke_without_command=True)


def _store():  # noqa: ANN202
    from sparkhelpers.config import load_config, state_dir
    from sparkhelpers.gateway import keys

    return keys.Store(keys.db_path(state_dir(load_config())))


@keys_app.callback()
def keys_root() -> None:
    """API keys of the gateway: create (printed once), list, revoke, rotate. Stored hashed.

    Example: sparkhelpers keys create alice --models qwen3 --rpm 60 --tokens-per-day 200000
    """


@keys_app.command("create")
def create_cmd(
    name: str = typer.Argument(..., help="Key name (shown in logs, metrics and usage; the key itself never is)."),
    models: str = typer.Option("", "--models", help="Comma-separated models the key may use (default: all)."),
    rpm: int = typer.Option(None, "--rpm", min=1, help="Requests per minute."),
    tpm: int = typer.Option(None, "--tpm", min=1, help="Tokens (prompt + completion) per minute."),
    max_parallel: int = typer.Option(None, "--max-parallel", min=1, help="Requests in flight at once."),
    tokens_per_day: int = typer.Option(None, "--tokens-per-day", min=1, help="Tokens per UTC day."),
    expires: str = typer.Option("", "--expires", help="YYYY-MM-DD (end of day UTC), an ISO time, or 30d/12h."),
    admin: bool = typer.Option(False, "--admin", help="May call the admin endpoints (/running, unload, logs)."),
    as_json: bool = typer.Option(False, "--json", help="Print the record and the key as JSON."),
) -> None:
    """Create a key and print it once on stdout (store it now: only its hash is kept)."""
    from sparkhelpers.gateway import keys

    store = _store()
    record, secret = store.create(name, models=[m.strip() for m in models.split(",") if m.strip()], rpm=rpm,
                                  tpm=tpm, max_parallel=max_parallel, tokens_per_day=tokens_per_day,
                                  expires=keys.parse_expiry(expires) if expires else None, admin=admin)
    if as_json:
        print_json({**_row(record), "key": secret})
    else:
        print(secret)
        info(f"created key {record.name} (id {record.id}); it is shown only now")


def _row(k) -> dict:  # noqa: ANN001
    return {"id": k.id, "name": k.name, "models": k.models, "rpm": k.rpm, "tpm": k.tpm,
            "max_parallel": k.max_parallel, "tokens_per_day": k.tokens_per_day, "expires": k.expires,
            "admin": k.admin, "created": k.created, "revoked": k.revoked}


@keys_app.command("list")
def list_cmd(
    all_keys: bool = typer.Option(False, "--all", help="Include revoked keys."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """List the keys: names, ids, models and limits (never the keys)."""
    rows = [_row(k) for k in _store().all_keys(include_revoked=all_keys)]
    if as_json:
        print_json(rows)
        return
    from tabulate import tabulate

    table = [[r["name"], r["id"], ",".join(r["models"]) or "all", r["rpm"] or "-", r["tpm"] or "-",
              r["max_parallel"] or "-", r["tokens_per_day"] or "-", r["expires"] or "-",
              "admin" if r["admin"] else "", r["revoked"] or ""] for r in rows]
    print(tabulate(table, headers=["name", "id", "models", "rpm", "tpm", "parallel", "tokens/day", "expires", "role",
                                   "revoked"]))


@keys_app.command("revoke")
def revoke_cmd(name: str = typer.Argument(..., help="Key name or id.")) -> None:
    """Revoke a key (the gateway refuses it within a second; its usage is kept)."""
    key_id = _store().revoke(name)
    info(f"revoked key {name} (id {key_id})")


@keys_app.command("rotate")
def rotate_cmd(name: str = typer.Argument(..., help="Key name or id.")) -> None:
    """Replace a key's secret (same name, limits and usage); prints the new key once. The old one stops working."""
    key_id, secret = _store().rotate(name)
    print(secret)
    info(f"rotated key {name} (id {key_id}); the old key no longer works")


GROUPS = {"key": ("key",), "model": ("model",), "day": ("day",), "key,model": ("key", "model")}


def aggregate(rows: list[dict], by: str) -> list[dict]:
    """Sum the per key x model x day rows over the dimensions not in ``by``."""
    dims = GROUPS.get(by) if by else ("day", "key", "model")
    out: dict[tuple, dict] = {}
    for r in rows:
        k = tuple(r[d] for d in dims)
        acc = out.setdefault(k, {**{d: r[d] for d in dims}, "requests": 0, "errors": 0, "prompt_tokens": 0,
                                 "completion_tokens": 0, "latency_ms_sum": 0.0})
        for f in ("requests", "errors", "prompt_tokens", "completion_tokens", "latency_ms_sum"):
            acc[f] += r[f]
    for acc in out.values():
        acc["mean_latency_ms"] = round(acc.pop("latency_ms_sum") / acc["requests"], 1) if acc["requests"] else None
    return list(out.values())


@usage_app.callback()
def usage_cmd(
    since: str = typer.Option("", "--since", help="First day (YYYY-MM-DD, UTC; default: all)."),
    until: str = typer.Option("", "--until", help="Last day (YYYY-MM-DD, UTC; default: today)."),
    by: str = typer.Option("", "--by", help="Sum by key, model, day or key,model (default: day x key x model)."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
    as_csv: bool = typer.Option(False, "--csv", help="Print as CSV."),
) -> None:
    """Gateway usage per key x model x day: requests, errors, prompt and completion tokens, mean latency.

    Example: sparkhelpers usage --since 2026-12-01 --by key --csv
    """
    from sparkhelpers.errors import UsageError

    if by and by not in GROUPS:
        raise UsageError(f"--by {by!r}", fix="use key, model, day or key,model")
    rows = aggregate(_store().usage_rows(since, until), by)
    if as_json:
        print_json(rows)
    elif as_csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]) if rows else ["requests"])
        writer.writeheader()
        writer.writerows(rows)
    else:
        from tabulate import tabulate

        print(tabulate([list(r.values()) for r in rows], headers=list(rows[0]) if rows else []) if rows
              else "no usage recorded")
