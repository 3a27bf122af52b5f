"""Issue 11 wording fixes: each bad value is named for what it is, with a fix that works."""

from __future__ import annotations

import pytest

from sparkhelpers import validate as v
from sparkhelpers.errors import SparkError


@pytest.mark.parametrize("user", ["bad user", "-oProxyCommand=x", "1root", "a;b", "x" * 40])
def test_a_bad_worker_user_is_called_a_login_name_not_a_host(user):
    with pytest.raises(SparkError) as exc:
        v.check("WORKER_USER", user)
    assert "is not a login name" in exc.value.message and "host" not in exc.value.message
    assert "config set WORKER_USER" in exc.value.fix


@pytest.mark.parametrize("user", ["ubuntu", "root", "svc-spark", "j.doe", "_ci", "nfs$"])
def test_good_worker_users_pass(user):
    assert v.check("WORKER_USER", user) == user


@pytest.mark.parametrize(("path", "words"), [("relative/path", "absolute path"), ("/raid/hf cache", "without spaces")])
def test_a_bad_hf_cache_says_what_is_wrong(path, words):
    with pytest.raises(SparkError) as exc:
        v.check("HF_CACHE", path)
    assert words in exc.value.message and "config set HF_CACHE" in exc.value.fix


def test_a_bad_server_answer_is_one_line_not_a_traceback():
    import http.server
    import threading

    import requests

    from sparkhelpers.cli import server_answer_error

    class Html(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = b"<html>a proxy login page</html>"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # noqa: ANN002
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Html)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_port}/v1/models"
        with pytest.raises(requests.RequestException) as raised:
            requests.get(url, timeout=5).json()
        err = server_answer_error(raised.value)
        assert err is not None and "(not JSON)" in err.message and "\n" not in err.message and err.fix
        with pytest.raises(requests.RequestException) as raised:
            requests.get(f"http://127.0.0.1:{srv.server_port + 1 if srv.server_port < 65535 else 1}/", timeout=2)
        assert "bad answer from the server" in server_answer_error(raised.value).message
    finally:
        srv.shutdown()
    assert server_answer_error(KeyError("x")) is None, "a bug stays a traceback"
