"""Server-sent events passing through: find the usage event and the first token without touching the bytes.

``SSETap.feed(chunk)`` returns what to send on. When nothing is stripped that is the chunk itself (the client gets
the engine's bytes, chunk for chunk); when the gateway added ``stream_options.include_usage`` for its own
accounting, complete events are sent on and the usage event (``"choices": []``) is held back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

SEP = b"\n\n"
MAX_PENDING = 1 << 20


@dataclass
class Usage:
    prompt: int = 0
    completion: int = 0
    seen: bool = False


class SSETap:
    def __init__(self, strip_usage: bool) -> None:
        self.strip = strip_usage
        self.pending = b""
        self.usage = Usage()
        self.content_events = 0
        self.first_token = False  # set by feed() on the first event carrying generated text
        self.error_event = False

    def feed(self, chunk: bytes) -> bytes:
        if self.first_token and not self.strip and not self.pending and chunk.endswith(SEP) \
                and b'"usage"' not in chunk and b'"error"' not in chunk:
            self.content_events += _tokens(chunk)  # whole events, none to parse: the per-token fast path
            return chunk
        self.pending += chunk
        events: list[bytes] = []
        if SEP in self.pending:
            *events, self.pending = self.pending.split(SEP)
        if not self.strip:
            for event in events:
                self._inspect(event)
            if len(self.pending) > MAX_PENDING:  # not SSE after all: stop looking
                self.pending = b""
            return chunk
        out = [kept + SEP for event in events if (kept := self._inspect(event)) is not None]
        if len(self.pending) > MAX_PENDING:
            out.append(self.pending)
            self.pending = b""
        return b"".join(out)

    def flush(self) -> bytes:
        rest, self.pending = self.pending, b""
        if rest.strip():
            self._inspect(rest)
        return rest if self.strip else b""

    def _inspect(self, event: bytes) -> bytes | None:
        """Reads one event; returns the bytes to send on in strip mode (None drops it)."""
        if _tokens(event):
            self.content_events += 1
            self.first_token = True
        if b'"usage"' not in event:
            if b'"error"' in event:
                self.error_event = True
            return event
        data = _data(event)
        if not isinstance(data, dict) or not isinstance(data.get("usage"), dict):
            return event
        usage = data["usage"]
        self.usage = Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0), True)
        if not self.strip:
            return event
        if not data.get("choices"):
            return None  # the usage-only event the client did not ask for
        data.pop("usage")
        return b"data: " + json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def _tokens(data: bytes) -> int:
    """Events carrying generated text in ``data`` (compact JSON as vLLM and llama.cpp write it, or with spaces)."""
    return (data.count(b'"content":"') + data.count(b'"text":"') + data.count(b'"content": "')
            + data.count(b'"text": "'))


def _data(event: bytes):  # noqa: ANN202
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            try:
                return json.loads(line[5:].strip())
            except ValueError:
                return None
    return None


def usage_of(body: bytes) -> Usage:
    """Token counts of a non-streamed answer (chat, completion or embeddings)."""
    try:
        usage = json.loads(body).get("usage") or {}
    except (ValueError, AttributeError):
        return Usage()
    if not isinstance(usage, dict):
        return Usage()
    prompt = int(usage.get("prompt_tokens") or 0)
    return Usage(prompt, int(usage.get("completion_tokens") or 0), bool(usage))
