"""setup-env.sh on the emulated cluster: non-interactive, sourced, interactive through a pseudo-terminal,
worker mode; then checkout_setup.sh --quick passes with what it wrote."""

from __future__ import annotations

import os
import pty
import re
import stat
import time
from pathlib import Path

import pytest
from ptyio import read_chunk

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.sim
TOKEN = "hf_" + "Zq7" * 10  # fake; must never show on screen, in exports or in argv


def fresh_config(cluster, tmp_path: Path) -> Path:  # noqa: ANN001
    """The sim's profile without the worker keys: what a user has before running setup-env.sh."""
    keep = [ln for ln in Path(cluster.profile).read_text().splitlines()
            if not re.match(r"^(WORKER_HOST|WORKER_IB_IP|HEAD_IP)=", ln)]
    path = Path(cluster.dir) / f"setup-{tmp_path.name}.env"  # the nodes see the cluster dir, not our /tmp
    path.write_text("\n".join(keep) + "\n")
    path.chmod(0o600)
    return path


def on_head(cluster, cmd, config: Path, **kw):  # noqa: ANN001, ANN003, ANN201
    return cluster.exec("spark1", cmd, env={"SPARK_CONFIG": str(config)}, timeout=180, **kw)


def test_non_interactive_then_checkout_passes(sim_cluster, tmp_path):
    config = fresh_config(sim_cluster, tmp_path)
    worker = sim_cluster.workers[0]
    r = on_head(sim_cluster, [str(ROOT / "setup-env.sh"), "--non-interactive", "--workers", worker.mgmt_ip,
                              "--user", "root"], config)
    assert r.returncode == 0, r.stderr
    text = config.read_text()
    assert f"WORKER_HOST={worker.mgmt_ip}" in text and f"WORKER_IB_IP={worker.fabric_ip}" in text
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    check = on_head(sim_cluster, [str(ROOT / "checkout_setup.sh"), "--quick"], config)
    assert check.returncode == 0, check.stdout + check.stderr
    # re-running keeps what is there
    again = on_head(sim_cluster, [str(ROOT / "setup-env.sh"), "--non-interactive"], config)
    assert again.returncode == 0 and "nothing changed" in again.stderr
    assert config.read_text() == text


def test_bad_worker_writes_nothing(sim_cluster, tmp_path):
    config = fresh_config(sim_cluster, tmp_path)
    before = config.read_text()
    r = on_head(sim_cluster, [str(ROOT / "setup-env.sh"), "--non-interactive", "--workers", "169.254.200.99"],
                config)
    assert r.returncode == 1
    assert "nothing written" in r.stderr and "fix:" in r.stderr
    assert config.read_text() == before


def test_sourced_exports_settings_and_keeps_shell_options(sim_cluster, tmp_path):
    config = fresh_config(sim_cluster, tmp_path)
    worker = sim_cluster.workers[0]
    script = (f"set +e +u; source {ROOT}/setup-env.sh --non-interactive --workers {worker.mgmt_ip} "
              "--hf-token-stdin 2>/dev/null; "
              'echo "rc=$? ib=$WORKER_IB_IP token=${HF_TOKEN:-unset} opts=$-"')
    r = on_head(sim_cluster, ["bash", "-c", script], config, input=TOKEN + "\n")
    assert f"rc=0 ib={worker.fabric_ip} token=unset" in r.stdout, r.stdout + r.stderr
    assert "e" not in r.stdout.split("opts=")[1] and "u" not in r.stdout.split("opts=")[1]
    assert f"HF_TOKEN={TOKEN}" in config.read_text()


def test_worker_mode_prints_what_the_head_needs(sim_cluster, tmp_path):
    worker = sim_cluster.workers[0]
    r = sim_cluster.exec(worker.name, [str(ROOT / "setup-env.sh"), "--worker"], timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"WORKER_IB_IP += {worker.fabric_ip}" in r.stdout


def run_in_pty(argv: list[str], answers: list[tuple[str, str]], timeout: float = 60) -> tuple[int, str]:
    """Run argv on a pseudo-terminal, answering each prompt (regex) in order. Returns (exit code, transcript)."""
    pid, fd = pty.fork()
    if pid == 0:  # child: the pty is its controlling terminal (getpass turns echo off on it)
        os.execvp(argv[0], argv)
    transcript, pending, deadline = b"", list(answers), time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            chunk = read_chunk(fd)
            if chunk == b"":
                break
            transcript += chunk or b""
            if pending and re.search(pending[0][0], transcript.decode(errors="replace").split("\x00")[-1]):
                prompt, answer = pending.pop(0)
                transcript += b"\x00"  # marks what was answered already
                os.write(fd, answer.encode() + b"\n")
        else:
            os.kill(pid, 9)
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    return os.waitstatus_to_exitcode(status), transcript.replace(b"\x00", b"").decode(errors="replace")


def test_interactive_run_answered_through_a_pty(sim_cluster, tmp_path):
    from sparkhelpers.sim.cluster import exec_argv

    config = fresh_config(sim_cluster, tmp_path)
    worker = sim_cluster.workers[0]
    argv = exec_argv(sim_cluster.head, [str(ROOT / "setup-env.sh")], {"SPARK_CONFIG": str(config)})
    code, screen = run_in_pty(argv, [
        (r"SSH user on the workers \[root\]: $", ""),
        (r"Model .*: $", "not-a-model"),  # unknown: explained and asked again
        (r"neither a catalog preset[\s\S]*Model .*: $", "qwen3-8b"),
        (r"Worker SSH addresses.*: $", "169.254.200.99"),  # nobody there: must be re-asked
        (r"answer again[\s\S]*Worker SSH addresses.*: $", worker.mgmt_ip),
        (r"not echoed.*: $", TOKEN),
    ])
    assert code == 0, screen
    assert "head fabric: enp1s0f1np1" in screen
    assert "FAIL  ssh" in screen and "PASS  ping-enp1s0f1np1" in screen
    assert TOKEN not in screen  # read without echo
    text = config.read_text()
    assert f"HF_TOKEN={TOKEN}" in text and "MODEL=qwen3-8b" in text and f"WORKER_IB_IP={worker.fabric_ip}" in text
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
