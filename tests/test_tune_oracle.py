"""The oracle against a scripted OpenAI-compatible server on loopback: it is given the model facts, the
hardware profile and the legal-values schema (and the key from ORACLE_KEY_FILE, never anything else
secret); every proposal is validated and an illegal one is refused with the reason and never run."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sparkhelpers.config import Config, Setting
from sparkhelpers.errors import SparkError
from sparkhelpers.tune import jobs

ANSWER = {"candidates": [
    {"name": "magic", "engine_args": {"--enable-magic-batching": True}, "why": "made up"},
    {"name": "tp", "engine_args": {"tensor_parallel_size": 2}, "why": "not a lever"},
    {"name": "kv", "engine_args": {"kv_cache_dtype": "int3"}, "why": "not a value"},
    {"name": "seqs", "engine_args": {"max-num-seqs": 16, "enable_prefix_caching": False}, "why": "batch more"},
]}
KEY = "sk-oracle-test-5e1f"


class Scripted(BaseHTTPRequestHandler):
    seen: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Scripted.seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        text = "Here you go:\n```json\n" + json.dumps(ANSWER) + "\n```"
        out = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args) -> None:  # noqa: ANN002
        pass


@pytest.fixture
def oracle_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Scripted.seen = []
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def config(tmp_path, url: str, key_mode: int = 0o600) -> Config:
    recipe = tmp_path / "base.yaml"
    recipe.write_text("recipe: 1\nname: qwen3-small\nmodel: Qwen/Qwen3-0.6B\nimage: vllm/vllm-openai:v0.19.0\n"
                      "engine_args: {max_num_seqs: 2, max_model_len: 2048}\n")
    key = tmp_path / "oracle-key"
    key.write_text(KEY + "\n")
    key.chmod(key_mode)
    values = {"ORACLE_URL": url, "ORACLE_MODEL": "scripted", "ORACLE_KEY_FILE": str(key),
              "SPARK_STATE_DIR": str(tmp_path / "state"), "VLLM_IMAGE": "vllm/vllm-openai:v0.19.0"}
    return Config({k: Setting(k, v, "flag") for k, v in values.items()}, [])


def test_illegal_proposals_are_refused_with_the_reason_and_never_run(tmp_path, oracle_server):
    cfg = config(tmp_path, oracle_server)
    req = jobs.TuneRequest(str(tmp_path / "base.yaml"), "output_tps@c8:64/16", "none", oracle=True,
                           levers=("max_num_seqs=4",))
    plan = jobs.dry_run(cfg, req)
    magic = next(c for c in plan["candidates"] if "enable_magic_batching" in c["name"])
    assert "enable_magic_batching is not a tunable lever" in magic["refused"]
    tp = next(c for c in plan["candidates"] if "tensor_parallel_size" in c["name"])
    assert "tensor_parallel_size is not a tunable lever" in tp["refused"]
    kv = next(c for c in plan["candidates"] if "kv_cache_dtype" in c["name"])
    assert "kv_cache_dtype='int3' is not one of" in kv["refused"]
    good = next(c for c in plan["candidates"] if c["origin"] == "oracle" and not c["refused"])
    assert good["changes"] == {"max_num_seqs": 16, "enable_prefix_caching": False} and good["recipe_id"]
    assert good["why"] == "batch more"
    refused_steps = [e for e in plan["trail"] if e["step"] == "oracle proposal" and "illegal" in e["reason"]]
    assert len(refused_steps) == 3
    [call] = Scripted.seen
    assert call["path"] == "/v1/chat/completions" and call["auth"] == f"Bearer {KEY}"
    asked = json.loads(call["body"]["messages"][1]["content"])
    assert set(asked["legal_values"]) >= {"max_num_seqs", "kv_cache_dtype", "speculative_config"}
    assert asked["hardware"]["gpu"].startswith("NVIDIA GB10") and asked["model"]["repo"] == "Qwen/Qwen3-0.6B"
    assert asked["objective"]["text"] == "output_tps@c8:64/16"
    assert KEY not in call["body"]["messages"][1]["content"]
    assert plan["oracle"]["answer"].startswith("Here you go")


def test_a_readable_key_file_is_refused_before_asking(tmp_path, oracle_server):
    cfg = config(tmp_path, oracle_server, key_mode=0o644)
    req = jobs.TuneRequest(str(tmp_path / "base.yaml"), "output_tps@c8", "none", oracle=True)
    plan = jobs.dry_run(cfg, req)
    assert Scripted.seen == []
    assert "readable by other users" in plan["oracle"]["error"]
    assert any(e["step"] == "oracle" and "readable by other users" in e["reason"] for e in plan["trail"])


def test_an_unreachable_oracle_is_one_line(tmp_path):
    from sparkhelpers.tune import oracle

    cfg = config(tmp_path, "http://127.0.0.1:9/v1")
    with pytest.raises(SparkError) as err:
        oracle.ask(cfg, {"x": 1}, timeout_s=2)
    assert "cannot be reached" in err.value.message and "ORACLE_URL" in err.value.fix
