"""Every entry script: real --help (exit 0), misuse (exit 2), honest failure for unbuilt features."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ["setup-env.sh", "checkout_setup.sh", "start_cluster.sh", "stop_cluster.sh", "switch_model.sh",
           "benchmark_current.sh", "benchmark_all.sh"]


def run(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=kw.pop("cwd", ROOT), capture_output=True, text=True,
                          env=kw.pop("env", os.environ), timeout=60, **kw)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_is_the_header(script):
    r = run(ROOT / script, "--help", cwd="/")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Summary: ")
    assert "Usage: " in r.stdout and script in r.stdout
    assert r.stderr == ""


@pytest.mark.parametrize("script", SCRIPTS)
def test_misuse_exits_2(script):
    r = run(ROOT / script, "--no-such-flag")
    assert r.returncode == 2
    assert r.stderr.startswith(f"{script}: ")
    assert "--help" in r.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_strict_mode_and_shared_library(script):
    text = (ROOT / script).read_text()
    assert "set -euo pipefail" in text
    assert 'source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"' in text


def test_debug_traces_file_and_line():
    r = run(ROOT / "stop_cluster.sh", "--help", env={**os.environ, "SPARK_DEBUG": "1"})
    assert r.returncode == 0
    assert "+(" in r.stderr and "common.sh:" in r.stderr


def test_require_cmd_names_the_package():
    r = run("bash", "-c", "source lib/common.sh; require_cmd no-such-tool-xyz some-package")
    assert r.returncode == 1
    assert "no-such-tool-xyz is not installed" in r.stderr
    assert "apt-get install -y some-package" in r.stderr


def test_log_format_is_script_colon_message():
    r = run("bash", "-c", "source lib/common.sh; warn careful; die broken 'do this'", )
    assert r.stderr.splitlines() == ["bash: warning: careful", "bash: broken", "bash: fix: do this"]
    assert r.returncode == 1


def test_sourced_setup_env_leaves_shell_options_alone():
    r = run("bash", "-c", 'source ./setup-env.sh >/dev/null 2>&1; echo "rc=$? opts=$-"')
    assert "rc=1" in r.stdout
    assert "e" not in r.stdout.split("opts=")[1] and "u" not in r.stdout.split("opts=")[1]


def test_scripts_find_config_from_any_directory(tmp_path):
    r = run(ROOT / "stop_cluster.sh", cwd=tmp_path)
    assert "config defaults not found" not in r.stderr


def test_missing_spark_config_file_is_an_error(tmp_path):
    env = {**os.environ, "SPARK_CONFIG": str(tmp_path / "nope.env")}
    r = run(ROOT / "stop_cluster.sh", env=env)
    assert r.returncode == 1 and "does not exist" in r.stderr
