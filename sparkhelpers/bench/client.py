"""The load generator: asyncio + aiohttp, one connection pool, timestamps taken right after each read.

Closed loop (``max_concurrency``: a semaphore plus the connector limit) and open loop (``request_rate``
with gamma-distributed gaps, ``burstiness`` 1.0 = Poisson), as ``vllm bench serve`` does. The stream
parser (``StreamState``) is pure so every server quirk is tested without a network. The client watches
its own health: dispatch lag (open loop: how late a request left against its schedule), event-loop lag
(how long other work blocked the loop) and its CPU use; ``judge_health`` says when those could distort
the figures.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields

from sparkhelpers.bench.datasets import Prompt
from sparkhelpers.bench.metrics import RequestRecord, percentile

BACKEND_ENDPOINTS = {"openai": "/v1/completions", "openai-chat": "/v1/chat/completions"}
BACKEND_ALIASES = {"vllm": "openai", "openai-completions": "openai", "chat": "openai-chat"}
DONE = object()


@dataclass(kw_only=True)
class LoadShape:
    """How the load is sent: shared by the run's options and the load spec (one list of these fields)."""

    backend: str = "openai"
    endpoint: str = ""
    max_concurrency: int | None = None
    request_rate: float = math.inf
    burstiness: float = 1.0
    seed: int = 0
    ignore_eos: bool = False
    temperature: float | None = 0.0
    num_warmups: int = 0
    request_timeout_s: float = 600.0
    top_p: float | None = None
    headers: dict[str, str] = field(default_factory=dict)  # extra HTTP headers (--header)
    extra_body: dict = field(default_factory=dict)  # merged into every request body last (--extra-body)

    def load_shape(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(LoadShape)}


@dataclass
class LoadSpec(LoadShape):
    base_url: str  # server root, no /v1
    model: str
    api_key: str = field(default="", repr=False)

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + (self.endpoint or BACKEND_ENDPOINTS[self.backend])


def normalize_base_url(url: str) -> str:
    """The server root: a trailing '/' or '/v1' (as users copy it from client configs) is dropped."""
    url = url.strip().rstrip("/")
    if url.endswith("/v1"):
        url = url[: -len("/v1")]
    return url


def normalize_backend(name: str) -> str:
    name = BACKEND_ALIASES.get(name, name)
    if name not in BACKEND_ENDPOINTS:
        from sparkhelpers.errors import UsageError

        raise UsageError(f"--backend {name!r} is not supported",
                         fix="use openai (completions) or openai-chat (chat completions)")
    return name


def build_payload(spec: LoadSpec, prompt: Prompt) -> dict:
    """The request body; always asks for the usage chunk so token counts come from the server."""
    body: dict = {"model": spec.model, "stream": True, "stream_options": {"include_usage": True},
                  "max_tokens": prompt.output_len}
    if spec.backend == "openai-chat":
        body["messages"] = [{"role": "user", "content": prompt.text}]
        body["max_completion_tokens"] = prompt.output_len
    else:
        body["prompt"] = prompt.text
    if spec.temperature is not None:
        body["temperature"] = spec.temperature
    if spec.top_p is not None:
        body["top_p"] = spec.top_p
    if spec.ignore_eos:
        body["ignore_eos"] = True
    body.update(spec.extra_body)
    return body


def parse_sse_line(line: bytes | str) -> dict | object | None:
    """One SSE line -> the JSON payload, DONE for ``[DONE]``, None for blank/comment/other fields.
    Bytes are parsed as they came (no decode: json reads UTF-8 bytes itself)."""
    raw = line if isinstance(line, bytes) else line.encode("utf-8", "replace")
    if not raw.startswith(b"data:"):
        raw = raw.lstrip()
        if not raw.startswith(b"data:"):
            return None
    data = raw[5:].strip()
    if data == b"[DONE]":
        return DONE
    try:
        value = json.loads(data)
    except ValueError:
        return {"_malformed": data[:200].decode("utf-8", "replace")}
    return value if isinstance(value, dict) else {"_malformed": data[:200].decode("utf-8", "replace")}


