"""`status` exit codes monitoring can trust, and the API problems a healthy /health hides (pure)."""

from __future__ import annotations

import pytest

from sparkhelpers.cluster import status as st


def data(running=True, healthy=True, api=200, reachable=(True, True), errors=()):  # noqa: ANN001, ANN201
    return {"running": running, "healthy": healthy, "api_status": api, "errors": list(errors),
            "nodes": [{"node": f"n{i}", "reachable": r} for i, r in enumerate(reachable)]}


@pytest.mark.parametrize(("d", "code"), [
    (data(), 0),
    (data(running=False, healthy=False, api=0), 1),
    (data(healthy=False), 1),
    (data(api=401), 1),
    (data(errors=["n1: Docker does not answer"]), 1),
    (data(reachable=(True, False)), 2),
    (data(running=False, reachable=(True, False)), 2),
])
def test_exit_code(d, code):
    assert st.exit_code(d) == code


def test_a_401_names_the_key_problem_with_its_fix():
    (with_key,) = st.api_warnings("127.0.0.1", "sk-x", 401, True)
    assert "HTTP 401" in with_key and "API_KEY_FILE" in with_key and "start_cluster.sh" in with_key
    assert "sk-x" not in with_key
    (no_key,) = st.api_warnings("0.0.0.0", "", 401, True)
    assert "no API key is configured" in no_key


def test_an_open_api_beyond_loopback_is_a_warning():
    (w,) = st.api_warnings("0.0.0.0", "", 200, True)
    assert "without an API key" in w
    assert st.api_warnings("127.0.0.1", "", 200, True) == []
    assert st.api_warnings("0.0.0.0", "sk-x", 200, True) == []
    assert st.api_warnings("0.0.0.0", "", 0, False) == [], "nothing running: nothing exposed"
