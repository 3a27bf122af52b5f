"""The metric definitions, the stream parser and the workload generators, as pure functions."""

from __future__ import annotations

import math

import pytest

from sparkhelpers.bench import client, datasets, metrics
from sparkhelpers.bench.metrics import RequestRecord
from sparkhelpers.errors import UsageError


def rec(i=0, start=0.0, ttft=0.2, itl=(0.02, 0.02, 0.02), out=4, prompt=10, ok=True) -> RequestRecord:
    r = RequestRecord(i, prompt, out, start=start, ttft=ttft, itl=list(itl), output_tokens=out, success=ok)
    r.latency = ttft + sum(itl)
    return r


def test_percentile_is_numpy_linear():
    # numpy.percentile([1, 2, 3, 4], q) for q = 50, 90, 99 and a single value
    assert metrics.percentile([4, 1, 3, 2], 50) == pytest.approx(2.5)
    assert metrics.percentile([1, 2, 3, 4], 90) == pytest.approx(3.7)
    assert metrics.percentile([1, 2, 3, 4], 99) == pytest.approx(3.97)
    assert metrics.percentile([7.0], 99) == 7.0
    assert metrics.percentile([], 99) == 0.0
    assert metrics.std([1, 2, 3, 4]) == pytest.approx(1.118033988)  # population std (ddof=0)


def test_tpot_excludes_the_first_token_and_needs_two_tokens():
    r = rec(ttft=0.2, itl=(0.02,) * 9, out=10)
    assert r.tpot() == pytest.approx(0.02)
    assert rec(itl=(), out=1).tpot() == 0.0


def test_tpot_uses_token_count_not_chunk_count():
    # 3 chunks carried 9 tokens (multi-token chunks): ITL is per chunk, TPOT per token
    r = rec(ttft=0.1, itl=(0.08, 0.08), out=9)
    assert r.tpot() == pytest.approx(0.16 / 8)
    m = metrics.compute_metrics([r], 1.0)
    assert m["mean_itl_ms"] == pytest.approx(80.0)
    assert m["mean_tpot_ms"] == pytest.approx(20.0)


def test_compute_metrics_keys_and_values_match_vllm():
    rs = [rec(0, start=0.0), rec(1, start=0.1, ttft=0.4), rec(2, ok=False)]
    rs[2].error = "HTTP 500: boom"
    m = metrics.compute_metrics(rs, 2.0, percentiles=[50, 99.9])
    assert m["completed"] == 2 and m["failed"] == 1
    assert m["total_input_tokens"] == 20 and m["total_output_tokens"] == 8
    assert m["request_throughput"] == 1.0 and m["output_throughput"] == 4.0 and m["total_token_throughput"] == 14.0
    assert m["mean_ttft_ms"] == pytest.approx(300.0) and m["median_ttft_ms"] == pytest.approx(300.0)
    assert m["std_ttft_ms"] == pytest.approx(100.0)
    assert "p99.9_itl_ms" in m and "p50_e2el_ms" in m and m["request_goodput"] is None
    assert m["max_concurrent_requests"] == 2


def test_only_selected_metrics_get_keys():
    m = metrics.compute_metrics([rec()], 1.0, percentile_metrics=["ttft"], percentiles=[99])
    assert "p99_ttft_ms" in m and "mean_e2el_ms" not in m and "mean_itl_ms" not in m


def test_goodput_counts_requests_meeting_every_slo():
    fast, slow_ttft, one_token = rec(0, ttft=0.1), rec(1, ttft=0.6), rec(2, ttft=0.1, itl=(), out=1)
    slo = metrics.parse_goodput(["ttft:500 tpot:25"])
    assert slo == {"ttft": 500.0, "tpot": 25.0}
    m = metrics.compute_metrics([fast, slow_ttft, one_token], 2.0, goodput_slo_ms=slo)
    assert m["request_goodput"] == pytest.approx(1.0)  # fast and one_token (TPOT 0) are good


