"""Keys, quotas, usage, metrics and the status page of a gateway in front of a real tiny engine; usage survives
SIGKILL of the gateway exactly. The status page is checked in headless Chromium."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests
from gatewaykit import ROOT, Gateway, engine_cmd, pid_alive, usage_from_stream, wait_for

pytestmark = [pytest.mark.engine, pytest.mark.slow]


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    pytest.importorskip("xllamacpp", reason="the engine extra is not installed (make venv)")
    state = tmp_path_factory.mktemp("gateway-usage")
    g = Gateway(state, {"m": {"cmd": engine_cmd("m", 2), "placement": [["n1"]], "aliases": ["tiny"]}},
                nodes={"n1": "127.0.0.1"}).start()
    g.keys = {"counter": g.create_key("counter"), "rpm": g.create_key("rpm3", "--rpm", "3"),
              "daily": g.create_key("daily", "--tokens-per-day", "1"),
              "par": g.create_key("par", "--max-parallel", "1"), "cut": g.create_key("cut")}
    yield g
    g.stop()


def test_quota_request_n_plus_one_within_a_minute_gets_429(gw):
    key = gw.keys["rpm"]
    assert [gw.chat(key, "m", max_tokens=2).status_code for _ in range(3)] == [200, 200, 200]
    r = gw.chat(key, "m", max_tokens=2)
    assert r.status_code == 429 and 1 <= int(r.headers["Retry-After"]) <= 60
    assert r.json()["error"] == {"message": "key rpm3: 3 requests per minute at most", "type": "rate_limit_error",
                                 "param": None, "code": "rate_limit_rpm"}


def test_daily_token_budget_and_parallel_limit(gw):
    assert gw.chat(gw.keys["daily"], "m", max_tokens=2).status_code == 200
    r = gw.chat(gw.keys["daily"], "m", max_tokens=2)
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_tokens_per_day"
    assert int(r.headers["Retry-After"]) <= 86400
    first = gw.chat(gw.keys["par"], "m", "Tell me a story.", max_tokens=64, stream=True, ignore_eos=True)
    second = gw.chat(gw.keys["par"], "m", max_tokens=2)
    b"".join(first.iter_content(chunk_size=None))
    assert first.status_code == 200 and second.status_code == 429
    assert second.json()["error"]["code"] == "rate_limit_parallel"


def test_revoked_key_is_refused_within_a_second(gw):
    key = gw.create_key("temp")
    assert gw.chat(key, "m", max_tokens=1).status_code == 200
    gw.cli("keys", "revoke", "temp")
    wait_for(lambda: gw.chat(key, "m", max_tokens=1).status_code == 401, timeout=5)


def _client_usage(gw, key: str, rounds: int) -> tuple[int, int]:
    """Requests of every kind; returns the prompt and completion tokens the client was told it got."""
    prompt = completion = 0
    for i in range(rounds):
        r = gw.chat(key, "tiny", f"Count to {i + 3}.", max_tokens=5 + i)
        u = _usage(r, r.json().get("usage") if r.ok else None)
        prompt, completion = prompt + u["prompt_tokens"], completion + u["completion_tokens"]
        s = gw.chat(key, "m", f"Say hello {i} times.", max_tokens=4 + i, stream=True, include_usage=True)
        data = b"".join(s.iter_content(chunk_size=None))
        u = _usage(s, usage_from_stream(data), data)
        prompt, completion = prompt + u["prompt_tokens"], completion + u["completion_tokens"]
        c = requests.post(gw.url + "/v1/completions", headers={"Authorization": f"Bearer {key}"}, timeout=120,
                          json={"model": "m", "prompt": f"Once upon a time {i}", "max_tokens": 3})
        u = _usage(c, c.json().get("usage") if c.ok else None)
        prompt, completion = prompt + u["prompt_tokens"], completion + u["completion_tokens"]
    return prompt, completion


def _usage(r: requests.Response, usage: dict | None, data: bytes | None = None) -> dict:
    """The usage the client was told of; a failed request fails the test with what the gateway answered."""
    if r.status_code != 200 or not usage:
        body = (data if data is not None else r.content)[-600:]
        raise AssertionError(f"{r.request.method} {r.url} -> {r.status_code}, no usage: {body!r}")
    return usage


def _recorded(gw, key_name: str) -> dict:
    rows = json.loads(gw.cli("usage", "--by", "key", "--json").stdout)
    return next(r for r in rows if r["key"] == key_name)


def test_metrics_carry_key_names_and_engine_metrics(gw):
    prompt, completion = _client_usage(gw, gw.keys["counter"], 1)
    text = requests.get(gw.url + "/metrics", timeout=10).text
    assert f'sparkhelpers_gateway_tokens_total{{key="counter",kind="completion",model="m"}} {completion:.1f}' in text
    assert f'sparkhelpers_gateway_tokens_total{{key="counter",kind="prompt",model="m"}} {prompt:.1f}' in text
    assert 'sparkhelpers_gateway_requests_total{code="200",key="counter",model="m"} 3.0' in text
    assert 'sparkhelpers_gateway_requests_in_flight{model="m"} 0.0' in text
    assert "sparkhelpers_gateway_time_to_first_byte_seconds_bucket" in text
    assert 'llamacpp:tokens_predicted_total{model="m",replica="m"}' in text  # the engine's own, scraped


def test_status_page_in_headless_chromium(gw, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.fail("chromium is missing: make deps installs the Debian chromium package")
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
             "--window-size=1200,700"]
    shot = tmp_path / "status.png"
    r = subprocess.run([*flags, f"--screenshot={shot}", gw.url + "/ui"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", r.stderr[-2000:]
    assert shot.stat().st_size > 10000  # a rendered page, not a blank one
    dom = subprocess.run([*flags, "--dump-dom", gw.url + "/ui"], capture_output=True, text=True, timeout=120).stdout
    assert '<tr class="state-ready" data-model="m" data-state="ready">' in dom
    assert 'data-key="counter"' in dom and "<title>sparkhelpers gateway</title>" in dom
    assert "1 of 1" in dom and "replicas ready" in dom


def test_no_key_in_argv_logs_metrics_or_pages(gw):
    secrets = [*gw.keys.values(), (gw.state_dir / "gateway" / "internal.key").read_text().strip(),
               gw.control["Authorization"][7:]]
    seen = requests.get(gw.url + "/metrics", timeout=10).text + requests.get(gw.url + "/ui", timeout=10).text
    seen += json.dumps(gw.running()) + gw.log.read_text()
    seen += "".join(p.read_text(errors="replace") for p in (gw.state_dir / "gateway" / "logs").glob("*.log"))
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            with contextlib.suppress(OSError):
                seen += Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    assert not [s[:12] for s in secrets if s in seen]


def test_benchmark_current_sh_through_the_gateway_records_it(gw, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text(gw.create_key("bench") + "\n")
    key_file.chmod(0o600)  # the one secret-file rule refuses a world-readable key
    env = {**gw.env, "API_KEY_FILE": str(key_file), "RESULTS_DIR": str(tmp_path / "res")}
    r = subprocess.run([str(ROOT / "benchmark_current.sh"), "--profile", "smoke", "-u", gw.url], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    files = sorted((tmp_path / "res").rglob("*.json"))
    assert files, r.stderr
    doc = json.loads(files[0].read_text())
    assert doc["target"]["gateway"]["url"] == gw.url and doc["target"]["gateway"]["model"] == "m"
    assert doc["target"]["gateway"]["version"] and doc["failed"] == 0 and doc["completed"] > 0
    assert _recorded(gw, "bench")["requests"] >= doc["completed"]


def test_usage_equals_what_clients_received_also_after_sigkill(gw):
    before = _recorded(gw, "counter")
    prompt, completion = _client_usage(gw, gw.keys["counter"], 2)
    engine_pid = next(r["pid"] for r in gw.running() if r["replica"] == "m")
    cut = gw.chat(gw.keys["cut"], "m", "Write a long poem.", max_tokens=300, stream=True, ignore_eos=True)
    next(cut.iter_content(chunk_size=None))
    gw.kill9()  # mid-stream for key cut; nothing flushed, nothing stopped
    cut.close()
    assert pid_alive(engine_pid)  # the engine outlived its gateway...
    gw.start()
    wait_for(lambda: not pid_alive(engine_pid), timeout=10)  # ...and the next gateway ended it
    after = _recorded(gw, "counter")
    assert after["prompt_tokens"] - before["prompt_tokens"] == prompt
    assert after["completion_tokens"] - before["completion_tokens"] == completion
    assert after["requests"] - before["requests"] == 6 and after["errors"] == 0
    interrupted = _recorded(gw, "cut")
    assert (interrupted["requests"], interrupted["errors"], interrupted["completion_tokens"]) == (1, 1, 0)
    more_prompt, more_completion = _client_usage(gw, gw.keys["counter"], 1)  # the restarted gateway counts on
    final = _recorded(gw, "counter")
    assert final["completion_tokens"] - before["completion_tokens"] == completion + more_completion
    assert final["prompt_tokens"] - before["prompt_tokens"] == prompt + more_prompt
    csv_out = gw.cli("usage", "--by", "model", "--csv").stdout.splitlines()
    assert csv_out[0].startswith("model,requests,errors,prompt_tokens,completion_tokens")
    assert csv_out[1].startswith("m,")


def test_concurrent_clients_are_counted_exactly(gw):
    before = _recorded(gw, "counter")
    got: list[tuple[int, int]] = []
    failed: list[BaseException] = []
    lock = threading.Lock()

    def client() -> None:
        try:
            p, c = _client_usage(gw, gw.keys["counter"], 1)
        except BaseException as exc:  # a thread's error must fail the test, not shrink the clients' sum
            with lock:
                failed.append(exc)
            return
        with lock:
            got.append((p, c))

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failed, f"{len(failed)} of 3 clients failed: {failed[0]!r}"
    time.sleep(0.2)
    after = _recorded(gw, "counter")
    assert after["completion_tokens"] - before["completion_tokens"] == sum(c for _, c in got)
    assert after["prompt_tokens"] - before["prompt_tokens"] == sum(p for p, _ in got)
