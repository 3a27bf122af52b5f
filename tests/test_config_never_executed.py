"""Config files are data: no entry script ever executes a line of config.env or config.local.env.

Each root script, with the arguments a user would try first, must leave the marker file uncreated
and refuse with the offending file:line (--help still prints the help, and runs nothing either).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# script -> argument lists to try (each also with --help)
INVOCATIONS = {
    "start_cluster.sh": [["--dry-run"], ["--dry-run", "--solo"], []],
    "stop_cluster.sh": [["--dry-run"], [], ["--force"]],
    "switch_model.sh": [["--list"], ["--skip-restart", "--skip-download", "Qwen/Qwen3-0.6B"]],
    "checkout_setup.sh": [["--quick"], ["--json"]],
    "setup-env.sh": [["--non-interactive", "--dry-run"]],
    "benchmark_current.sh": [["--single"]],
    "benchmark_all.sh": [["--yes", "--dry-run"]],
}
CASES = [(s, a) for s, lists in INVOCATIONS.items() for a in lists]


def run(argv: list[str], env: dict, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                          **kw)


@pytest.fixture
def poisoned(tmp_path, isolated_env):
    """config.local.env whose third line would create MARKER if anything sourced it."""
    marker = tmp_path / "MARKER"
    local = Path(os.environ["SPARK_CONFIG"])
    local.write_text(f"VLLM_PORT=8123\n# the next line is an attack\nCLUSTER_NAME=\"x$(touch {marker})\"\n")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return env, local, marker


@pytest.mark.parametrize(("script", "args"), CASES, ids=[f"{s} {' '.join(a)}" for s, a in CASES])
def test_no_script_executes_the_config(script, args, poisoned):
    env, local, marker = poisoned
    r = run([str(ROOT / script), *args], env)
    assert not marker.exists(), f"{script} {args} executed config.local.env"
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert f"{local}:3: command substitution" in r.stderr
    assert "fix: " in r.stderr
    assert r.stdout == ""  # refused before anything ran


@pytest.mark.parametrize("script", list(INVOCATIONS))
def test_help_runs_nothing_either(script, poisoned):
    env, _, marker = poisoned
    r = run([str(ROOT / script), "--help"], env)
    assert r.returncode == 0 and r.stdout.startswith("Summary: ")
    assert not marker.exists()


def test_sourced_setup_env_executes_nothing(poisoned):
    env, local, marker = poisoned
    r = run(["bash", "-c", 'source ./setup-env.sh --non-interactive --dry-run; echo "rc=$?"'], env)
    assert not marker.exists()
    assert "rc=1" in r.stdout and f"{local}:3:" in r.stderr


@pytest.mark.parametrize(("line", "fragment"), [
    ("X=`touch {m}`", "command substitution (`...`)"),
    ("touch {m}", "expected '=' after touch"),
    ("A=1 touch {m}", "unquoted space in a value"),
    ("A=$(touch {m})", "command substitution $(...)"),
    ("A=1; touch {m}", "expected '=' after touch"),
    ("A=1&&touch {m}", "'&' is shell syntax"),
    ("A=$((1+2))", "command substitution $(...)"),
    ("A=<(touch {m})", "'<' is shell syntax"),
])
def test_every_executable_form_is_refused_with_file_and_line(line, fragment, poisoned):
    env, local, marker = poisoned
    local.write_text("VLLM_PORT=8123\n" + line.format(m=marker) + "\n")
    r = run([str(ROOT / "stop_cluster.sh"), "--dry-run"], env)
    assert not marker.exists()
    assert r.returncode == 1 and f"{local}:2: {fragment}" in r.stderr, r.stderr


def test_a_bad_line_in_config_env_is_refused_too(poisoned, tmp_path):
    env, _, marker = poisoned
    Path(env["SPARK_CONFIG"]).write_text("")
    defaults = tmp_path / "config.env"
    defaults.write_text((ROOT / "config.env").read_text() + f"EXTRA=$(touch {marker})\n")
    lineno = len(defaults.read_text().splitlines())
    r = run([str(ROOT / "start_cluster.sh"), "--dry-run"], {**env, "SPARK_CONFIG_DEFAULTS": str(defaults)})
    assert not marker.exists()
    assert r.returncode == 1 and f"{defaults}:{lineno}:" in r.stderr
