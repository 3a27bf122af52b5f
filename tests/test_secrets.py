"""One secret reader (sparkhelpers.secrets): one precedence, one file policy, the same key from every command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from sparkhelpers import secrets
from sparkhelpers.config import load_config
from sparkhelpers.errors import SparkError

ROOT = Path(__file__).resolve().parents[1]


def secret_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def saved_hf_token(home: Path, text: str, mode: int = 0o600) -> Path:
    """What `hf auth login` leaves behind: HF_HOME/token."""
    home.mkdir(parents=True, exist_ok=True)
    return secret_file(home / "token", text, mode)


# ---- precedence ---------------------------------------------------------------------------------

def test_file_beats_value_beats_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("API_KEY", "from-env")
    assert secrets.read(load_config(), "API_KEY").value == "from-env"
    assert secrets.read(load_config(), "API_KEY").source == "API_KEY (environment)"
    monkeypatch.setenv("API_KEY_FILE", str(secret_file(tmp_path / "key", "from-file\n")))
    got = secrets.read(load_config(), "API_KEY")
    assert (got.value, got.source) == ("from-file", f"API_KEY_FILE {tmp_path / 'key'}")
    assert "from-file" not in repr(got)
    monkeypatch.delenv("API_KEY")
    monkeypatch.delenv("API_KEY_FILE")
    assert secrets.read(load_config(), "API_KEY") == secrets.Secret("API_KEY", "", "none")


def test_hf_token_falls_back_to_the_token_hf_auth_login_saved(tmp_path, monkeypatch):
    home = Path(os.environ["HF_HOME"])
    saved_hf_token(home, "hf_saved\n")
    code = "from sparkhelpers import secrets, config; s = secrets.read(config.load_config(), 'HF_TOKEN'); " \
           "print(s.value, s.source)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out == f"hf_saved hf auth login {home / 'token'}\n"
    # HF_TOKEN, then HF_TOKEN_FILE, win over the saved token
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "HF_TOKEN": "hf_env"}).stdout
    assert out.startswith("hf_env HF_TOKEN (environment)")
    f = secret_file(tmp_path / "tok", "hf_file")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "HF_TOKEN": "hf_env", "HF_TOKEN_FILE": str(f)}).stdout
    assert out.startswith("hf_file HF_TOKEN_FILE")


# ---- one file policy ----------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["API_KEY", "HF_TOKEN"])
@pytest.mark.parametrize(("text", "mode", "message", "fix"), [
    ("k", 0o640, "is readable by other users (mode 0o640)", "chmod 600 {path}"),
    ("k", 0o604, "is readable by other users (mode 0o604)", "chmod 600 {path}"),
    ("", 0o600, "is empty (authentication would silently be off)", "write the secret into {path}"),
    ("  \n\t\n", 0o600, "is empty", "write the secret into {path}"),
    ("two words", 0o600, "holds more than one word or line", "write only the secret into {path}"),
])
def test_one_policy_for_every_secret_file(key, text, mode, message, fix, tmp_path, monkeypatch):
    path = secret_file(tmp_path / "secret", text, mode)
    monkeypatch.setenv(f"{key}_FILE", str(path))
    monkeypatch.setenv(key, "a-value-that-must-not-be-used")
    with pytest.raises(SparkError) as err:
        secrets.read(load_config(), key)
    assert message in err.value.message and f"{key}_FILE {path}" in err.value.message
    assert fix.format(path=path) in err.value.fix


def test_a_missing_secret_file_is_an_error_not_no_auth(tmp_path, monkeypatch):
    monkeypatch.setenv("API_KEY_FILE", str(tmp_path / "nope"))
    with pytest.raises(SparkError, match="cannot be read: No such file"):
        secrets.read(load_config(), "API_KEY")


def test_the_saved_hf_token_meets_the_same_policy(tmp_path):
    home = Path(os.environ["HF_HOME"])
    path = saved_hf_token(home, "hf_saved\n", 0o644)
    code = "from sparkhelpers import secrets, config; secrets.read(config.load_config(), 'HF_TOKEN')"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode != 0 and f"chmod 600 {path}" in r.stderr


def test_config_check_reports_secret_problems(tmp_path):
    path = secret_file(tmp_path / "key", "k", 0o644)
    exe = Path(sys.executable).parent / "sparkhelpers"
    r = subprocess.run([str(exe), "config", "check"], capture_output=True, text=True,
                       env={**os.environ, "API_KEY_FILE": str(path)})
    assert r.returncode == 1 and f"fix: chmod 600 {path}" in r.stdout


# ---- the same key from every command -------------------------------------------------------------

class AuthServer:
    """An OpenAI-compatible server on loopback (stdlib http.server) that answers only one key."""

    def __init__(self, key: str) -> None:
        self.key, self.seen = key, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # noqa: ANN002
                pass

            def reply(self, code: int, data: object | None = None) -> None:
                raw = json.dumps(data).encode() if data is not None else b""
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def authorized(self) -> bool:
                auth = self.headers.get("Authorization", "")
                outer.seen.append((self.path, auth))
                if self.path in ("/health", "/metrics"):
                    self.reply(200)
                    return False
                if auth != f"Bearer {outer.key}":
                    self.reply(401, {"error": "Unauthorized"})
                    return False
                return True

            def do_GET(self) -> None:  # noqa: N802
                if self.authorized():
                    self.reply(200, {"object": "list", "data": [{"id": "m", "object": "model"}]})

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if not self.authorized():
                    return
                if not body.get("stream"):
                    self.reply(200, {"choices": [{"message": {"role": "assistant", "content": "OK"}}],
                                     "usage": {"completion_tokens": 1}})
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                n = body.get("max_tokens") or 2
                for i in range(n):
                    piece = {"text": f"t{i}"} if self.path == "/v1/completions" else {"delta": {"content": f"t{i}"}}
                    chunk = {"choices": [{"index": 0, **piece, "finish_reason": "length" if i == n - 1 else None}]}
                    self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                usage = {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": n}}
                self.wfile.write(b"data: " + json.dumps(usage).encode() + b"\n\ndata: [DONE]\n\n")
                self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]

    def __enter__(self) -> AuthServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:  # noqa: ANN002
        self.httpd.shutdown()
        self.httpd.server_close()


def test_every_command_sends_the_same_key_when_both_are_set(tmp_path, monkeypatch):
    key_file = secret_file(tmp_path / "api.key", "sk-from-file\n")
    exe = str(Path(sys.executable).parent / "sparkhelpers")
    with AuthServer("sk-from-file") as server:
        url = f"http://127.0.0.1:{server.port}"
        env = {**os.environ, "API_KEY": "sk-from-env", "API_KEY_FILE": str(key_file),
               "VLLM_HOST": "127.0.0.1", "VLLM_PORT": str(server.port)}
        commands = {
            "models smoke": [exe, "models", "smoke", "--url", url, "--timeout", "10"],
            "bench run": [exe, "bench", "run", "--base-url", url, "--model", "m", "--backend", "openai-chat",
                          "--num-prompts", "2", "--random-input-len", "8", "--random-output-len", "2"],
            "bench current": [exe, "bench", "current", "--url", url, "--single", "-o", str(tmp_path / "res")],
        }
        for name, argv in commands.items():
            server.seen.clear()
            r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
            sent = {auth for path, auth in server.seen if path not in ("/health", "/metrics")}  # vLLM: no key
            assert sent == {"Bearer sk-from-file"}, (name, sent, r.stdout[-500:], r.stderr[-500:])
            assert r.returncode == 0, (name, r.stderr[-800:])
        # the engine is started with the same key (in its 0600 secrets file), and status asks with it
        monkeypatch.setenv("API_KEY", "sk-from-env")
        monkeypatch.setenv("API_KEY_FILE", str(key_file))
        monkeypatch.setenv("VLLM_HOST", "127.0.0.1")
        monkeypatch.setenv("VLLM_PORT", str(server.port))
        from sparkhelpers.cluster import render

        captured = {}
        real = render.start_phases
        monkeypatch.setattr(render, "start_phases",
                            lambda plan, h, s: captured.update(s) or real(plan, h, s))
        from sparkhelpers.cluster import control

        control.start_cluster(load_config(), solo=True, dry_run=True)
        assert captured["VLLM_API_KEY"] == "sk-from-file"
        server.seen.clear()
        subprocess.run([exe, "status", "--json"], capture_output=True, text=True, env=env, timeout=60)
        assert {auth for path, auth in server.seen if path == "/v1/models"} == {"Bearer sk-from-file"}