@pytest.mark.parametrize("bad", ["ttft", "foo:1", "ttft:abc", "tpot:-1"])
def test_goodput_rejects_bad_slos(bad):
    with pytest.raises(UsageError):
        metrics.parse_goodput([bad])


def test_percentile_flags_are_validated():
    assert metrics.parse_percentiles("50,99.9") == [50.0, 99.9]
    assert metrics.percentile_label(99.9) == "99.9" and metrics.percentile_label(99.0) == "99"
    for bad in ("", "0", "100", "x"):
        with pytest.raises(UsageError):
            metrics.parse_percentiles(bad)
    with pytest.raises(UsageError):
        metrics.parse_percentile_metrics("ttft,latency")


def test_max_output_tokens_per_s_buckets_chunk_times_from_the_first_start():
    a = rec(0, start=0.0, ttft=0.5, itl=(0.2, 0.2, 0.2), out=4)  # chunks at 0.5 0.7 0.9 1.1
    b = rec(1, start=0.1, ttft=0.5, itl=(0.2,), out=2)  # chunks at 0.6 0.8
    assert metrics.max_output_tokens_per_s([a, b]) == 5.0


def test_max_concurrent_requests_is_an_exact_sweep():
    rs = [rec(0, start=0.0, ttft=1.0, itl=()), rec(1, start=0.5, ttft=1.0, itl=()),
          rec(2, start=1.0, ttft=1.0, itl=())]  # the first ends exactly when the third starts
    assert metrics.max_concurrent_requests(rs) == 2


def feed_all(messages, chat=True, start=10.0):
    r = RequestRecord(0, 5, 16, start=start)
    s = client.StreamState(r, chat=chat)
    for ts, m in messages:
        s.feed(m, ts)
    return s.finish()


def chat_chunk(content=None, finish=None, role=False):
    delta = {"role": "assistant", "content": content} if role else {"content": content}
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def test_stream_vllm_shape_finish_on_last_content_and_usage():
    r = feed_all([(10.1, chat_chunk("", role=True)), (10.2, chat_chunk("Hi")), (10.25, chat_chunk(" there", "stop")),
                  (10.26, {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2}}),
                  (10.27, client.DONE)])
    assert r.success and r.finish_reason == "stop"
    assert r.ttft == pytest.approx(0.1)  # vLLM: the role chunk carries choices, so it is TTFT
    assert r.ttft_content == pytest.approx(0.2)
    assert r.latency == pytest.approx(0.25)  # the usage chunk is not part of E2EL
    assert r.itl == pytest.approx([0.1, 0.05])
    assert (r.output_tokens, r.token_count_source) == (2, "usage")
    assert (r.prompt_len, r.prompt_len_source) == (7, "usage")


def test_stream_llama_cpp_shape_finish_on_empty_chunk():
    r = feed_all([(10.1, chat_chunk(None, role=True)), (10.2, chat_chunk("a")), (10.3, chat_chunk("b")),
                  (10.31, chat_chunk(None, "length")), (10.32, {"choices": [], "usage": {"completion_tokens": 2}})])
    assert r.success and r.finish_reason == "length" and r.output_tokens == 2
    assert r.latency == pytest.approx(0.31)


def test_stream_without_usage_counts_content_chunks():
    r = feed_all([(10.1, {"choices": [{"text": "a", "finish_reason": None}]}),
                  (10.2, {"choices": [{"text": "b", "finish_reason": "length"}]})], chat=False)
    assert r.success and (r.output_tokens, r.token_count_source) == (2, "stream_chunks")
    assert r.prompt_len == 5 and r.prompt_len_source == "approx_words"


def test_empty_200_stream_is_a_failure():
    r = feed_all([(10.1, client.DONE)])
    assert not r.success and r.error.startswith("empty:")


