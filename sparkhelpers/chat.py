"""``sparkhelpers chat``: a short chat with the cluster (or the gateway), the reply streamed as it comes.

One-shot with a MESSAGE (or a message on stdin); interactive on a terminal without one (``/exit``,
Ctrl-D or Ctrl-C to leave, the conversation kept as context). The key comes from API_KEY/API_KEY_FILE.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator

import typer

from sparkhelpers.appkit import new_app
from sparkhelpers.errors import SparkError, UsageError

app = new_app("Chat with the served model (one-shot or interactive, streaming).", no_args_is_help=False,
              invoke_without_command=True)


def stream_reply(base_url: str, model: str, messages: list[dict], *, key: str = "", max_tokens: int = 512,
                 temperature: float | None = None, timeout_s: float = 300.0) -> Iterator[str]:
    """The reply's text pieces from /v1/chat/completions (stream), as the server sends them."""
    import requests

    from sparkhelpers.bench.client import DONE, parse_sse_line

    body: dict = {"model": model, "messages": messages, "stream": True, "max_tokens": max_tokens}
    if temperature is not None:
        body["temperature"] = temperature
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    session = requests.Session()
    session.trust_env = False  # loopback or the configured endpoint; never an environment proxy
    url = base_url.rstrip("/") + "/v1/chat/completions"
    try:
        resp = session.post(url, json=body, headers=headers, stream=True, timeout=(10, timeout_s))
    except requests.RequestException as exc:
        raise SparkError(f"cannot reach {url}: {type(exc).__name__}",
                         fix="start the cluster (start_cluster.sh) or pass --url") from None
    with resp:
        if resp.status_code != 200:
            raise SparkError(f"{url} answered HTTP {resp.status_code}: {resp.text[:200]}",
                             fix="check the model name (--model) and API_KEY" if resp.status_code in (401, 404)
                             else "see the server log (sparkhelpers logs)")
        for line in resp.iter_lines():
            message = parse_sse_line(line)
            if message is DONE:
                return
            if isinstance(message, dict):
                if message.get("error"):
                    raise SparkError(f"the server stopped the reply: {json.dumps(message['error'])[:200]}",
                                     fix="see the server log (sparkhelpers logs)")
                for choice in message.get("choices") or []:
                    piece = ((choice.get("delta") or {}).get("content")) or ""
                    if piece:
                        yield piece


def pick_model(base_url: str, key: str, wanted: str, configured: str = "") -> str:
    """--model when served (an unknown one is an error), else SERVED_MODEL_NAME when served, else the first."""
    import asyncio

    from sparkhelpers.bench.run import fetch_models

    served = asyncio.run(fetch_models(base_url, key))
    if wanted and (wanted in served or not served):
        return wanted
    if not wanted and configured in served:
        return configured
    if wanted:
        from sparkhelpers.errors import did_you_mean

        raise UsageError(f"{base_url} does not serve {wanted!r} (it serves {', '.join(served)})",
                         fix=did_you_mean(wanted, served) or f"--model {served[0]}")
    if not served:
        raise SparkError(f"{base_url}/v1/models lists no model", fix="pass --model NAME")
    return served[0]


def converse(ask: Callable[[], str | None], say: Callable[[str], None], reply: Callable[[list[dict]], Iterator[str]],
             system: str = "") -> int:
    """The interactive loop: ask, stream the reply, keep the history. Returns the number of turns."""
    history = [{"role": "system", "content": system}] if system else []
    turns = 0
    while True:
        text = ask()
        if text is None or text.strip() in ("/exit", "/quit"):
            return turns
        if not text.strip():
            continue
        history.append({"role": "user", "content": text})
        pieces = []
        for piece in reply(history):
            pieces.append(piece)
            say(piece)
        say("\n")
        history.append({"role": "assistant", "content": "".join(pieces)})
        turns += 1


@app.callback()
def chat(
    message: str = typer.Argument(None, help="Send this one message and print the reply (default: interactive)."),
    url: str = typer.Option("", "--url", help="Server root (default: the cluster's endpoint, VLLM_PORT)."),
    model: str = typer.Option("", "--model", help="Model to ask (default: SERVED_MODEL_NAME or the first served)."),
    system: str = typer.Option("", "--system", help="A system prompt."),
    max_tokens: int = typer.Option(512, "--max-tokens", min=1, help="Longest reply, in tokens."),
    temperature: float = typer.Option(None, "--temperature", min=0, help="Sampling temperature."),
) -> None:
    """Chat with the served model: one message and its streamed reply, or a conversation on a terminal."""
    from sparkhelpers import secrets
    from sparkhelpers.bench import current
    from sparkhelpers.bench.client import normalize_base_url
    from sparkhelpers.config import load_config

    cfg = load_config()
    base = normalize_base_url(url) if url else current.configured_url(cfg)
    key = secrets.secret_value(cfg, "API_KEY")
    name = pick_model(base, key, model, cfg.get("SERVED_MODEL_NAME"))

    def reply(messages: list[dict]) -> Iterator[str]:
        return stream_reply(base, name, messages, key=key, max_tokens=max_tokens, temperature=temperature)

    def say(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    if message is None and not sys.stdin.isatty():
        message = sys.stdin.read()
    if message is not None:
        converse(iter([message, None]).__next__, say, reply, system)
        return
    typer.echo(f"chatting with {name} at {base} (/exit or Ctrl-D to leave)", err=True)

    def ask() -> str | None:
        try:
            return input("you> ")
        except (EOFError, KeyboardInterrupt):
            typer.echo("", err=True)
            return None

    converse(ask, say, reply, system)
