"""The real LiteLLM proxy (1.82.6, side venv from `make side-venvs`) in front of the gateway: the config comes
from `sparkhelpers gateway export --litellm`, the key from the environment, and a chat streams through both."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import requests
from gatewaykit import Gateway, engine_cmd, free_port, sse_events, usage_from_stream, wait_for

pytestmark = [pytest.mark.engine, pytest.mark.slow]
LITELLM = Path(os.environ.get("SIDE_VENV_ROOT", "/var/cache/sparkhelpers")) / "litellm-1.82.6" / "bin" / "litellm"


@pytest.fixture(scope="module")
def litellm_bin() -> Path:
    if not LITELLM.exists():
        message = f"{LITELLM} is missing (fix: make side-venvs)"
        if os.environ.get("SPARK_REQUIRE_SIM"):  # CI installs it: missing there is a failure
            pytest.fail(message)
        pytest.skip(message)
    return LITELLM


def test_litellm_proxy_streams_a_chat_through_the_gateway(tmp_path, litellm_bin):
    pytest.importorskip("xllamacpp", reason="the engine extra is not installed (make venv)")
    gw = Gateway(tmp_path / "state", {"m": {"cmd": engine_cmd("m", 2), "aliases": ["tiny"]}}).start()
    try:
        key = gw.create_key("litellm")
        config = tmp_path / "litellm.yaml"
        gw.cli("gateway", "export", "--litellm", "--models", str(gw.models_file), "-o", str(config))
        assert "sk-spark-" not in config.read_text()  # the key stays in the environment
        port = free_port()
        env = {**os.environ, "SPARK_GATEWAY_KEY": key, "LITELLM_LOCAL_MODEL_COST_MAP": "True",
               "LITELLM_MASTER_KEY": "sk-litellm-test", "LITELLM_LOG": "ERROR", "NO_DOCS": "True",
               "DISABLE_ADMIN_UI": "True", "LITELLM_TELEMETRY": "False"}
        env.pop("DATABASE_URL", None)
        with open(tmp_path / "litellm.log", "wb") as log:
            proxy = subprocess.Popen([str(litellm_bin), "--config", str(config), "--host", "127.0.0.1", "--port",
                                      str(port), "--num_workers", "1"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                     cwd=tmp_path)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_for(lambda: _ok(url + "/health/liveliness") or proxy.poll() is not None, timeout=240, every=1)
            assert proxy.poll() is None, (tmp_path / "litellm.log").read_text()[-3000:]
            auth = {"Authorization": "Bearer sk-litellm-test"}
            r = requests.post(url + "/v1/chat/completions", headers=auth, stream=True, timeout=180,
                              json={"model": "tiny", "messages": [{"role": "user", "content": "Say hi."}],
                                    "max_tokens": 8, "temperature": 0, "stream": True,
                                    "stream_options": {"include_usage": True}})
            assert r.status_code == 200, r.text
            events = sse_events(b"".join(r.iter_content(chunk_size=None)))
            assert events[-1] == b"data: [DONE]"
            text = "".join((json.loads(e[6:])["choices"] or [{}])[0].get("delta", {}).get("content") or ""
                           for e in events[:-1])
            assert text.strip()
            client_usage = usage_from_stream(b"\n\n".join(events))
            rows = json.loads(gw.cli("usage", "--by", "key", "--json").stdout)
            ours = next(row for row in rows if row["key"] == "litellm")
            assert ours["requests"] == 1 and ours["errors"] == 0
            if client_usage:  # LiteLLM passes the engine's counts on
                assert ours["completion_tokens"] == client_usage["completion_tokens"]
            assert requests.get(url + "/v1/models", timeout=10).status_code == 401  # LiteLLM's own key still applies
        finally:
            proxy.terminate()
            try:
                proxy.wait(30)
            except subprocess.TimeoutExpired:
                proxy.kill()
    finally:
        gw.stop()


def _ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=3).status_code == 200
    except requests.RequestException:
        return False
