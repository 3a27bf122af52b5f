"""Discoverability (issue 14): colour on a terminal only, "did you mean", --help examples that parse,
shell completion. Colour is tested through a real pty, the completion through real bash."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from test_setup_sim import run_in_pty  # a real pty, no sim needed

ROOT = Path(__file__).resolve().parents[1]
SNAPS = ROOT / "tests" / "fixtures" / "snapshots"
ESC = "\x1b["


def doctor_argv(sparkhelpers_bin) -> list[str]:
    return [*sparkhelpers_bin, "doctor", "--snapshot", f"head={SNAPS / 'spark1'}",
            "--snapshot", f"spark-02={SNAPS / 'spark2-mtu1500'}"]


def _env_argv(env: dict, argv: list[str]) -> list[str]:
    return ["env", *[f"{k}={v}" for k, v in env.items()], *argv]


def test_status_words_coloured_on_a_terminal(sparkhelpers_bin):
    rc, text = run_in_pty(_env_argv({"NO_COLOR": "", "TERM": "xterm"}, doctor_argv(sparkhelpers_bin)), [])
    assert f"{ESC}32mPASS{ESC}0m" in text and f"{ESC}31mFAIL{ESC}0m" in text, text
    assert rc == 1  # the MTU snapshot fails a check


def test_no_colour_with_no_color_or_off_a_terminal(sparkhelpers_bin):
    rc, text = run_in_pty(_env_argv({"NO_COLOR": "1", "TERM": "xterm"}, doctor_argv(sparkhelpers_bin)), [])
    assert "PASS" in text and ESC not in text
    rc, text = run_in_pty(_env_argv({"TERM": "dumb"}, doctor_argv(sparkhelpers_bin)), [])
    assert "PASS" in text and ESC not in text
    piped = subprocess.run(doctor_argv(sparkhelpers_bin), capture_output=True, text=True, timeout=60,
                           env={**os.environ, "TERM": "xterm"})
    assert "PASS" in piped.stdout and ESC not in piped.stdout + piped.stderr


def _run(sparkhelpers_bin, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*sparkhelpers_bin, *args], capture_output=True, text=True, timeout=60)


def test_did_you_mean_for_commands_presets_config_keys_and_profiles(sparkhelpers_bin):
    for args, hint in ((["modles"], "Did you mean 'models'?"), (["MODELS", "list"], "Did you mean 'models'?"),
                       (["models", "shwo"], "Did you mean 'show'?"),
                       (["models", "show", "qwen3-8"], "did you mean 'qwen3-8b'"),
                       (["config", "get", "vllm_port"], "did you mean 'VLLM_PORT'?"),
                       (["config", "set", "vllm_port", "8001"], "did you mean 'VLLM_PORT'?"),
                       (["bench", "current", "--profile", "quik"], "did you mean 'quick'?")):
        r = _run(sparkhelpers_bin, *args)
        assert r.returncode != 0 and hint in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr


def test_preset_names_and_repo_ids_match_case_insensitively(sparkhelpers_bin):
    upper = _run(sparkhelpers_bin, "models", "show", "QWEN3-8B", "--field", "name")
    repo = _run(sparkhelpers_bin, "models", "show", "qwen/qwen3-8b", "--field", "name")
    assert upper.returncode == 0 and upper.stdout.strip() == "qwen3-8b", upper.stderr
    assert repo.returncode == 0 and repo.stdout.strip() == "qwen3-8b", repo.stderr
