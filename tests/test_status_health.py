"""status must not trust /health alone for a multi-node engine (real vLLM keeps answering 200 for minutes
after a rank died): every rank of the launch needs a running container, and a 1-token request must work."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sparkhelpers.cluster.status import format_text, rank_problems, request_problem


def node(name: str, *containers: tuple[str, str, str]) -> dict:
    return {"node": name, "error": "", "containers": [
        {"name": f"vllm-{rank}", "state": state, "rank": rank, "nodes": nodes, "mode": "native", "config": "h",
         "status": "Up 1 minute" if state == "running" else "Exited (137) 5 seconds ago"}
        for rank, state, nodes in containers]}


def test_every_rank_of_the_launch_must_run():
    healthy = [node("head", ("0", "running", "2")), node("spark2", ("1", "running", "2"))]
    assert rank_problems(healthy) == []
    died = [node("head", ("0", "running", "2")), node("spark2", ("1", "exited", "2"))]
    assert rank_problems(died) == ["rank 1 on spark2 is exited (Exited (137) 5 seconds ago)"]
    removed = [node("head", ("0", "running", "3")), node("spark2", ("1", "running", "3")), node("spark3")]
    assert rank_problems(removed) == ["rank 2 has no container"]
    assert rank_problems([node("head")]) == [], "nothing running: not broken, just stopped"


@pytest.fixture
def engine():
    """A real HTTP server on loopback answering /v1/completions with the code the test sets."""
    state = {"code": 200, "bodies": []}

    class H(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            state["bodies"].append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            raw = json.dumps({"error": {"message": "EngineCore encountered an issue."}} if state["code"] != 200
                             else {"choices": [{"text": "x"}]}).encode()
            self.send_response(state["code"])
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *args):  # noqa: ANN002
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", state
    srv.shutdown()


def test_a_one_token_request_tells_a_broken_engine(engine):
    url, state = engine
    assert request_problem(url, "k", "qwen") == ""
    assert state["bodies"][-1] == {"model": "qwen", "prompt": "ping", "max_tokens": 1}
    state["code"] = 500
    assert request_problem(url, "k", "qwen").startswith("a 1-token test request got HTTP 500: ")
    assert request_problem("http://127.0.0.1:9", "", "qwen").startswith("a 1-token test request failed")


def test_status_text_says_broken_not_healthy():
    data = {"cluster": "c", "running": True, "mode": "native", "errors": [], "nodes": [], "endpoint": "http://x",
            "healthy": False, "served_models": ["q"], "problems": ["rank 1 on spark2 is exited (Exited)"],
            "health_code": 200}
    text = format_text(data)
    assert "BROKEN (rank 1 on spark2 is exited (Exited)), although /health answers 200" in text
    assert "BROKEN (rank 1 on spark2 is exited (Exited)); serving" in format_text({**data, "health_code": 503})
