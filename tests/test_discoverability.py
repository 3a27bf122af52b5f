"""Discoverability (issue 14): colour on a terminal only, "did you mean", --help examples that parse,
shell completion. Colour is tested through a real pty, the completion through real bash."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import test_bench_quirks
from test_setup_sim import run_in_pty  # a real pty, no sim needed

ROOT = Path(__file__).resolve().parents[1]
SNAPS = ROOT / "tests" / "fixtures" / "snapshots"
ESC = "\x1b["
quirks = test_bench_quirks.quirks  # a real OpenAI-compatible server


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


def _leaves(command, path=()):  # noqa: ANN001, ANN202
    subs = command.list_commands(None) if hasattr(command, "list_commands") else []
    if not subs or getattr(command, "invoke_without_command", False):
        yield " ".join(path), command
    for name in subs:
        sub = command.get_command(None, name)
        if sub is not None and not sub.hidden:
            yield from _leaves(sub, (*path, name))


def _parse(root, argv: list[str]) -> None:
    """Parse argv down to its command the way click would run it, without running anything."""
    ctx = root.make_context("sparkhelpers", list(argv))
    command, args = root, [*ctx._protected_args, *ctx.args]
    while hasattr(command, "resolve_command") and args:
        name, command, args = command.resolve_command(ctx, args)
        ctx = command.make_context(name, list(args), parent=ctx)
        args = [*getattr(ctx, "_protected_args", []), *ctx.args] if hasattr(command, "resolve_command") else []


def test_every_command_has_examples_and_each_example_parses():
    """Examples come from sparkhelpers/examples.py, or from an "Example: sparkhelpers ..." line in the help."""
    import re
    import shlex

    from typer.main import get_command

    from sparkhelpers import cli
    from sparkhelpers.examples import EXAMPLES

    root = get_command(cli.app)
    leaves = dict(_leaves(root))
    assert not [p for p in EXAMPLES if p and p not in leaves], "examples for commands that do not exist"
    found = {path: list(EXAMPLES.get(path, ())) for path in ["", *leaves]}
    for path, command in leaves.items():
        found[path] += re.findall(r"Examples?: (sparkhelpers [^\n]+)", command.help or "")
    assert not [p for p, lines in found.items() if not lines], "commands without an example"
    for lines in found.values():
        for line in lines:
            argv = re.search(r"sparkhelpers ([^|)]*)", line).group(1)
            _parse(root, shlex.split(argv))  # a bad flag, value or missing argument raises UsageError


def test_help_shows_the_examples(sparkhelpers_bin):
    r = _run(sparkhelpers_bin, "models", "fit", "--help")
    assert "Examples:\n    sparkhelpers models fit qwen3-32b --nodes 2" in r.stdout


def test_chat_one_shot_streams_the_reply(quirks, sparkhelpers_bin):
    quirks.requests.clear()
    r = _run(sparkhelpers_bin, "chat", "--url", f"http://127.0.0.1:{quirks.port}/v1", "--model", "normal",
             "--max-tokens", "4", "--system", "be brief", "hello there")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "t0t1t2t3\n"
    body = quirks.requests[-1]["body"]
    assert body["stream"] is True and body["messages"] == [{"role": "system", "content": "be brief"},
                                                           {"role": "user", "content": "hello there"}]
    piped = subprocess.run([*sparkhelpers_bin, "chat", "--url", f"http://127.0.0.1:{quirks.port}", "--max-tokens",
                            "2"], input="from stdin", capture_output=True, text=True, timeout=60)
    assert piped.returncode == 0 and piped.stdout == "t0t1\n"  # the first served model, the message from stdin


def test_chat_interactive_keeps_the_conversation(quirks, sparkhelpers_bin):
    quirks.requests.clear()
    rc, text = run_in_pty([*sparkhelpers_bin, "chat", "--url", f"http://127.0.0.1:{quirks.port}", "--model", "normal",
                           "--max-tokens", "3"], [(r"you> $", "first"), (r"you> $", "second"), (r"you> $", "/exit")])
    assert rc == 0, text
    assert "chatting with normal" in text and text.count("t0t1t2") == 2
    second = quirks.requests[-1]["body"]["messages"]
    assert [m["content"] for m in second] == ["first", "t0t1t2", "second"]


def test_chat_unknown_model_and_no_server_are_one_line(quirks, sparkhelpers_bin):
    r = _run(sparkhelpers_bin, "chat", "--url", f"http://127.0.0.1:{quirks.port}", "--model", "norml", "hi")
    assert r.returncode == 2 and "does not serve 'norml'" in r.stderr and "did you mean 'normal'?" in r.stderr
    r = _run(sparkhelpers_bin, "chat", "--url", "http://127.0.0.1:9", "hi")
    assert r.returncode == 1 and "cannot reach" in r.stderr and "Traceback" not in r.stderr


def _complete(script: str, words: list[str], *, env: dict | None = None) -> list[str]:
    """COMPREPLY of lib/completion.bash's function for ``words`` in a real bash."""
    import shlex

    fn = "_sparkhelpers_completion" if words[0] == "sparkhelpers" else "_spark_scripts_completion"
    code = (f"source {shlex.quote(str(ROOT / 'lib' / 'completion.bash'))}; "
            f"COMP_WORDS=({' '.join(shlex.quote(w) for w in words)}); COMP_CWORD={len(words) - 1}; "
            f"{fn}; printf '%s\\n' \"${{COMPREPLY[@]}}\"")
    r = subprocess.run(["bash", "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT,
                       env={**os.environ, **(env or {})})
    assert r.returncode == 0, r.stderr
    return [x for x in r.stdout.splitlines() if x]


def test_bash_completion_of_sub_commands_presets_and_script_flags():
    assert _complete("", ["sparkhelpers", "mod"]) == ["models"]
    assert set(_complete("", ["sparkhelpers", "models", "s"])) == {"show", "sync", "smoke"}
    presets = _complete("", ["sparkhelpers", "models", "show", "qwen3-3"])
    assert presets and all(p.startswith("qwen3-3") for p in presets) and "qwen3-32b" in presets
    assert "qwen3-8b" in _complete("", ["./switch_model.sh", "qwen3-8"])  # the script's NAME: preset names
    assert _complete("", ["./switch_model.sh", "--sk"]) == ["--skip-download", "--skip-restart"]
    flags = _complete("", ["start_cluster.sh", "--"])
    assert {"--dry-run", "--replace", "--help"} <= set(flags)


def test_every_script_flag_in_its_header_completes():
    import re

    for script in ("setup-env.sh", "checkout_setup.sh", "start_cluster.sh", "stop_cluster.sh", "switch_model.sh",
                   "benchmark_current.sh", "benchmark_all.sh"):
        header = "\n".join(line for line in (ROOT / script).read_text().splitlines()[1:40] if line.startswith("#"))
        documented = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", header))
        assert documented <= set(_complete("", [f"./{script}", "--"])), script


def test_install_and_show_completion_are_enabled(sparkhelpers_bin):
    r = _run(sparkhelpers_bin, "--show-completion", "bash")
    assert r.returncode == 0 and "_SPARKHELPERS_COMPLETE=complete_bash" in r.stdout
    assert "--install-completion" in _run(sparkhelpers_bin, "--help").stdout
