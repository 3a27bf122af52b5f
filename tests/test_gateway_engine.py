"""The gateway in front of real tiny engines (xllamacpp + SmolLM2, 1 thread each) and the truth server.

One gateway process for the module; node names n1..n6 all map to loopback. The tests run in file order: the
later ones build on the models the earlier ones started.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
import requests
from gatewaykit import (
    ENGINE,
    RELAY,
    Gateway,
    engine_cmd,
    free_port,
    pid_alive,
    sse_events,
    truth_cmd,
    usage_from_stream,
    wait_for,
    wait_http,
)

pytestmark = [pytest.mark.engine, pytest.mark.slow]
NODES = {f"n{i}": "127.0.0.1" for i in range(1, 10)}


@pytest.fixture(scope="module")
def direct_engine():
    pytest.importorskip("xllamacpp", reason="the engine extra is not installed (make venv)")
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ENGINE), str(port), "2", "direct"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={k: v for k, v in os.environ.items() if k != "API_KEY_FILE"})
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/health", 120, proc)
    wait_for(lambda: requests.get(url + "/health", timeout=2).status_code == 200, 120)
    yield url
    proc.terminate()
    proc.wait(20)


@pytest.fixture(scope="module")
def gw(tmp_path_factory, direct_engine):
    state = tmp_path_factory.mktemp("gateway-state")
    launches = state / "launches-a.txt"
    record = state / "relay.jsonl"
    a_cmd = ["bash", "-c", f'echo start >> {launches}; exec "$0" "$@"', *engine_cmd("a")]
    models = {
        "a": {"cmd": a_cmd, "placement": [["n1"]], "aliases": ["small"]},
        "b": {"cmd": engine_cmd("b"), "placement": [["n1"]]},
        "c": {"cmd": engine_cmd("c"), "placement": [["n2"]], "ttl": 8},
        "rec": {"cmd": [sys.executable, str(RELAY), "${PORT}", direct_engine, str(record)], "placement": [["n3"]]},
        "t": {"cmd": truth_cmd("--ttft-ms", "20", "--itl-ms", "10"), "placement": [["n4"]], "health": "/v1/models"},
        "slow": {"cmd": ["bash", "-c", 'sleep 3; exec "$0" "$@"', *truth_cmd()], "placement": [["n5"]],
                 "health": "/v1/models", "cold_start_wait": 1},
        "rep": {"cmd": truth_cmd("--ttft-ms", "10", "--itl-ms", "200"), "placement": [["n6"], ["n7"]],
                "health": "/v1/models", "concurrency": 2},
        "pre": {"cmd": truth_cmd(), "placement": [["n8"]], "health": "/v1/models", "preload": True},
        "emb": {"cmd": engine_cmd("emb", parallel=1), "placement": [["n9"]], "env": {"ENGINE_EMBEDDINGS": "mean"}},
    }
    g = Gateway(state, models, nodes=NODES).start()
    g.launches, g.record = launches, record
    g.key = g.create_key("alice")
    g.limited = g.create_key("bob", "--models", "a")
    yield g
    code = g.stop()
    assert code == 0, g.log.read_text()[-2000:]


def _pid(gw: Gateway, replica: str) -> int | None:
    return next((r["pid"] for r in gw.running() if r["replica"] == replica and r["state"] == "ready"), None)


def _records(gw: Gateway) -> list[dict]:
    return [json.loads(line) for line in gw.record.read_text().splitlines()] if gw.record.exists() else []


def _next_record(gw: Gateway, seen: int) -> dict:
    """What the engine sent for the request after the first ``seen`` ones (the relay writes it when done)."""
    return wait_for(lambda: len(_records(gw)) > seen and _records(gw)[seen], timeout=10)


def test_stream_is_the_engines_stream_chunk_for_chunk(gw):
    seen = len(_records(gw))
    r = gw.chat(gw.key, "rec", "Name three colours.", max_tokens=12, stream=True, include_usage=True)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/event-stream")
    got = b"".join(r.iter_content(chunk_size=None))
    sent = _next_record(gw, seen)
    engine_bytes = b"".join(base64.b64decode(c) for c in sent["chunks"])
    assert got == engine_bytes  # byte for byte, so event for event
    assert sse_events(got) == sse_events(engine_bytes) and len(sse_events(got)) >= 5
    assert usage_from_stream(got)["completion_tokens"] == 12


def test_the_usage_row_is_written_before_the_client_gets_a_byte_and_while_the_engine_works(gw):
    """Write-ahead without a wait: the request goes upstream at once, its row is committed meanwhile, and nothing
    reaches the client before the commit. A writer holding the database shows both orders, and that the gateway
    still answers meanwhile (the commit waits on the ledger's thread, not on the event loop)."""
    assert gw.chat(gw.key, "t", max_tokens=2).status_code == 200  # started and warm
    engine = next(r["proxy"] for r in gw.running() if r["replica"] == "t")
    served = len(requests.get(engine + "/requests", timeout=10).json())
    db = sqlite3.connect(str(gw.state_dir / "gateway" / "gateway.db"), isolation_level=None)
    first_byte: list[float] = []

    def client() -> None:
        r = gw.chat(gw.key, "t", max_tokens=4, stream=True)
        next(r.iter_content(chunk_size=None))
        first_byte.append(time.perf_counter())
        b"".join(r.iter_content(chunk_size=None))

    db.execute("BEGIN EXCLUSIVE")  # the gateway's commit of the row now waits for us
    t = threading.Thread(target=client)
    t.start()
    time.sleep(0.5)
    health = requests.get(gw.url + "/health", timeout=5)  # the loop is not the one waiting for the database
    time.sleep(1.0)
    released = time.perf_counter()
    db.execute("ROLLBACK")
    t.join(30)
    db.close()
    assert health.status_code == 200
    assert first_byte and first_byte[0] > released, "the client got a byte before its usage row was committed"
    arrived = requests.get(engine + "/requests", timeout=10).json()[served:]
    assert arrived and arrived[0]["arrival"] < released, "the request waited for its row before going upstream"


def test_usage_event_is_stripped_when_the_client_did_not_ask(gw):
    seen = len(_records(gw))
    r = gw.chat(gw.key, "rec", "Name three colours.", max_tokens=6, stream=True)
    got = sse_events(b"".join(r.iter_content(chunk_size=None)))
    sent = _next_record(gw, seen)
    assert json.loads(sent["request"])["stream_options"] == {"include_usage": True}  # asked upstream
    engine = sse_events(b"".join(base64.b64decode(c) for c in sent["chunks"]))
    assert got == [e for e in engine if b'"choices":[]' not in e] and len(got) == len(engine) - 1
    assert usage_from_stream(b"\n\n".join(got)) is None and got[-1] == b"data: [DONE]"


def test_models_list_aliases_and_auth(gw):
    assert requests.get(gw.url + "/v1/models", timeout=5).status_code == 401
    ids = [m["id"] for m in requests.get(gw.url + "/v1/models", headers={"Authorization": f"Bearer {gw.key}"},
                                         timeout=5).json()["data"]]
    assert ids == ["a", "b", "c", "rec", "t", "slow", "rep", "pre", "emb"]
    mine = requests.get(gw.url + "/v1/models", headers={"Authorization": f"Bearer {gw.limited}"}, timeout=5).json()
    assert [m["id"] for m in mine["data"]] == ["a"]
    r = gw.chat("sk-spark-wrong", "a")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = gw.chat(gw.limited, "b")
    assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"
    r = gw.chat(gw.key, "nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    user = {"Authorization": f"Bearer {gw.key}"}
    assert requests.get(gw.url + "/running", headers=user, timeout=5).status_code == 403


def test_embeddings_end_to_end_with_usage_counted(gw):
    """/v1/embeddings through the gateway to llama.cpp's embedding server (SmolLM2, mean pooling): the vectors
    are the engine's own, and the prompt tokens it reports are what the key is charged."""
    inputs = ["The sea is blue.", "Gateways count tokens.", "x"]
    before = _usage(gw, "alice", "emb")
    r = requests.post(gw.url + "/v1/embeddings", json={"model": "emb", "input": inputs},
                      headers={"Authorization": f"Bearer {gw.key}"}, timeout=120)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [d["index"] for d in body["data"]] == [0, 1, 2] and {len(d["embedding"]) for d in body["data"]} == {576}
    engine = next(row["proxy"] for row in gw.running() if row["replica"] == "emb")
    internal = (gw.state_dir / "gateway" / "internal.key").read_text().strip()
    direct = requests.post(engine + "/v1/embeddings", json={"model": "emb", "input": inputs},
                           headers={"Authorization": f"Bearer {internal}"}, timeout=120).json()
    assert [d["embedding"] for d in body["data"]] == [d["embedding"] for d in direct["data"]]
    prompt = body["usage"]["prompt_tokens"]
    assert prompt == direct["usage"]["prompt_tokens"] and prompt >= len(inputs)
    after = _usage(gw, "alice", "emb")
    assert (after["requests"] - before["requests"], after["prompt_tokens"] - before["prompt_tokens"],
            after["completion_tokens"] - before["completion_tokens"]) == (1, prompt, 0)
    metrics = requests.get(gw.url + "/metrics", timeout=5).text
    assert f'sparkhelpers_gateway_tokens_total{{key="alice",kind="prompt",model="emb"}} {after["prompt_tokens"]:.1f}' \
        in metrics


def _usage(gw: Gateway, key: str, model: str) -> dict:
    rows = json.loads(gw.cli("usage", "--by", "key,model", "--json").stdout)
    return next((r for r in rows if r.get("key") == key and r.get("model") == model),
                {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0})


def test_two_simultaneous_first_requests_start_the_model_once(gw):
    results = []

    def ask() -> None:
        results.append(gw.chat(gw.key, "small", max_tokens=4))  # through the alias

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status_code for r in results] == [200, 200], [r.text for r in results]
    assert gw.launches.read_text().splitlines() == ["start"]
    assert all(r.json()["usage"]["completion_tokens"] == 4 for r in results)
    metrics = requests.get(gw.url + "/metrics", timeout=5).text
    assert 'sparkhelpers_gateway_model_loads_total{model="a"} 1.0' in metrics


def test_two_models_on_two_nodes_serve_at_once(gw):
    assert gw.chat(gw.key, "a", max_tokens=1).status_code == 200
    pid_a = _pid(gw, "a")
    assert gw.chat(gw.key, "c", max_tokens=3).status_code == 200
    assert {r["replica"] for r in gw.running() if r["state"] == "ready"} >= {"a", "c"}
    both = []
    threads = [threading.Thread(target=lambda m=m: both.append(gw.chat(gw.key, m, max_tokens=6).status_code))
               for m in ("a", "c")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert both == [200, 200] and _pid(gw, "a") == pid_a


def test_a_request_for_b_stops_a_which_holds_its_node(gw):
    assert gw.chat(gw.key, "c", max_tokens=1).status_code == 200  # on n2: must survive the swap on n1
    assert gw.chat(gw.key, "a", max_tokens=1).status_code == 200
    pid_a = _pid(gw, "a")
    assert pid_a and pid_alive(pid_a)
    r = gw.chat(gw.key, "b", max_tokens=3)
    assert r.status_code == 200, r.text
    states = {row["replica"]: row["state"] for row in gw.running()}
    assert states.get("b") == "ready" and "a" not in states
    assert not pid_alive(pid_a)
    metrics = requests.get(gw.url + "/metrics", timeout=5).text
    assert 'sparkhelpers_gateway_model_evictions_total{model="a",reason="swap"} 1.0' in metrics
    assert 'model_evictions_total{model="c",reason="swap"}' not in metrics  # n2 was not needed (c may hit its ttl)


def test_ttl_expiry_empties_running_and_ends_the_engine(gw):
    assert gw.chat(gw.key, "c", max_tokens=1).status_code == 200
    pid_c = _pid(gw, "c")
    assert pid_c
    wait_for(lambda: "c" not in {r["replica"] for r in gw.running()}, timeout=30)
    wait_for(lambda: not pid_alive(pid_c), timeout=10)


def test_engine_killed_mid_stream_gives_a_clean_error_and_the_next_request_restarts_it(gw):
    assert gw.chat(gw.key, "b", max_tokens=1).status_code == 200
    pid_b = _pid(gw, "b")
    r = gw.chat(gw.key, "b", "Write a long story about the sea.", max_tokens=400, stream=True, ignore_eos=True)
    it = r.iter_content(chunk_size=None)
    first = next(it)
    assert first.startswith(b"data: ")
    os.kill(pid_b, signal.SIGKILL)
    rest = b"".join(it)  # ends: no hang, no broken chunked encoding
    last = sse_events(first + rest)[-1]
    assert last.startswith(b"data: {\"error\"") and b"engine_failed" in last
    r2 = gw.chat(gw.key, "b", max_tokens=3)
    assert r2.status_code == 200, r2.text
    assert _pid(gw, "b") not in (None, pid_b)
    metrics = requests.get(gw.url + "/metrics", timeout=5).text
    assert 'sparkhelpers_gateway_model_failures_total{kind="died",model="b"} 1.0' in metrics


def test_client_disconnect_cancels_the_upstream_request(gw):
    truth = None
    r = gw.chat(gw.key, "t", max_tokens=100000, stream=True)
    it = r.iter_content(chunk_size=None)
    next(it)
    truth = next(row["proxy"] for row in gw.running() if row["replica"] == "t")
    r.close()  # the client goes away
    time.sleep(1.0)
    sent = requests.get(truth + "/stats", timeout=5).json()["tokens"]
    time.sleep(1.0)
    assert requests.get(truth + "/stats", timeout=5).json()["tokens"] == sent  # 10 ms per token: it stopped
    wait_for(lambda: next(row["in_flight"] for row in gw.running() if row["replica"] == "t") == 0, 5)


def test_cold_start_wait_limit_gives_503_with_retry_after(gw):
    r = gw.chat(gw.key, "slow", max_tokens=2)
    assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1
    assert r.json()["error"]["code"] == "model_loading"
    wait_for(lambda: gw.chat(gw.key, "slow", max_tokens=2).status_code == 200, timeout=30, every=0.5)


def test_replicas_take_the_fewest_in_flight_and_429_over_the_limit(gw):
    assert gw.chat(gw.key, "rep", max_tokens=1).status_code == 200  # starts both replicas
    wait_for(lambda: sum(r["state"] == "ready" for r in gw.running() if r["model"] == "rep") == 2, 30)
    codes: list[int] = []
    streams = [gw.chat(gw.key, "rep", max_tokens=15, stream=True) for _ in range(4)]  # 3 s each at 200 ms/token
    rows = {r["replica"]: r["in_flight"] for r in gw.running() if r["model"] == "rep"}
    assert rows == {"rep": 2, "rep#1": 2}
    over = gw.chat(gw.key, "rep", max_tokens=1)
    assert over.status_code == 429 and over.json()["error"]["code"] == "concurrency_limit"
    for s in streams:
        codes.append(s.status_code)
        b"".join(s.iter_content(chunk_size=None))
    assert codes == [200] * 4


def test_preload_starts_with_the_gateway_and_restarts_at_once(gw):
    pid = wait_for(lambda: _pid(gw, "pre"), timeout=30)
    os.kill(pid, signal.SIGKILL)
    new = wait_for(lambda: (p := _pid(gw, "pre")) and p != pid and p, timeout=30)  # no request needed
    assert pid_alive(new) and not pid_alive(pid)


def test_admin_surface_logs_and_unload(gw):
    logs = requests.get(gw.url + "/logs/stream/b?no-history", headers=gw.control, stream=True, timeout=10)
    assert logs.status_code == 200
    logs.close()
    hist = requests.get(gw.url + "/logs/stream/rec", headers=gw.control, stream=True, timeout=10)
    assert hist.status_code == 200
    hist.close()
    r = requests.post(gw.url + "/api/models/unload/t", headers=gw.control, timeout=30)
    assert r.status_code == 200 and r.json()["unloaded"] == ["t"]
    assert "t" not in {row["replica"] for row in gw.running()}
    r = requests.post(gw.url + "/api/models/unload", headers=gw.control, timeout=60)
    assert r.status_code == 200 and gw.running() == []
    assert requests.get(gw.url + "/health", timeout=5).text == "OK"


@pytest.fixture(scope="module")
def closing_gw(tmp_path_factory):
    """A gateway in front of a server that closes each connection 300 ms after a stream, unannounced."""
    model = {"cmd": truth_cmd("--ttft-ms", "1", "--itl-ms", "150", "--close-after-stream-ms", "300"),
             "placement": [["n1"]], "health": "/v1/models"}
    g = Gateway(tmp_path_factory.mktemp("gateway-closing"), {"closer": model}, nodes={"n1": "127.0.0.1"}).start()
    g.key = g.create_key("carol")
    yield g
    g.stop()


def test_a_connection_the_engine_closed_after_a_stream_is_not_the_clients_problem(closing_gw):
    gw = closing_gw
    for i in range(3):
        s = gw.chat(gw.key, "closer", max_tokens=1, stream=True)
        assert s.status_code == 200 and b"data: [DONE]" in b"".join(s.iter_content(chunk_size=None))
        # at once: the gateway sends it on the pooled connection, which the server closes 300 ms later, mid-answer
        r = gw.chat(gw.key, "closer", max_tokens=4)
        assert r.status_code == 200, f"round {i}: {r.status_code} {r.text}"
        assert r.json()["usage"]["completion_tokens"] == 4
