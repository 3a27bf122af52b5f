"""The sparkhelpers command itself: help, version, config show/get/set."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from sparkhelpers import cli
from sparkhelpers.config import documented_keys

ROOT = Path(__file__).resolve().parents[1]


def sh(argv, *args, input=None, env=None):
    return subprocess.run([*argv, *args], capture_output=True, text=True, input=input,
                          env={**os.environ, **(env or {})}, timeout=60)


def test_help_lists_every_concern(sparkhelpers_bin):
    r = sh(sparkhelpers_bin, "--help")
    assert r.returncode == 0
    for name in cli.COMMANDS:
        assert f"  {name}" in r.stdout


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_every_registered_command_loads(name, sparkhelpers_bin):
    r = sh(sparkhelpers_bin, name, "--help")
    assert r.returncode == 0, r.stderr
    assert "Usage: sparkhelpers " + name in r.stdout


def test_module_entry_point_and_version():
    import sys

    r = sh([sys.executable, "-m", "sparkhelpers"], "--version")
    assert r.returncode == 0 and r.stdout.startswith("sparkhelpers ")


def test_show_json_reports_every_key_with_source(sparkhelpers_bin, isolated_env):
    Path(os.environ["SPARK_CONFIG"]).write_text("MODEL=local/model\nHF_TOKEN=hf_secret_value\n")
    r = sh(sparkhelpers_bin, "config", "show", "--json", env={"VLLM_PORT": "9001"})
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    for row in documented_keys(ROOT / "config.env"):
        assert set(data[row["key"]]) == {"value", "source"}
    assert data["MODEL"] == {"value": "local/model", "source": "config.local.env"}
    assert data["VLLM_PORT"] == {"value": "9001", "source": "environment"}
    assert data["RAY_PORT"]["source"] == "config.env"
    assert data["HF_TOKEN"]["value"] == "********"
    assert "hf_secret_value" not in r.stdout + r.stderr


def test_get_prints_raw_value(sparkhelpers_bin):
    r = sh(sparkhelpers_bin, "config", "get", "RAY_PORT")
    assert (r.returncode, r.stdout) == (0, "6385\n")


def test_get_unknown_key_is_one_clear_line(sparkhelpers_bin):
    r = sh(sparkhelpers_bin, "config", "get", "NO_SUCH_KEY")
    assert r.returncode == 1
    assert r.stderr.startswith("sparkhelpers: unknown config key NO_SUCH_KEY")


def test_set_writes_private_file_and_reads_secret_from_stdin(sparkhelpers_bin, isolated_env):
    local = Path(os.environ["SPARK_CONFIG"])
    local.unlink()
    assert sh(sparkhelpers_bin, "config", "set", "BENCH_VARIANT", "it's a variant").returncode == 0
    r = sh(sparkhelpers_bin, "config", "set", "HF_TOKEN", "-", input="hf_abc\n")
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(local.stat().st_mode) == 0o600
    got = json.loads(sh(sparkhelpers_bin, "config", "show", "--json").stdout)
    assert got["BENCH_VARIANT"]["value"] == "it's a variant"
    assert sh(sparkhelpers_bin, "config", "get", "HF_TOKEN").stdout == "hf_abc\n"
    # and bash reads the same file to the same value
    r = subprocess.run(["bash", "-c", 'source lib/common.sh; spark_load_config; printf %s "$BENCH_VARIANT"'],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.stdout == "it's a variant"


def test_set_refuses_secret_on_command_line(sparkhelpers_bin):
    r = sh(sparkhelpers_bin, "config", "set", "HF_TOKEN", "hf_visible")
    assert r.returncode == 2
    assert "process list" in r.stderr


def test_set_unknown_key_needs_new(sparkhelpers_bin):
    assert sh(sparkhelpers_bin, "config", "set", "MODLE", "x").returncode == 2
    assert sh(sparkhelpers_bin, "config", "set", "MY_KEY", "x", "--new").returncode == 0


def test_bad_syntax_names_file_and_line(sparkhelpers_bin):
    Path(os.environ["SPARK_CONFIG"]).write_text("A=1\nB=$(whoami)\n")
    r = sh(sparkhelpers_bin, "config", "check")
    assert r.returncode == 1
    assert "config.local.env:2: command substitution" in r.stderr