def test_role_only_then_done_is_a_failure():
    r = feed_all([(10.1, chat_chunk("", role=True)), (10.2, client.DONE)])
    assert not r.success and r.error.startswith("empty:")


def test_stream_without_finish_reason_is_a_failure():
    r = feed_all([(10.1, chat_chunk("a")), (10.2, chat_chunk("b"))])
    assert not r.success and r.error.startswith("truncated:")


def test_error_event_in_stream_is_a_failure():
    r = feed_all([(10.1, chat_chunk("a")), (10.2, {"error": {"message": "out of memory"}})])
    assert not r.success and "out of memory" in r.error


def test_parse_sse_line():
    assert client.parse_sse_line(b"data: [DONE]\n") is client.DONE
    assert client.parse_sse_line(b": keep-alive\n") is None and client.parse_sse_line(b"\n") is None
    assert client.parse_sse_line(b'data: {"a": 1}') == {"a": 1}
    assert "_malformed" in client.parse_sse_line(b"data: {oops")


def test_payload_asks_for_usage_and_obeys_backend():
    spec = client.LoadSpec(base_url="http://127.0.0.1:1", model="m", backend="openai-chat", ignore_eos=True)
    body = client.build_payload(spec, datasets.Prompt("hi", 1, 8))
    assert body["stream_options"] == {"include_usage": True} and body["ignore_eos"] is True
    assert body["messages"][0]["content"] == "hi" and body["max_completion_tokens"] == 8
    assert spec.url == "http://127.0.0.1:1/v1/chat/completions"
    assert client.normalize_base_url("http://h:8000/v1/") == "http://h:8000"
    assert client.normalize_backend("vllm") == "openai"
    with pytest.raises(UsageError):
        client.normalize_backend("tgi")


def test_arrival_schedule():
    assert client.arrival_schedule(3, math.inf, 1.0, 0) == [0.0, 0.0, 0.0]
    s = client.arrival_schedule(200, 10.0, 1.0, 0)
    assert s[-1] == pytest.approx(20.0) and s == sorted(s)
    bursty, smooth = client.arrival_schedule(200, 10.0, 0.2, 1), client.arrival_schedule(200, 10.0, 50.0, 1)
    gaps = lambda xs: [b - a for a, b in zip(xs, xs[1:], strict=False)]  # noqa: E731
    assert metrics.std(gaps(bursty)) > 3 * metrics.std(gaps(smooth))


def test_random_prompts_lengths_and_prefix():
    ps = datasets.random_prompts(50, 100, 20, range_ratio=0.5, prefix_len=10, seed=1)
    assert all(60 <= p.prompt_len <= 160 and 10 <= p.output_len <= 30 for p in ps)
    assert all(len(p.text.split()) == p.prompt_len for p in ps)
    assert len({p.text.split()[:10].__str__() for p in ps}) == 1  # shared prefix
    assert datasets.random_prompts(5, 8, 4, seed=3) == datasets.random_prompts(5, 8, 4, seed=3)
    with pytest.raises(UsageError):
        datasets.random_prompts(1, 8, 4, range_ratio=1.0)


def test_prefix_repetition_shares_prefixes():
    ps = datasets.prefix_repetition_prompts(20, prefix_len=8, suffix_len=4, num_prefixes=4, output_len=5)
    assert len(ps) == 20 and len({" ".join(p.text.split()[:8]) for p in ps}) == 4
    assert all(p.prompt_len == 12 and p.output_len == 5 for p in ps)


def test_health_judgement():
    ok = {"cpu_pct": 20.0, "event_loop_lag_p99_ms": 2.0, "dispatch_lag_p99_ms": 3.0}
    assert client.judge_health(ok, 200.0) == []
    busy = {"cpu_pct": 80.0, "event_loop_lag_p99_ms": 30.0, "dispatch_lag_p99_ms": 40.0}
    reasons = client.judge_health(busy, 200.0)
    assert len(reasons) == 3 and "CPU" in reasons[0] and "dispatch" in reasons[1]
