"""The gateway's pure parts: models file, SSE tap, keys store, quotas, metrics relabelling, exports, CLI."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess

import pytest
import yaml

from sparkhelpers.errors import SparkError, UsageError
from sparkhelpers.gateway import export, keys, metrics, models_file, quotas, sse


def parse(doc: dict) -> models_file.GatewayConfig:
    return models_file.parse(doc, "test.yaml")


def test_models_file_assigns_ports_and_resolves_aliases():
    cfg = parse({"listen": "0.0.0.0:4100", "start_port": 6000, "models": {
        "a": {"cmd": "serve --port ${PORT}", "placement": [["n1"], ["n2"]], "aliases": ["small"]},
        "b": {"recipe": "qwen3", "placement": [["n1", "n2"]], "port": 6001, "ttl": 30, "group": "big"}}})
    assert (cfg.listen_host, cfg.listen_port) == ("0.0.0.0", 4100)
    assert [(r.id, r.nodes, r.port) for r in cfg.models["a"].replicas] == [("a", ("n1",), 6000),
                                                                          ("a#1", ("n2",), 6002)]
    assert cfg.models["b"].replicas[0].port == 6001 and cfg.models["a"].cmd == ["serve", "--port", "${PORT}"]
    assert cfg.resolve("small").name == "a" and cfg.resolve("nope") is None


@pytest.mark.parametrize("doc, needle", [
    ({"models": {}}, "no model listed"),
    ({"modles": {}}, "unknown key"),
    ({"models": {"a": {"cmd": ["x"], "recipe": "r"}}}, "exactly one of recipe, cmd or tuned"),
    ({"models": {"a": {"cmd": ["x"], "tll": 3}}}, "unknown key 'tll'"),
    ({"models": {"a": {"cmd": ["x"], "ttl": "soon"}}}, "not a number"),
    ({"models": {"a": {"cmd": ["x"], "placement": [[]]}}}, "not a node set"),
    ({"models": {"a": {"cmd": ["x"], "aliases": ["b"]}, "b": {"cmd": ["y"]}}}, "also names"),
    ({"listen": "4000", "models": {"a": {"cmd": ["x"]}}}, "host:port"),
])
def test_models_file_errors_name_the_place_and_the_fix(doc, needle):
    with pytest.raises(UsageError) as exc:
        parse(doc)
    assert needle in exc.value.message and exc.value.fix


def test_launch_spec_recipe_passes_port_and_key_file_by_environment():
    from sparkhelpers.gateway.launcher import launch_spec

    cfg = parse({"nodes": {"spark1": "10.0.0.1"},
                 "models": {"q": {"recipe": "qwen3", "placement": [["spark1", "spark2"]]}}})
    spec = launch_spec(cfg, cfg.models["q"], cfg.models["q"].replicas[0], "/state/internal.key")
    assert spec.argv[-4:] == ["--recipe", "qwen3", "--nodes", "spark1,spark2"]
    assert spec.env["VLLM_PORT"] == "5800" and spec.env["API_KEY_FILE"] == "/state/internal.key"
    assert spec.base_url == "http://10.0.0.1:5800" and spec.health_url == "http://10.0.0.1:5800/health"
    assert not any("key" in a.lower() and a != "--recipe" for a in spec.argv if "internal" in a)


def events(*objs) -> bytes:
    return b"".join(b"data: " + json.dumps(o, separators=(",", ":")).encode() + b"\n\n" for o in objs) + \
        b"data: [DONE]\n\n"


STREAM = events({"choices": [{"delta": {"role": "assistant", "content": None}}]},
                {"choices": [{"delta": {"content": "Hi"}}]}, {"choices": [{"delta": {"content": " there"}}]},
                {"choices": [{"delta": {}, "finish_reason": "stop"}]},
                {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}})


@pytest.mark.parametrize("cut", [1, 5, 17, 64, len(STREAM)])
def test_sse_tap_passes_bytes_through_and_reads_usage(cut):
    tap = sse.SSETap(strip_usage=False)
    chunks = [STREAM[i:i + cut] for i in range(0, len(STREAM), cut)]
    out = b"".join(tap.feed(c) for c in chunks) + tap.flush()
    assert out == STREAM
    assert (tap.usage.prompt, tap.usage.completion, tap.content_events) == (7, 2, 2)


@pytest.mark.parametrize("cut", [3, 40, len(STREAM)])
def test_sse_tap_strips_only_the_usage_event_it_added(cut):
    tap = sse.SSETap(strip_usage=True)
    out = b"".join(tap.feed(STREAM[i:i + cut]) for i in range(0, len(STREAM), cut)) + tap.flush()
    assert b'"usage"' not in out and out.endswith(b"data: [DONE]\n\n")
    assert out == STREAM.replace(b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2,'
                                 b'"total_tokens":9}}\n\n', b"")
    assert tap.usage.completion == 2


def test_sse_tap_keeps_content_when_usage_rides_on_the_last_chunk():
    stream = events({"choices": [{"delta": {"content": "x"}, "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": 3, "completion_tokens": 1}})
    tap = sse.SSETap(strip_usage=True)
    out = tap.feed(stream) + tap.flush()
    assert b'"content":"x"' in out and b"usage" not in out and tap.usage.completion == 1


def test_sse_tap_fast_path_counts_events_per_chunk_and_spaced_json():
    """Whole events per chunk (the engines' usual shape) take the fast path; spaced JSON (Python's json.dumps, as
    the emulated engine writes) counts as content too; the usage event still lands, split or whole."""
    token = b'data: {"choices": [{"delta": {"content": "a"}}]}\n\n'
    usage = b'data: {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 3}}\n\n'
    tap = sse.SSETap(strip_usage=False)
    chunks = [token, token + token, usage[:20], usage[20:], b"data: [DONE]\n\n"]
    assert b"".join(tap.feed(c) for c in chunks) + tap.flush() == b"".join(chunks)
    assert tap.first_token and tap.content_events == 3 and (tap.usage.prompt, tap.usage.completion) == (4, 3)
    err = sse.SSETap(strip_usage=False)
    err.feed(token)
    err.feed(b'data: {"error": {"message": "boom"}}\n\n')
    assert err.error_event


def test_keys_are_hashed_in_a_private_wal_database(tmp_path):
    store = keys.Store(keys.db_path(tmp_path))
    info, secret = store.create("alice", models=["a"], rpm=5)
    assert secret.startswith("sk-spark-") and len(secret) > 40
    path = keys.db_path(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    raw = b"".join(p.read_bytes() for p in path.parent.glob("gateway.db*"))
    assert secret.encode() not in raw and secret[9:25].encode() not in raw
    assert store.by_hash()[keys.hash_key(secret)].name == "alice"
    with pytest.raises(SparkError, match="exists"):
        store.create("alice")
    key_id, new = store.rotate("alice")
    assert key_id == info.id and keys.hash_key(secret) not in store.by_hash() and keys.hash_key(new) in store.by_hash()
    store.revoke("alice")
    assert store.by_hash() == {} and store.create("alice")[0].id != info.id  # the name is free again


def test_usage_is_written_ahead_and_recovered(tmp_path):
    store = keys.Store(keys.db_path(tmp_path))
    info, _ = store.create("bob")
    done = store.begin(info, "m")
    store.finish(done, info, "m", prompt=10, completion=5, error=False, latency_ms=12.0, ttft_ms=3.0)
    store.begin(info, "m")  # the gateway dies here
    store.close()
    again = keys.Store(keys.db_path(tmp_path))
    assert again.recover() == 1
    (row,) = again.usage_rows()
    assert (row["requests"], row["errors"], row["prompt_tokens"], row["completion_tokens"]) == (2, 1, 10, 5)
    assert again.tokens_today(info.id) == 15


def test_quota_rpm_tpm_parallel_and_daily_budget():
    q = quotas.Quotas(lambda _id: 95)
    k = keys.KeyInfo(id="k", name="k", rpm=2, tpm=100, max_parallel=5, tokens_per_day=100)
    q.admit(k, now=0.0)
    q.done(k, 3, now=0.0)
    q.admit(k, now=1.0)
    with pytest.raises(quotas.QuotaExceeded) as exc:  # request 3 within the minute
        q.admit(k, now=2.0)
    assert exc.value.limit == "rpm" and exc.value.retry_after == 58
    q.done(k, 0, now=2.0)
    with pytest.raises(quotas.QuotaExceeded) as exc:  # 95 (today so far) + 3 + 2 >= 100 per day
        q.done(k, 2, now=61.0)
        q.admit(k, now=61.0)
    assert exc.value.limit == "tokens_per_day"
    par = keys.KeyInfo(id="p", name="p", max_parallel=1)
    q.admit(par)
    with pytest.raises(quotas.QuotaExceeded, match="in parallel"):
        q.admit(par)


def test_relabel_adds_labels_and_keeps_meta_once():
    text = "# HELP x_total X\n# TYPE x_total counter\nx_total 3\ny{a=\"1\"} 2.5\n"
    seen: set[str] = set()
    one = metrics.relabel(text, {"model": "m", "replica": "m"}, seen)
    two = metrics.relabel(text, {"model": "n", "replica": "n#1"}, seen)
    assert 'x_total{model="m",replica="m"} 3' in one and 'y{model="m",replica="m",a="1"} 2.5' in one
    assert "# HELP" not in two and 'x_total{model="n",replica="n#1"} 3' in two


def test_litellm_export_has_no_key_and_groups_replicas():
    cfg = parse({"models": {"a": {"cmd": ["x"], "placement": [["n1"], ["n2"]], "aliases": ["small"]}}})
    doc = yaml.safe_load(export.litellm_yaml(cfg, "http://127.0.0.1:4000"))
    (entry,) = doc["model_list"]
    assert entry["litellm_params"] == {"model": "openai/a", "api_key": "os.environ/SPARK_GATEWAY_KEY",
                                       "api_base": "http://127.0.0.1:4000/v1"}
    assert doc["router_settings"]["model_group_alias"] == {"small": "a"}
    per = export.litellm_config(cfg, "http://x", per_engine=True)
    assert [m["litellm_params"]["api_base"] for m in per["model_list"]] == ["http://n1:5800/v1", "http://n2:5801/v1"]


def test_keys_cli_prints_the_key_once_and_never_lists_it(sparkhelpers_bin, tmp_path):
    r = subprocess.run([*sparkhelpers_bin, "keys", "create", "carol", "--models", "a,b", "--rpm", "10"],
                       capture_output=True, text=True, check=True)
    secret = r.stdout.strip()
    assert secret.startswith("sk-spark-") and secret not in r.stderr and "carol" in r.stderr
    listed = subprocess.run([*sparkhelpers_bin, "keys", "list", "--json"], capture_output=True, text=True, check=True)
    assert secret not in listed.stdout and json.loads(listed.stdout)[0]["models"] == ["a", "b"]
    bad = subprocess.run([*sparkhelpers_bin, "keys", "revoke", "nobody"], capture_output=True, text=True)
    assert bad.returncode == 1 and "no active key named nobody" in bad.stderr
    db = keys.db_path(__import__("pathlib").Path(os.environ["SPARK_STATE_DIR"]))
    assert sqlite3.connect(db).execute("SELECT count(*) FROM keys").fetchone()[0] == 1


def test_gateway_unit_and_dry_run(sparkhelpers_bin, tmp_path):
    models = tmp_path / "models.yaml"
    models.write_text(yaml.safe_dump({"models": {"q": {"recipe": "qwen3-0.6b", "placement": [["spark1"]]},
                                                 "h": {"recipe": "smollm2-135m", "placement": [["head"]]}}},
                                     sort_keys=False))
    unit = subprocess.run([*sparkhelpers_bin, "gateway", "unit", "--models", str(models)], capture_output=True,
                          text=True, check=True).stdout
    assert f"gateway run --models {models}" in unit and "KillMode=mixed" in unit and "[Install]" in unit
    dry = subprocess.run([*sparkhelpers_bin, "gateway", "run", "--dry-run", "--models", str(models)],
                         capture_output=True, text=True, check=True).stdout
    assert "q on spark1: http://spark1:5800" in dry and "cluster run --recipe qwen3-0.6b --nodes spark1" in dry
    assert "serves Qwen/Qwen3-0.6B" in dry  # the recipe's served name: the model the gateway asks the engine for
    assert "h on head: http://127.0.0.1:5801" in dry  # the topology's head: this machine
    assert "cluster run --recipe smollm2-135m --nodes head" in dry
    models.write_text("models: {q: {recipe: no-such-recipe}}\n")
    r = subprocess.run([*sparkhelpers_bin, "gateway", "check", "--models", str(models)], capture_output=True, text=True)
    assert r.returncode == 2 and "models.q.recipe: no recipe file or preset named no-such-recipe" in r.stderr, r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: {q: {recipe: r, ttl: -1}}\n")
    r = subprocess.run([*sparkhelpers_bin, "gateway", "check", "--models", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2 and "models.q.ttl" in r.stderr and "fix:" in r.stderr


def test_export_llama_swap_reuses_the_recipe_export_per_node_set(sparkhelpers_bin, tmp_path):
    from sparkhelpers.recipes.deploy import LLAMA_SWAP_KEYS, LLAMA_SWAP_MODEL_KEYS

    models = tmp_path / "models.yaml"
    models.write_text(yaml.safe_dump({"nodes": {"spark2": "10.0.0.2"}, "models": {
        "q": {"recipe": "qwen3-0.6b", "placement": [["head"], ["spark2"]], "ttl": 300, "group": "big"},
        "q2": {"recipe": "qwen3-0.6b", "placement": [["spark2", "head"]], "group": "big", "concurrency": 4},
        "t": {"cmd": ["llama-server", "--port", "${PORT}", "-m", "/m/a b.gguf"], "ttl": 60, "health": "none"}}},
        sort_keys=False))
    r = subprocess.run([*sparkhelpers_bin, "gateway", "export", "--llama-swap", "--models", str(models)],
                       capture_output=True, text=True, check=True)
    doc = yaml.safe_load(r.stdout)
    assert set(doc) <= set(LLAMA_SWAP_KEYS) and doc["startPort"] == 5800
    assert all(set(m) <= set(LLAMA_SWAP_MODEL_KEYS) for m in doc["models"].values())
    q, q2, t = (doc["models"][n] for n in ("q", "q2", "t"))
    assert q["cmd"] == "sparkhelpers cluster run --recipe qwen3-0.6b --nodes head --port ${PORT}"
    assert q["cmdStop"] == "kill -TERM ${PID}" and q["ttl"] == 300 and q["useModelName"] == "Qwen/Qwen3-0.6B"
    assert q["aliases"] == ["Qwen/Qwen3-0.6B"] and "aliases" not in q2  # llama-swap refuses an alias twice
    assert q2["cmd"].startswith("sparkhelpers cluster run --recipe qwen3-0.6b --nodes spark2,head ")
    assert q2["proxy"] == "http://10.0.0.2:${PORT}" and q2["concurrencyLimit"] == 4  # rank 0 on spark2
    assert t["cmd"] == "llama-server --port ${PORT} -m '/m/a b.gguf'" and t["checkEndpoint"] == "none"
    assert doc["groups"] == {"big": {"swap": True, "exclusive": True, "members": ["q", "q2"]}}
    assert "q: llama-swap has no replicas; exported on head only" in r.stderr
    both = subprocess.run([*sparkhelpers_bin, "gateway", "export", "--models", str(models)], capture_output=True,
                          text=True)
    assert both.returncode == 2 and "choose one format" in both.stderr


def test_health_verdicts_of_a_recipe_replica(tmp_path, monkeypatch):
    """The manager's use of the multi-node rule (health.py): ranks every RANKS_EVERY_S and fatal at once, the
    1-token request only while idle, and a replica the data plane suspects checked at once (the rule's own
    SSH and HTTP calls are replaced here; the emulated-cluster test runs them for real)."""
    import asyncio

    from sparkhelpers.gateway import health, manager

    cfg = parse({"models": {"r": {"recipe": "qwen3", "placement": [["head", "w1"]], "health": "none",
                                  "upstream_model": "Qwen/Qwen3-0.6B"}}})
    key = tmp_path / "internal.key"
    key.write_text("sk-internal\n")
    answer, asked = {"ranks": [], "request": ""}, []
    monkeypatch.setattr(health, "rank_problems", lambda t: asked.append(("ranks", t)) or answer["ranks"])
    monkeypatch.setattr(health, "request_problem", lambda t: asked.append(("request", t)) or answer["request"])

    async def scenario() -> None:
        m = manager.ModelManager(cfg, tmp_path, str(key))
        rs = m.replicas["r"]
        rs.state = "ready"
        assert await m.check(rs) == (False, "")
        assert [k for k, _ in asked] == ["ranks", "request"]
        assert asked[0][1] == health.Target(rs.spec.base_url, "sk-internal", "Qwen/Qwen3-0.6B", ("head", "w1"))
        asked.clear()
        assert await m.check(rs) == (False, "") and [k for k, _ in asked] == ["request"]  # ranks: 15 s later
        rs.in_flight = 1
        asked.clear()
        assert await m.check(rs) == (False, "") and asked == []  # busy: its clients are the check
        answer["ranks"], rs.checked_ranks_at = ["rank 1 on w1 is exited (Exited (137))"], 0.0
        assert await m.check(rs) == (True, "rank 1 on w1 is exited (Exited (137))")
        answer["ranks"], rs.in_flight, rs.checked_ranks_at = [], 0, 0.0
        await m.suspect(rs, "engine for r broke off a stream")  # all fine: it serves on
        assert rs.state == "ready"
        answer["request"] = "a 1-token test request got HTTP 500: EngineCore encountered an issue"
        task = m.suspect(rs, "engine for r broke off a stream")
        assert rs.state == "checking" and m.pick(cfg.models["r"]) is None  # no request goes to it meanwhile
        await task
        assert rs.state == "stopped" and rs.last_error.startswith("engine for r broke off a stream; then: a 1-token")

    asyncio.run(scenario())


def test_cluster_run_on_a_node_subset_narrows_both_fabric_twins(sparkhelpers_bin, tmp_path):
    """What the gateway runs for a replica on one worker: `cluster run --nodes W` narrows WORKER_HOST and both
    twins' lists (WORKER_IB_IP2 listed for every worker would otherwise not match the narrowed WORKER_HOST)."""
    env = {**os.environ, "WORKER_HOST": "10.0.0.2 10.0.0.3", "WORKER_IB_IP": "192.168.100.2 192.168.100.3",
           "WORKER_IB_IP2": "192.168.200.2 192.168.200.3", "HEAD_IP": "192.168.100.1", "HEAD_IP2": "192.168.200.1",
           "SPARK_STATE_DIR": str(tmp_path)}
    r = subprocess.run([*sparkhelpers_bin, "cluster", "run", "--recipe", "smollm2-135m", "--nodes", "10.0.0.3",
                        "--dry-run"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "1 node(s) (head=192.168.100.3)" in r.stdout


def test_ledger_commits_a_loop_turn_in_one_transaction_before_the_futures_are_done(tmp_path):
    import asyncio

    from sparkhelpers.gateway.ledger import Ledger

    store = keys.Store(keys.db_path(tmp_path))
    info, _ = store.create("carol")
    reader = sqlite3.connect(str(keys.db_path(tmp_path)))
    inflight = lambda: reader.execute("SELECT COUNT(*) FROM inflight").fetchone()[0]  # noqa: E731

    async def main() -> None:
        ledger = Ledger(store)
        begun = [ledger.begin(info, "m") for _ in range(3)]
        assert inflight() == 0  # queued, not yet written: the client may not get a byte yet
        await asyncio.gather(*(f for _, f in begun))
        assert inflight() == 3  # committed by the time the futures are done
        ends = [ledger.finish(rid, info, "m", prompt=2, completion=4, error=False, latency_ms=1.0, ttft_ms=0.5)
                for rid, _ in begun[:2]]
        rid, quick = ledger.begin(info, "m")  # begun and finished in the same turn: the begin lands first
        ends.append(ledger.finish(rid, info, "m", prompt=1, completion=1, error=True, latency_ms=1.0, ttft_ms=0))
        await asyncio.gather(quick, *ends)
        assert inflight() == 1

    asyncio.run(main())
    (row,) = store.usage_rows()
    assert (row["requests"], row["errors"], row["prompt_tokens"], row["completion_tokens"]) == (3, 1, 5, 9)


def test_a_writer_holding_the_database_stalls_the_rows_not_the_event_loop(tmp_path):
    """The commit waits on the ledger's thread: the loop goes on (streams, /health) while another writer holds
    the database, and the row's future is done only once it is committed."""
    import asyncio
    import threading

    from sparkhelpers.gateway.ledger import Ledger

    path = keys.db_path(tmp_path)
    info, _ = keys.Store(path).create("dave")
    holder = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    loop_ran = threading.Event()

    def release() -> None:
        loop_ran.wait(5)  # on the loop's thread, the commit would hold the loop here until the 5 s are over
        holder.execute("ROLLBACK")

    releaser = threading.Thread(target=release)
    releaser.start()

    async def main() -> None:
        ledger = Ledger(keys.Store(path))
        _, durable = ledger.begin(info, "m")
        await asyncio.sleep(0.05)  # the loop's turn: the commit starts and waits for the holder
        assert not durable.done(), "the row was committed while another writer held the database"
        loop_ran.set()
        await durable
        ledger.close()

    asyncio.run(main())
    releaser.join()
    assert sqlite3.connect(str(path)).execute("SELECT COUNT(*) FROM inflight").fetchone()[0] == 1


class _Recorder:
    def __init__(self) -> None:
        self.got, self.ends, self.errors = [], 0, []

    def data(self, payload: bytes) -> None:
        self.got.append(payload)

    def end(self) -> None:
        self.ends += 1

    def lost(self, exc: Exception) -> None:
        self.errors.append(exc)


def _answer(events: list[bytes]) -> bytes:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    return head + b"".join(b"%x\r\n%b\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"


def test_relay_unframes_a_chunked_answer_cut_at_any_byte():
    import asyncio

    from sparkhelpers.gateway import relay

    events = [b'data: {"choices":[{"text":"a"}]}\n\n', b"data: " + b"x" * 300 + b"\n\n", b"data: [DONE]\n\n"]
    wire = _answer(events)

    async def feed(cut: int) -> _Recorder:
        up, sink = relay.Upstream(), _Recorder()
        up.head_future = asyncio.get_running_loop().create_future()
        up.done = False
        up.data_received(wire[:cut])
        up.attach(sink)  # bytes that came with the head reach the sink first
        up.data_received(wire[cut:])
        head = up.head_future.result()
        assert head.status == 200 and head.get("content-type") == "text/event-stream" and head.keep_alive
        return sink

    async def main() -> None:
        for cut in range(90, len(wire)):
            sink = await feed(cut)
            assert b"".join(sink.got) == b"".join(events) and sink.ends == 1 and not sink.errors, cut

    asyncio.run(main())


def test_relay_head_and_a_stream_broken_off():
    from sparkhelpers.gateway import relay

    head, length, chunked = relay.parse_head(b"HTTP/1.0 404 Not Found\r\nContent-Length: 12\r\nX-A: b")
    assert (head.status, length, chunked, head.keep_alive, head.get("x-a")) == (404, 12, False, False, "b")
    head, _, _ = relay.parse_head(b"HTTP/1.1 200 OK\r\nConnection: close\r\nTransfer-Encoding: chunked")
    assert not head.keep_alive
    with pytest.raises(relay.Broken):
        relay.parse_head(b"SSH-2.0-OpenSSH_9.2")
    up, sink = relay.Upstream(), _Recorder()
    up.in_body, up.chunked, up.done, up.sink = True, True, False, sink
    up.data_received(b"5\r\nhello\r\n")
    up.connection_lost(ConnectionResetError("reset"))  # the engine died mid-stream
    assert sink.got == [b"hello"] and sink.ends == 0 and not sink.errors[0].before_head