class StreamState:
    """Folds SSE messages into a RequestRecord using vLLM's definitions."""

    def __init__(self, record: RequestRecord, chat: bool) -> None:
        self.record = record
        self.chat = chat
        self.last: float | None = None
        self.content_chunks = 0
        self.usage: dict | None = None
        self.error = ""
        self.done = False
        self.text: list[str] = []

    def feed(self, message: dict | object | None, ts: float) -> None:
        """``ts`` is the absolute receive time (same clock as ``record.start``)."""
        if message is None:
            return
        if message is DONE:
            self.done = True
            return
        assert isinstance(message, dict)
        if "_malformed" in message:
            self.error = f"malformed: {message['_malformed'][:80]}"
            return
        if message.get("error"):
            err = message["error"]
            self.error = "server_error: " + (err.get("message", "") if isinstance(err, dict) else str(err))[:200]
            return
        if isinstance(message.get("usage"), dict):
            self.usage = message["usage"]
        choices = message.get("choices") or []
        if not choices:
            return
        r = self.record
        r.chunks += 1
        if self.last is None:
            r.ttft = ts - r.start
        else:
            r.itl.append(ts - self.last)
        self.last = ts
        r.latency = ts - r.start
        choice = choices[0] if isinstance(choices[0], dict) else {}
        if self.chat:
            delta = choice.get("delta") or {}
            piece = (delta.get("content") or "") + (delta.get("reasoning_content") or delta.get("reasoning") or "")
        else:
            piece = choice.get("text") or ""
        if piece:
            self.content_chunks += 1
            self.text.append(piece)
            if r.ttft_content is None:
                r.ttft_content = ts - r.start
        for c in choices:
            if isinstance(c, dict) and c.get("finish_reason"):
                r.finish_reason = str(c["finish_reason"])

    def finish(self) -> RequestRecord:
        """Token counts (usage first, else one per content chunk) and the success verdict."""
        r = self.record
        r.generated_text = "".join(self.text)
        completion = (self.usage or {}).get("completion_tokens")
        if isinstance(completion, int):
            r.output_tokens, r.token_count_source = completion, "usage"
        else:
            r.output_tokens, r.token_count_source = self.content_chunks, "stream_chunks"
        prompt_tokens = (self.usage or {}).get("prompt_tokens")
        if isinstance(prompt_tokens, int) and prompt_tokens > 0:
            r.prompt_len, r.prompt_len_source = prompt_tokens, "usage"
        if self.error:
            r.error = self.error
        elif r.chunks == 0 or r.output_tokens == 0:
            r.error = "empty: HTTP 200 but the stream carried no tokens"
        elif r.finish_reason is None:
            r.error = "truncated: the stream ended without a finish_reason"
        r.success = not r.error
        return r


def arrival_schedule(n: int, rate: float, burstiness: float, seed: int) -> list[float]:
    """Send offsets (s) for n requests: all 0 for an infinite rate, else gamma gaps (shape=burstiness,
    mean 1/rate) rescaled so the last request leaves at exactly n/rate, as vllm bench serve does."""
    if math.isinf(rate) or n == 0:
        return [0.0] * n
    rng = random.Random(seed)
    theta = 1.0 / (rate * burstiness)
    gaps = [rng.gammavariate(burstiness, theta) for _ in range(n)]
    total, acc, out = sum(gaps), 0.0, []
    for g in gaps:
        acc += g
        out.append(acc)
    scale = (n / rate) / total if total > 0 else 1.0
    return [t * scale for t in out]


@dataclass
class Health:
    cpu_s: float = 0.0
    wall_s: float = 0.0
    origin: float = 0.0  # perf_counter at the load's start: records' times are relative to it
    loop_lag_ms: list[float] = field(default_factory=list)
    dispatch_lag_ms: list[float] = field(default_factory=list)
    send_lag_ms: list[float] = field(default_factory=list)  # POST called -> body on the socket (not in TTFT)

    def summary(self) -> dict:
        cpu_pct = 100.0 * self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0
        return {
            "cpu_pct": round(cpu_pct, 1),
            "cpu_s": round(self.cpu_s, 3),
            "event_loop_lag_p99_ms": round(percentile(self.loop_lag_ms, 99), 3),
            "event_loop_lag_max_ms": round(max(self.loop_lag_ms, default=0.0), 3),
            "dispatch_lag_p99_ms": round(percentile(self.dispatch_lag_ms, 99), 3) if self.dispatch_lag_ms else None,
            "dispatch_lag_max_ms": round(max(self.dispatch_lag_ms), 3) if self.dispatch_lag_ms else None,
            "send_lag_p99_ms": round(percentile(self.send_lag_ms, 99), 3) if self.send_lag_ms else None,
        }


CPU_LIMIT_PCT = 50.0


