"""Where the recipe tests' real oracles live (side venvs from tools/recipe-oracles.sh; `make oracles`)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def oracle_venv(which: str) -> Path:
    """The side venv of ``which`` ("sparkrun" or "k8s"); skip (fail under CI) when it is not installed."""
    out = subprocess.run([str(ROOT / "tools" / "recipe-oracles.sh"), "--print"], capture_output=True, text=True,
                         check=True).stdout.split()
    venv = Path(out[0 if which == "sparkrun" else 1])
    if not (venv / ".specs").is_file():
        message = f"{which} oracle is not installed in {venv} (fix: make oracles)"
        if os.environ.get("SPARK_REQUIRE_SIM"):
            pytest.fail(message)
        pytest.skip(message)
    return venv
