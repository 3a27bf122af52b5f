"""Test isolation: every path sparkhelpers writes is redirected into the test's tmp dir."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Emulated-cluster fixtures (sim_cluster, make_sim) for every test module.
pytest_plugins = ["simfixtures"]

# Started in the background of a non-interactive shell (`nohup ... &`), pytest inherits SIGINT ignored, and so
# would every child: the Ctrl-C tests would hang. A handler here gives the children the default again (exec keeps
# an ignored signal ignored, but resets a handled one).
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session", autouse=True)
def sim_image_cache(tmp_path_factory):
    """The sim's image cache goes to this run's tmp dir, unless the developer points at a lasting one."""
    if os.environ.get("SPARK_SIM_CACHE"):
        yield Path(os.environ["SPARK_SIM_CACHE"])
        return
    path = tmp_path_factory.mktemp("sim-image-cache")
    os.environ["SPARK_SIM_CACHE"] = str(path)
    yield path
    del os.environ["SPARK_SIM_CACHE"]


def config_keys() -> list[str]:
    keys = []
    for line in (ROOT / "config.env").read_text().splitlines():
        m = re.match(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=", line)
        if m:
            keys.append(m.group(1))
    return keys


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory, monkeypatch):
    """No config key leaks in from the developer's shell; config, state and caches go to tmp."""
    base = tmp_path_factory.mktemp("spark")
    for key in config_keys():
        monkeypatch.delenv(key, raising=False)
    for var in ("SPARK_CONFIG", "SPARK_CONFIG_DEFAULTS", "SPARK_DEBUG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SPARK_HOME", str(ROOT))
    local = base / "config.local.env"
    local.touch(mode=0o600)
    monkeypatch.setenv("SPARK_CONFIG", str(local))
    monkeypatch.setenv("SPARK_STATE_DIR", str(base / "state"))
    monkeypatch.setenv("XDG_STATE_HOME", str(base / "xdg-state"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(base / "xdg-cache"))
    monkeypatch.setenv("HF_HOME", str(base / "hf-home"))
    monkeypatch.setenv("HF_CACHE", str(base / "hf-cache"))
    monkeypatch.setenv("RESULTS_DIR", str(base / "results"))
    # Never the real Hub: a closed loopback port unless a test points HF_ENDPOINT at its stub.
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    yield base


@pytest.fixture
def sparkhelpers_bin() -> list[str]:
    """The CLI as users run it (the console script of the venv running the tests)."""
    exe = Path(os.sys.executable).parent / "sparkhelpers"
    return [str(exe)] if exe.exists() else [os.sys.executable, "-m", "sparkhelpers"]
