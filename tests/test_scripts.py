"""Every entry script: real --help (exit 0), misuse (exit 2), honest failure for unbuilt features."""

from __future__ import annotations

import os
import subprocess
import time
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


# ---- each wrapper's header and its Typer command agree, flag for flag -----------------------------

COMMAND_OF = {"setup-env.sh": ["setup"], "checkout_setup.sh": ["doctor"], "start_cluster.sh": ["cluster", "start"],
              "stop_cluster.sh": ["cluster", "stop"], "switch_model.sh": ["cluster", "switch"],
              "benchmark_current.sh": ["bench", "current"], "benchmark_all.sh": ["bench", "sweep"]}
# Flags a wrapper passes that are not for users (they stay out of the header on purpose).
INTERNAL = {"setup-env.sh": {"--print-exports"}}  # the sourced setup-env.sh asks its own child for export lines
FLAG = r"(?<![\w-])(--?[a-zA-Z][\w-]*)"


def header_flags(script: str) -> set[str]:
    """Flags in the header's Usage lines and at the start of its Options lines (not in descriptions)."""
    import re

    flags: set[str] = set()
    section = ""
    for line in (ROOT / script).read_text().splitlines()[1:]:
        if not line.startswith("#"):
            break
        text = line[1:].strip()
        if text.startswith("Usage:"):
            section = "usage"
        elif text.startswith("Options:"):
            section = "options"
            continue
        elif not text:
            section = "" if section == "usage" else section
            continue
        if section == "usage":
            flags.update(re.findall(FLAG, text))
        elif section == "options" and line.startswith("#   -"):
            flags.update(re.findall(FLAG, re.split(r"\s{2,}", text, maxsplit=1)[0]))
    return flags


def typer_flags(path: list[str]) -> set[str]:
    import click

    from sparkhelpers.cli import load_command

    cmd = load_command(path[0])
    for name in path[1:]:
        cmd = cmd.commands[name]
    return {o for p in cmd.params if isinstance(p, click.Option) and not p.hidden for o in p.opts + p.secondary_opts}


