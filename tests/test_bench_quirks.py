"""The client against real HTTP servers with the stream quirks real engines and proxies have.

One aiohttp app on 127.0.0.1 with modes chosen by the request's model name: llama.cpp's finish_reason on
an empty chunk, no usage, a role-only first chunk sent early, an empty 200 stream, a mid-stream disconnect,
429/500 answers, and a stream that stops without a finish_reason.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import threading
from pathlib import Path

import pytest
from aiohttp import web

from sparkhelpers.bench.run import RunOptions, execute
from sparkhelpers.errors import SparkError


def sse(obj) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def chunk(content=None, finish=None, role=False):
    delta = {"role": "assistant", "content": content} if role else {"content": content}
    return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


class QuirkServer:
    def __init__(self, port: int = 0) -> None:
        self.requests: list[dict] = []
        self.count = 0
        self.loop = asyncio.new_event_loop()
        self.port = port

    async def models(self, _request):
        return web.json_response({"data": [{"id": "normal"}]})

    async def chat(self, request):
        body = await request.json()
        self.requests.append({"body": body, "auth": request.headers.get("Authorization", ""),
                              "headers": dict(request.headers)})
        self.count += 1
        mode = body["model"]
        n = body.get("max_tokens", 4)
        if mode == "http429" or (mode == "flaky" and self.count % 2 == 0):
            return web.json_response({"error": {"message": "Too many requests"}}, status=429)
        if mode == "http500":
            return web.Response(status=500, text="Internal Server Error")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        if mode == "empty200":
            await resp.write(b"data: [DONE]\n\n")
            return resp
        if mode == "role_first":  # a proxy that flushes the role chunk at once, content 150 ms later
            await resp.write(sse(chunk("", role=True)))
            await asyncio.sleep(0.15)
        elif mode in ("normal", "flaky", "finish_empty", "no_usage", "disconnect", "no_finish"):
            await resp.write(sse(chunk(None, role=True)))  # llama.cpp: content null
        for i in range(n):
            await asyncio.sleep(0.005)
            if mode == "disconnect" and i == 2:
                request.transport.close()  # the engine died mid-stream
                return resp
            last = i == n - 1
            finish = "length" if last and mode in ("normal", "flaky", "role_first") else None
            await resp.write(sse(chunk(f"t{i}", finish)))
        if mode in ("finish_empty", "no_usage"):
            await resp.write(sse(chunk(None, "length")))  # llama.cpp: finish_reason on an empty delta
        if mode != "no_usage":
            await resp.write(sse({"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": n}}))
        await resp.write(b"data: [DONE]\n\n")
        return resp

    def start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat)
        runner = web.AppRunner(app)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        ready = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(runner.setup())
            self.loop.run_until_complete(web.SockSite(runner, sock).start())
            ready.set()
            self.loop.run_forever()
            self.loop.run_until_complete(runner.cleanup())

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()
        ready.wait(10)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def quirks():
    server = QuirkServer()
    server.start()
    yield server
    server.stop()


def run(quirks, model, n=4, c=2, api_key="", **kw):
    kw.setdefault("random_input_len", 8)
    kw.setdefault("random_output_len", 6)
    opts = RunOptions(base_url=f"http://127.0.0.1:{quirks.port}/v1", model=model, backend="openai-chat",
                      num_prompts=n, max_concurrency=c, request_timeout_s=20, **kw)
    return execute(opts, api_key=api_key)


def test_normal_stream(quirks):
    doc, records = run(quirks, "normal")
    assert doc["completed"] == 4 and doc["failed"] == 0 and doc["total_output_tokens"] == 24
    assert doc["extra"]["token_count_source"] == "usage" and doc["total_input_tokens"] == 44
    assert doc["extra"]["prompt_len_source"] == "usage"
    assert all(r.finish_reason == "length" for r in records)


def test_finish_reason_on_an_empty_chunk_is_success(quirks):
    doc, records = run(quirks, "finish_empty")
    assert doc["completed"] == 4 and records[0].finish_reason == "length" and records[0].output_tokens == 6


def test_no_usage_counts_tokens_from_the_stream(quirks):
    doc, _ = run(quirks, "no_usage")
    assert doc["completed"] == 4 and doc["total_output_tokens"] == 24
    assert doc["extra"]["token_count_source"] == "stream_chunks"
    assert doc["extra"]["prompt_len_source"] == "approx_words"


def test_role_only_first_chunk_splits_ttft_and_content_ttft(quirks):
    doc, records = run(quirks, "role_first", n=2, c=2)
    assert doc["completed"] == 2
    assert doc["median_ttft_ms"] < 100  # vLLM's definition: the role chunk carries choices
    assert doc["extra"]["ttft_content_ms"]["median"] >= 150  # what a user waits for


def test_empty_200_stream_is_a_failure(quirks):
    doc, records = run(quirks, "empty200")
    assert doc["completed"] == 0 and doc["failed"] == 4
    assert all(r.error.startswith("empty:") for r in records)
    assert doc["run"]["valid"] is False and "no request completed" in doc["run"]["invalid_reasons"]


def test_stream_without_finish_reason_is_a_failure(quirks):
    doc, records = run(quirks, "no_finish")
    assert doc["failed"] == 4 and all(r.error.startswith("truncated:") for r in records)


def test_mid_stream_disconnect_is_a_failure(quirks):
    doc, records = run(quirks, "disconnect")
    assert doc["failed"] == 4
    assert all(r.error.split(":")[0] in ("disconnect", "truncated", "connection") for r in records), records[0].error


@pytest.mark.parametrize("mode,status", [("http429", 429), ("http500", 500)])
def test_http_errors_are_failures_with_the_status(quirks, mode, status):
    doc, records = run(quirks, mode)
    assert doc["failed"] == 4 and all(r.http_status == status for r in records)
    assert doc["extra"]["error_counts"] == {f"HTTP {status}": 4}


def test_partial_failures_are_counted_not_averaged_in(quirks):
    doc, records = run(quirks, "flaky", n=6, c=1)
    assert doc["completed"] == 3 and doc["failed"] == 3
    assert doc["output_throughput"] == pytest.approx(18 / doc["duration"])


def test_api_key_goes_in_the_header(quirks):
    quirks.requests.clear()
    run(quirks, "normal", n=1, c=1, api_key="s3cret")
    assert quirks.requests[0]["auth"] == "Bearer s3cret"


def test_unreachable_server_is_one_clear_error():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(SparkError, match="cannot reach"):
        execute(RunOptions(base_url=f"http://127.0.0.1:{port}", num_prompts=1))


def test_cli_saves_vllm_keys_and_requests_jsonl(quirks, sparkhelpers_bin, tmp_path, monkeypatch):
    monkeypatch.setenv("API_KEY", "from-env")
    r = subprocess.run([*sparkhelpers_bin, "bench", "run", "--base-url", f"http://127.0.0.1:{quirks.port}",
                        "--backend", "openai-chat", "--model", "normal", "--num-prompts", "3",
                        "--max-concurrency", "3", "--random-input-len", "8", "--random-output-len", "5",
                        "--save-result", "--result-dir", str(tmp_path), "--label", "quirk",
                        "--metadata", "variant=x", "--goodput", "ttft:5000", "--metric-percentiles", "50,99.9"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "Serving Benchmark Result" in r.stdout and "from-env" not in r.stdout + r.stderr
    files = sorted(tmp_path.iterdir())
    doc = json.loads(next(f for f in files if f.suffix == ".json").read_text())
    for key in ("date", "backend", "model_id", "num_prompts", "request_rate", "burstiness", "max_concurrency",
                "duration", "completed", "failed", "total_input_tokens", "total_output_tokens",
                "request_throughput", "request_goodput", "output_throughput", "total_token_throughput",
                "max_output_tokens_per_s", "max_concurrent_requests", "mean_ttft_ms", "median_ttft_ms",
                "std_ttft_ms", "p99.9_ttft_ms", "p50_tpot_ms", "mean_itl_ms", "p99.9_e2el_ms"):
        assert key in doc, key
    assert doc["request_rate"] == "inf" and doc["variant"] == "x" and doc["request_goodput"] > 0
    assert doc["label"] == "quirk" and Path(files[0]).name.startswith("quirk-infqps-concurrency3-normal-")
    assert {"run", "target", "workload", "extra"} <= set(doc)
    lines = next(f for f in files if f.name.endswith(".requests.jsonl")).read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[0])["finish_reason"] == "length"
    assert "from-env" not in json.dumps(doc)


def test_open_loop_records_dispatch_lag(quirks):
    doc, _ = run(quirks, "normal", n=6, c=None, request_rate=40.0, burstiness=1.0)
    assert doc["completed"] == 6 and doc["request_rate"] == 40.0
    assert doc["extra"]["client"]["dispatch_lag_p99_ms"] is not None
    assert doc["duration"] >= 6 / 40.0  # the last request leaves at n/rate


def test_local_sharegpt_custom_and_prefix_repetition_datasets(quirks, tmp_path):
    share = tmp_path / "sharegpt.json"
    share.write_text(json.dumps([{"conversations": [{"from": "human", "value": f"question number {i} " * 3},
                                                    {"from": "gpt", "value": "an answer of several words"}]}
                                 for i in range(5)]))
    custom = tmp_path / "prompts.jsonl"
    custom.write_text('{"prompt": "first custom prompt here", "output_tokens": 3}\n{"prompt": "second one"}\n')
    quirks.requests.clear()
    doc, _ = run(quirks, "normal", n=3, dataset_name="sharegpt", dataset_path=str(share))
    assert doc["completed"] == 3 and "question number" in quirks.requests[0]["body"]["messages"][0]["content"]
    doc, _ = run(quirks, "normal", n=2, dataset_name="custom", dataset_path=str(custom))
    assert doc["completed"] == 2 and doc["total_output_tokens"] == 3 + 256
    doc, _ = run(quirks, "normal", n=4, dataset_name="prefix-repetition")
    assert doc["completed"] == 4 and doc["workload"]["num_prefixes"] == 10


def test_cli_dry_run_sends_nothing(quirks, sparkhelpers_bin):
    quirks.requests.clear()
    r = subprocess.run([*sparkhelpers_bin, "bench", "run", "--dry-run", "--base-url", f"http://127.0.0.1:{quirks.port}",
                        "--model", "normal", "--num-prompts", "7"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and json.loads(r.stdout)["num_prompts"] == 7 and quirks.requests == []


def _bench_cli(sparkhelpers_bin, port: int, model: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([*sparkhelpers_bin, "bench", "run", "--base-url", f"http://127.0.0.1:{port}",
                           "--backend", "openai-chat", "--num-prompts", "4", "--max-concurrency", "2",
                           "--random-input-len", "8", "--random-output-len", "5",
                           *(["--model", model] if model else []), *extra], capture_output=True, text=True, timeout=60)


def test_cli_exits_1_and_groups_the_errors_by_cause_when_requests_fail(quirks, sparkhelpers_bin):
    r = _bench_cli(sparkhelpers_bin, quirks.port, "http500")
    assert r.returncode == 1, r.stderr
    assert "4 x HTTP 500: HTTP 500: Internal Server Error" in r.stderr
    assert "4 of 4 requests failed" in r.stderr and "Traceback" not in r.stderr
    assert "Failed requests:" in r.stdout  # the result block still printed
    r = _bench_cli(sparkhelpers_bin, quirks.port, "flaky")  # every second request answers 429
    assert r.returncode == 1 and "x HTTP 429:" in r.stderr and "of 4 requests failed" in r.stderr
    assert _bench_cli(sparkhelpers_bin, quirks.port, "normal").returncode == 0


def test_cli_non_json_model_list_is_one_clear_line(sparkhelpers_bin):
    """A login page or another web service on the port: one line, exit 1, no traceback."""
    import http.server

    class Html(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = b"<html><body>Sign in</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Html)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        r = _bench_cli(sparkhelpers_bin, server.server_address[1], "")
    finally:
        server.shutdown()
    assert r.returncode == 1
    assert "did not answer JSON: is this an OpenAI-compatible server?" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 2  # the line and its fix
