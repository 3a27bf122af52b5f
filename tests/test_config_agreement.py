"""The scripts' shell variables are Python's values: lib/common.sh evals `sparkhelpers config shell`.

bash never parses a config file, so the two cannot disagree; these cases prove the values survive
the trip through the quoting filter and eval unchanged (quotes, newlines, unicode), that keys only
the files set stay unexported, and that secrets and names bash itself reads never reach the shell.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sparkhelpers.config import resolve

ROOT = Path(__file__).resolve().parents[1]

# (defaults file, local file, environment). Keys compared: every key either file or the env sets.
CASES = {
    "plain": ("A=1\nB=two\n", "", {}),
    "local overrides defaults": ("A=1\nB=2\n", "B=3\n", {}),
    "env beats both files": ("A=1\n", "A=2\n", {"A": "env"}),
    "empty env value still wins": ("A=1\n", "A=2\n", {"A": ""}),
    "key set only in the environment": ("A=1\nONLY_ENV=\n", "", {"ONLY_ENV": "from-env"}),
    "single quotes": ("A='a b  c'\nB='$HOME'\n", "", {}),
    "double quotes and escapes": ('A="x \\"y\\" \\$z \\\\ w"\n', "", {}),
    "comments": ("# c\nA=1 # trailing\n  # indented\nB='#not a comment'\nC=x#y\n", "", {}),
    "export lines": ("export A=1\nexport B='two words'\n", "export A=3\n", {}),
    "default references": ("A=${UNSET_X:-dflt}\nB=${A:-no}\nC=${EMPTY-keep}\nEMPTY=\nD=${EMPTY-keep}\n", "", {}),
    "references see the environment": ("A=${HOME_X:-none}/sub\nB=$HOME_X\n", "", {"HOME_X": "/h"}),
    "local references defaults": ("HF=/raid/hf\n", "W=\"${HF}/worker\"\n", {}),
    "env overrides a key referenced later": ("A=file\nB=${A}-b\n", "", {"A": "env"}),
    "spaces around": ("   A=1   \n\tB='  padded  '\n", "", {}),
    "empty values": ("A=\nB=''\nC=\"\"\n", "D=\n", {}),
    "unicode and symbols": ("A='héllo wörld'\nB=a,b:c/d@e%f+g\n", "", {}),
    "multi-line value": ("A='line one\nline two'\n", "", {}),
    "semicolons": ("A=1; B=2\n", "", {}),
    "last assignment wins": ("A=1\nA=2\n", "A=3\nA=4\n", {}),
    "json value": ("SPEC='{\"method\": \"ngram\", \"n\": 4}'\n", "", {}),
    "tilde": ("A=~/models\nB='~/literal'\n", "", {"HOME": "/home/tester"}),
    "unset reference is empty": ("A=$NOPE_NOT_SET\nB=x${NOPE_NOT_SET}y\n", "", {}),
}


def bash_values(defaults: Path, local: Path, env: dict, keys: list[str]) -> tuple[dict, set]:
    script = (
        "set -euo pipefail; source lib/common.sh; spark_load_config; "
        'for k in "$@"; do printf "%s=%s\\0" "$k" "${!k-<unset>}"; done; '
        "printf 'EXPORTED\\0'; env -0 | cut -z -d= -f1"
    )
    full_env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": "/nonexistent", **env,
                "SPARK_HOME": str(ROOT), "SPARK_CONFIG_DEFAULTS": str(defaults), "SPARK_CONFIG": str(local)}
    out = subprocess.run(["bash", "-c", script, "bash", *keys], cwd=ROOT, env=full_env,
                         capture_output=True, check=True).stdout.decode()
    head, _, exported = out.partition("EXPORTED\0")
    values = dict(item.split("=", 1) for item in head.split("\0") if item)
    return values, set(filter(None, exported.split("\0"))), full_env


@pytest.mark.parametrize("name", list(CASES))
def test_bash_and_python_agree(name, tmp_path):
    defaults_text, local_text, env = CASES[name]
    defaults, local = tmp_path / "config.env", tmp_path / "config.local.env"
    defaults.write_text(defaults_text)
    local.write_text(local_text)
    keys = sorted({line.split("=", 1)[0].removeprefix("export ").strip(" \t;")
                   for text in (defaults_text, local_text) for part in text.split(";")
                   for line in part.splitlines() if "=" in line and not line.strip().startswith("#")
                   and line.strip()[0].isalpha()})
    keys = [k.split()[-1] for k in keys]
    bash, exported, full_env = bash_values(defaults, local, env, keys)
    py = resolve(full_env, [("config.env", defaults), ("config.local.env", local)], {}, builtin={})
    assert {k: py[k].value for k in keys} == bash
    # keys that only the files set must not leak into child processes' environment
    assert not (set(keys) - set(full_env)) & exported


def test_secrets_and_bash_owned_names_never_reach_the_shell(tmp_path):
    defaults, local = tmp_path / "config.env", tmp_path / "config.local.env"
    defaults.write_text("A=1\n")
    local.write_text("API_KEY=sk-local\nHF_TOKEN=hf_x\nIFS=x\nPATH=/evil\nPS4=boom\nlower=1\n")
    keys = ["A", "API_KEY", "HF_TOKEN", "IFS", "PS4", "lower"]
    bash, _, _ = bash_values(defaults, local, {}, keys)
    assert bash["A"] == "1"
    assert bash["API_KEY"] == bash["HF_TOKEN"] == bash["lower"] == "<unset>"
    assert bash["IFS"] != "x" and bash["PS4"] != "boom"


def test_a_failing_parse_stops_the_script(tmp_path):
    defaults, local = tmp_path / "config.env", tmp_path / "config.local.env"
    defaults.write_text("A=1\n")
    local.write_text("B='unterminated\n")
    with pytest.raises(subprocess.CalledProcessError) as err:
        bash_values(defaults, local, {}, ["A"])
    assert err.value.returncode == 1 and b"config.local.env:1: unterminated single quote" in err.value.stderr


def test_source_labels(tmp_path):
    d, lo = tmp_path / "d.env", tmp_path / "l.env"
    d.write_text("A=1\nB=1\nC=1\n")
    lo.write_text("B=2\nC=2\n")
    s = resolve({"C": "3"}, [("config.env", d), ("config.local.env", lo)], {"D": "4"}, builtin={"E": "5"})
    assert [(k, s[k].value, s[k].source) for k in "ABCDE"] == [
        ("A", "1", "config.env"), ("B", "2", "config.local.env"), ("C", "3", "environment"),
        ("D", "4", "flag"), ("E", "5", "default")]


def test_builtin_defaults_agree_with_config_env():
    from sparkhelpers.config import BUILTIN_DEFAULTS, documented_keys

    defaults = {r["key"]: r["default"] for r in documented_keys(ROOT / "config.env")}
    assert {k: defaults.get(k) for k in BUILTIN_DEFAULTS} == BUILTIN_DEFAULTS


def test_config_env_documents_every_key():
    from sparkhelpers.config import documented_keys

    rows = documented_keys(ROOT / "config.env")
    groups = {r["group"] for r in rows}
    assert {"Nodes", "Network", "Model", "Container", "Ports", "Storage", "Engine options", "Benchmark"} <= groups
    assert all(r["description"] for r in rows), [r["key"] for r in rows if not r["description"]]
    assert len({r["key"] for r in rows}) == len(rows)


@pytest.mark.parametrize("local_text", ["A='x y'\nVLLM_PORT=9001\n", "A=$(id)\n"])
def test_fast_path_answers_like_the_cli(local_text, tmp_path, monkeypatch):
    """`sparkhelpers config shell` skips Typer; its output and errors are the Typer command's."""
    local = tmp_path / "config.local.env"
    local.write_text(local_text)
    monkeypatch.setenv("SPARK_CONFIG", str(local))
    exe = Path(sys.executable).parent / "sparkhelpers"
    fast = subprocess.run([str(exe), "config", "shell"], capture_output=True, text=True)
    full = subprocess.run([sys.executable, "-c", "from sparkhelpers.cli import main; main()", "config", "shell"],
                          capture_output=True, text=True)
    assert (fast.returncode, fast.stdout, fast.stderr) == (full.returncode, full.stdout, full.stderr)
    assert "VLLM_PORT=9001\n" in fast.stdout or "config.local.env:1: command substitution" in fast.stderr