@pytest.mark.parametrize("script", SCRIPTS)
def test_header_flags_and_typer_flags_agree(script):
    header = header_flags(script) - {"-h", "--help"}
    command = typer_flags(COMMAND_OF[script]) - {"-h", "--help"} - INTERNAL.get(script, set())
    assert header - command == set(), f"in {script}'s header but not on `sparkhelpers {' '.join(COMMAND_OF[script])}`"
    assert command - header == set(), f"on `sparkhelpers {' '.join(COMMAND_OF[script])}` but not in {script}'s header"


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_wrapper_parses_exactly_its_header_flags(script):
    """spark_parse_args reads the header's Options block: each flag there reaches the core in its canonical long
    form (with its value); a flag not there is refused with exit 2 before anything runs."""
    takes_value = value_flags(script)
    probe = (f'source {ROOT}/lib/common.sh; SCRIPT_PATH={ROOT / script}; '
             f'SPARK_INTERNAL_FLAGS="{" ".join(INTERNAL.get(script, set()))}"; '
             'spark_parse_args "$@"; printf "%s\\n" "${SPARK_ARGS[@]}"')
    for flag in sorted(header_flags(script) - {"-h", "--help"}):
        value = ["VALUE"] if flag in takes_value else []
        r = subprocess.run(["bash", "-c", probe, "probe", flag, *value], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, (flag, r.stderr)
        out = r.stdout.split()
        assert out[0].startswith("--") and out[1:] == value, (flag, out)
    bad = subprocess.run(["bash", "-c", probe, "probe", "--no-such-flag"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "unknown option: --no-such-flag" in bad.stderr


# ---- the original scripts' documented flags (shared/reference/original-scripts-analysis.md) --------

ORIGINAL_FLAGS = {
    "stop_cluster.sh": ["-f", "--force", "-l", "--local-only", "-h"],
    "setup-env.sh": ["--head", "--worker", "--discover", "-h"],
    "benchmark_current.sh": ["-u", "--url", "-n", "--num-prompts", "-c", "--concurrency", "-d", "--dataset",
                             "-s", "--single", "-q", "--quick", "-o", "--output", "-h"],
    "benchmark_all.sh": ["--single-node", "--multi-node", "--models", "--skip-token", "--dry-run", "--profile", "-h"],
    "checkout_setup.sh": ["--quick", "--infiniband", "--ib", "--nccl", "--full", "--config", "-h"],
    "switch_model.sh": ["-l", "--list", "-s", "--skip-restart", "-d", "--download-only", "--skip-download", "-h"],
}


def value_flags(script: str) -> set[str]:
    """Flags whose Options line names a value (``-n, --num-prompts PROMPTS``)."""
    import re

    out: set[str] = set()
    for line in (ROOT / script).read_text().splitlines():
        m = re.match(r"#   (-.*?)(?:\s{2,}|$)", line)
        if m and re.search(r"\s[A-Z][A-Z_=|]*(\s|$)", m.group(1)):
            out.update(re.findall(FLAG, m.group(1)))
    return out


@pytest.mark.parametrize("script", sorted(ORIGINAL_FLAGS))
def test_every_flag_the_original_documented_is_accepted(script):
    missing = [f for f in ORIGINAL_FLAGS[script] if f not in header_flags(script) | {"-h"}]
    assert missing == [], f"{script} lacks the original's {missing}"
    takes_value = value_flags(script)
    for flag in ORIGINAL_FLAGS[script]:
        value = ["1"] if flag in takes_value else []
        r = run(ROOT / script, flag, *value, "--help", cwd="/")  # an unknown flag exits 2 before --help
        assert r.returncode == 0 and r.stdout.startswith("Summary: "), (flag, r.stderr)


# ---- every entry script execs the core: a kill of its PID ends the work, nothing is left behind --------

SILENT = """
import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(16)
print(s.getsockname()[1], flush=True)
conns = []
while True:
    c, _ = s.accept(); conns.append(c)  # accept, never answer
"""


@pytest.fixture
def silent_port():
    proc = subprocess.Popen([os.sys.executable, "-c", SILENT], stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline())
    yield port
    proc.kill()
    proc.wait()


@pytest.fixture
def held_lock():
    from sparkhelpers.locking import HELD_ENV

    code = ("import time\nfrom sparkhelpers.locking import cluster_lock\nwith cluster_lock(what='test holder'):\n"
            "    print('locked', flush=True)\n    time.sleep(120)\n")
    proc = subprocess.Popen([os.sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={k: v for k, v in os.environ.items() if k != HELD_ENV})
    assert proc.stdout.readline().strip() == "locked"
    yield proc
    proc.kill()
    proc.wait()


def is_python(pid: int) -> bool:
    try:
        return Path(os.readlink(f"/proc/{pid}/exe")).name.startswith("python")
    except OSError:
        return False


def marked(marker: str) -> list[int]:
    """PIDs whose environment carries the marker (the script, the core and anything they started)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if f"SPARK_TEST_MARKER={marker}".encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def kill_and_check(argv: list[str], env: dict, *, settle: float = 1.5, stdin=subprocess.DEVNULL) -> str:
    import signal
    import uuid

    marker = uuid.uuid4().hex
    proc = subprocess.Popen(argv, cwd="/", env={**env, "SPARK_TEST_MARKER": marker}, stdin=stdin,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not is_python(proc.pid) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert is_python(proc.pid), f"{argv[0]} did not exec the core (pid {proc.pid} is still the script)"
    time.sleep(settle)  # let the core get into its work (waiting for the lock, a connection, a prompt)
    assert proc.poll() is None, proc.communicate()
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    deadline = time.monotonic() + 10
    while marked(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marked(marker) == [], f"left behind by {argv[0]}: {marked(marker)}"
    return err


def lock_is_free() -> bool:
    from sparkhelpers.config import load_config
    from sparkhelpers.locking import HELD_ENV, cluster_lock

    os.environ.pop(HELD_ENV, None)
    with cluster_lock(load_config(), note=lambda _m: None):
        return True


def test_kill_of_a_stop_waiting_for_the_lock(held_lock):
    kill_and_check([str(ROOT / "stop_cluster.sh")], dict(os.environ))
    held_lock.kill()
    held_lock.wait()
    assert lock_is_free()


def test_kill_of_a_switch_waiting_for_the_lock(held_lock):
    kill_and_check([str(ROOT / "switch_model.sh"), "--wait", "60", "--skip-download", "--skip-restart", "qwen3-8b"],
                   dict(os.environ))
    assert "MODEL=" not in Path(os.environ["SPARK_CONFIG"]).read_text()


def test_kill_of_a_benchmark_against_a_silent_server(silent_port):
    kill_and_check([str(ROOT / "benchmark_current.sh"), "-u", f"http://127.0.0.1:{silent_port}", "--single"],
                   dict(os.environ))


@pytest.mark.parametrize("script", ["checkout_setup.sh", "setup-env.sh"])
def test_kill_of_a_check_connecting_to_a_silent_worker(script, silent_port):
    env = {**os.environ, "WORKER_HOST": "127.0.0.1", "SSH_OPTIONS": f"-p {silent_port}", "SSH_CONNECT_TIMEOUT": "60"}
    args = ["--non-interactive"] if script == "setup-env.sh" else []
    kill_and_check([str(ROOT / script), *args], env, settle=4)


def test_kill_of_a_sweep_waiting_for_its_confirmation():
    import pty

    leader, follower = pty.openpty()
    try:
        kill_and_check([str(ROOT / "benchmark_all.sh"), "--models", "qwen3-8b", "--profile", "smoke"],
                       dict(os.environ), stdin=follower)
    finally:
        os.close(leader)
        os.close(follower)
    assert lock_is_free()


@pytest.mark.sim
@pytest.mark.engine
def test_kill_of_a_start_on_the_emulated_cluster_leaves_nothing(sim_cluster):
    """start_cluster.sh on the sim's head; once a container is up, `kill` the PID the lock names."""
    import json
    import uuid

    from test_cluster_sim import MODEL_DIR, env_for, ours, seed_model, state_dir

    from sparkhelpers.sim.cluster import exec_argv

    c = sim_cluster
    seed_model(c)
    marker = uuid.uuid4().hex
    lock = f"{state_dir(c)}/cluster.lock"
    argv = ["env", *env_for(c), f"SPARK_TEST_MARKER={marker}", str(ROOT / "start_cluster.sh"), "--nodes", "2"]
    proc = subprocess.Popen(exec_argv(c.node("spark1"), argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None and not (ours(c, "spark1") or ours(c, "spark2")):
            time.sleep(0.5)
        assert proc.poll() is None, proc.communicate()
        record = c.exec("spark1", f"cat {lock}").stdout
        assert "(start_cluster.sh)" in record, record
        pid = record.split()[1]
        assert c.exec("spark1", f"readlink /proc/{pid}/exe").stdout.strip().split("/")[-1].startswith("python")
        c.exec("spark1", f"kill -TERM {pid}").check("signalling the start")
        _, err = proc.communicate(timeout=180)
        assert proc.returncode != 0 and "containers it started were removed" in err, err[-2000:]
        for node in ("spark1", "spark2"):
            assert ours(c, node) == [], f"a container of ours is left on {node}"
            left = c.exec(node, f"grep -l SPARK_TEST_MARKER={marker} /proc/[0-9]*/environ 2>/dev/null || true")
            assert left.stdout.strip() == "", f"processes left on {node}: {left.stdout}"
        assert c.exec("spark1", f"cat {lock}").stdout.strip() == "", "the lock record was not released"
        probe = c.exec("spark1", ["flock", "-n", lock, "true"])
        assert probe.ok, "the lock is still held"
        assert json.loads(c.exec("spark1", ["env", *env_for(c), str(ROOT / ".venv/bin/sparkhelpers"), "status",
                                            "--json"]).stdout or "{}").get("running") in (False, None)
    finally:
        if proc.poll() is None:
            proc.kill()
        c.exec("spark1", ["env", *env_for(c), str(ROOT / "stop_cluster.sh"), "--force"], timeout=120)
        for node in ("spark1", "spark2"):
            c.exec(node, f"rm -rf {MODEL_DIR}")