def judge_health(health: dict, median_ttft_ms: float) -> list[str]:
    """Reasons the client's own overhead could distort the figures (empty = trustworthy)."""
    reasons = []
    lag_limit = max(10.0, 0.05 * median_ttft_ms)
    if health["cpu_pct"] > CPU_LIMIT_PCT:
        reasons.append(f"client CPU {health['cpu_pct']:.0f}% of a core > {CPU_LIMIT_PCT:.0f}%: "
                       "shard the load or run the client on an idle core")
    if health.get("dispatch_lag_p99_ms") is not None and health["dispatch_lag_p99_ms"] > lag_limit:
        reasons.append(f"dispatch lag p99 {health['dispatch_lag_p99_ms']:.1f} ms > {lag_limit:.1f} ms: "
                       "requests left later than scheduled")
    if health["event_loop_lag_p99_ms"] > lag_limit:
        reasons.append(f"event-loop lag p99 {health['event_loop_lag_p99_ms']:.1f} ms > {lag_limit:.1f} ms: "
                       "the client was too busy to timestamp chunks on time")
    return reasons


def stamped_payload(body: bytes, on_write):  # noqa: ANN001, ANN201
    """The body as an aiohttp payload that calls ``on_write()`` just before its bytes go to the socket.

    ``start`` is taken again there: in a burst (128 requests let go at once) every coroutine stamps its
    start before any body is written (Python < 3.12 runs aiohttp's body write as a task behind the
    others), so the first request left ~10 ms after its stamp and TTFT counted the client's own queueing.
    (No aiohttp tracing: its per-request signals cost more, at the moment other streams' last tokens land.)
    """
    return _stamped_class()(body, on_write)


@functools.cache
def _stamped_class():  # noqa: ANN202  (aiohttp is imported only when a load runs)
    from aiohttp.payload import BytesPayload

    class Stamped(BytesPayload):
        def __init__(self, body: bytes, on_write) -> None:  # noqa: ANN001
            super().__init__(body, content_type="application/json")
            self.on_write = on_write

        async def write(self, writer) -> None:  # noqa: ANN001  (aiohttp < 3.12)
            self.on_write()
            await super().write(writer)

        async def write_with_length(self, writer, content_length) -> None:  # noqa: ANN001
            self.on_write()
            await super().write_with_length(writer, content_length)

    return Stamped


def request_headers(spec: LoadSpec) -> dict[str, str]:
    headers = {"Content-Type": "application/json", **spec.headers}
    if spec.api_key:
        headers["Authorization"] = f"Bearer {spec.api_key}"
    return headers


def encode_payload(spec: LoadSpec, prompt: Prompt) -> bytes:
    """The request body as bytes, built before the load: no serializing inside the timed window."""
    return json.dumps(build_payload(spec, prompt), ensure_ascii=False).encode()


async def send_one(session, spec: LoadSpec, prompt: Prompt, record: RequestRecord, origin: float, *,
                   body: bytes | None = None, headers: dict[str, str] | None = None,
                   send_lags: list[float] | None = None) -> RequestRecord:
    """One streamed request; ``record.start`` is when its body went to the socket (relative to ``origin``;
    stamped just before the POST, then again by ``stamped_payload``); the gap between the two is
    appended to ``send_lags`` (ms).

    A pooled keep-alive connection the server has already closed fails before the request reaches it
    ("Can not write request body", or a disconnect before any response); that request is sent once more
    on a fresh connection with a fresh ``start`` and counted in ``record.retries``.
    """
    import aiohttp

    headers = headers or request_headers(spec)
    body = body if body is not None else encode_payload(spec, prompt)
    clock = time.perf_counter
    for attempt in range(2):
        state = StreamState(record, chat=spec.backend == "openai-chat")
        posted = record.start = clock() - origin

        def sent(posted: float = posted) -> None:
            if record.start == posted:  # the first body chunk only
                record.start = clock() - origin
                if send_lags is not None:
                    send_lags.append((record.start - posted) * 1000.0)

        try:
            async with session.post(spec.url, data=stamped_payload(body, sent), headers=headers) as resp:
                record.http_status = resp.status
                if resp.status != 200:
                    text = (await resp.text(errors="replace"))[:200].replace("\n", " ")
                    record.error = f"HTTP {resp.status}: {text}"
                    return record
                await read_stream(resp.content, state, origin)
        except asyncio.TimeoutError:
            state.error = f"timeout: no complete answer within {spec.request_timeout_s:g} s"
        except aiohttp.ClientPayloadError as exc:
            state.error = f"disconnect: {exc}"[:200]
        except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as exc:
            if attempt == 0 and record.http_status == 0 and record.chunks == 0:
                record.retries += 1
                continue
            state.error = f"connection: {type(exc).__name__}: {exc}"[:200]
        except aiohttp.ClientError as exc:
            state.error = f"connection: {type(exc).__name__}: {exc}"[:200]
        break
    return state.finish()


async def read_stream(content, state: StreamState, origin: float) -> None:  # noqa: ANN001
    """Feed the SSE stream to ``state``: one timestamp per read from the socket (every message in it
    arrived then), split into lines here, and only ``data:`` lines parsed."""
    clock, pending = time.perf_counter, b""
    async for data in content.iter_any():
        ts = clock() - origin
        *lines, pending = (pending + data).split(b"\n")
        for line in lines:
            if line.startswith(b"data:"):
                state.feed(parse_sse_line(line), ts)
                if state.done:
                    return
    if pending.startswith(b"data:"):
        state.feed(parse_sse_line(pending), clock() - origin)


async def _watch_loop(stop: asyncio.Event, lags: list[float], interval: float = 0.01) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        t = loop.time()
        await asyncio.sleep(interval)
        lags.append(max(0.0, (loop.time() - t - interval) * 1000.0))


async def _warm_up(session, spec: LoadSpec, prompt: Prompt) -> None:  # noqa: ANN001
    """``spec.num_warmups`` unrecorded requests at the target concurrency (they open the pool's connections)."""
    sem = asyncio.Semaphore(min(spec.num_warmups, spec.max_concurrency or spec.num_warmups))

    async def warm(i: int) -> RequestRecord:
        async with sem:
            return await send_one(session, spec, prompt, RequestRecord(i, prompt.prompt_len, prompt.output_len), 0.0)

    await asyncio.gather(*(warm(i) for i in range(spec.num_warmups)))


async def run_load(spec: LoadSpec, prompts: Sequence[Prompt], *, progress=None,
                   warmup_prompts: Sequence[Prompt] = (), on_measure=None) -> tuple[list[RequestRecord], float, Health]:
    """Run the workload; returns the records, the duration (s) and the client's health. Warm-up requests
    (``spec.num_warmups``, at the target concurrency, opening the pool's connections) are not recorded;
    ``on_measure()`` runs between them and the measured requests (the engine-metrics baseline)."""
    import aiohttp

    limit = spec.max_concurrency or 0
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit, keepalive_timeout=60)
    # total only: a sock_read timeout (the same bound) made aiohttp cancel and re-arm a timer on every chunk
    timeout = aiohttp.ClientTimeout(total=spec.request_timeout_s)
    health = Health()
    headers, bodies = request_headers(spec), [encode_payload(spec, p) for p in prompts]
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False) as session:
        if spec.num_warmups > 0 and prompts:
            await _warm_up(session, spec, (list(warmup_prompts) or list(prompts))[0])

        if on_measure:
            on_measure()
        schedule = arrival_schedule(len(prompts), spec.request_rate, spec.burstiness, spec.seed)
        sem = asyncio.Semaphore(spec.max_concurrency) if spec.max_concurrency else None
        records = [RequestRecord(i, p.prompt_len, p.output_len, prompt_len_source=p.len_source)
                   for i, p in enumerate(prompts)]
        open_loop = not math.isinf(spec.request_rate)
        stop = asyncio.Event()
        watcher = asyncio.ensure_future(_watch_loop(stop, health.loop_lag_ms))
        done = 0
        cpu0 = time.process_time()
        origin = health.origin = time.perf_counter()

        async def one(i: int) -> RequestRecord:
            nonlocal done
            if open_loop:
                delay = schedule[i] - (time.perf_counter() - origin)
                if delay > 0:
                    await asyncio.sleep(delay)
                health.dispatch_lag_ms.append(max(0.0, (time.perf_counter() - origin - schedule[i]) * 1000.0))
            queued = time.perf_counter()
            send = {"body": bodies[i], "headers": headers, "send_lags": health.send_lag_ms}
            if sem is None:
                rec = await send_one(session, spec, prompts[i], records[i], origin, **send)
            else:
                async with sem:
                    records[i].queue_time = time.perf_counter() - queued
                    rec = await send_one(session, spec, prompts[i], records[i], origin, **send)
            done += 1
            if progress:
                progress(done, len(prompts))
            return rec

        await asyncio.gather(*(one(i) for i in range(len(prompts))))
        duration = time.perf_counter() - origin
        health.cpu_s = time.process_time() - cpu0
        health.wall_s = duration
        stop.set()
        await watcher
    return records, duration, health
