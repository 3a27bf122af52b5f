"""SSH connection sharing on the emulated cluster (issue 13): real sshd, real OpenSSH masters. A start
opens one connection per address it talks to, in a 0700 control directory; stop ends the masters and
removes the directory; a wedged or killed master never hangs a call; secrets stay out of every argv."""

from __future__ import annotations

import threading
import time

import pytest
from test_cluster_sim import API_KEY, HF_TOKEN, MODEL_DIR, ROOT, cli, env_for, script, seed_model, state_dir

pytestmark = [pytest.mark.sim, pytest.mark.engine]
NODE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def accepted(cluster, node: str) -> int:
    """SSH handshakes (TCP connections) the node's sshd has accepted so far."""
    return (cluster.node_dir(node) / "sshd.log").read_text(errors="replace").count("Accepted publickey")


def masters(cluster) -> list[str]:
    """The head's ssh master processes of this cluster's control directory."""
    out = cluster.exec("spark1", f"pgrep -af -- '{state_dir(cluster)}/ssh/' || true").stdout
    return [ln for ln in out.splitlines() if "[mux]" in ln]


def counting_ssh(cluster) -> tuple[str, object]:
    """An `ssh` first on the head's PATH that logs each invocation (one line) and runs the real one."""
    bin_dir = cluster.node_dir("spark1") / "count-bin"
    bin_dir.mkdir(exist_ok=True)
    log = bin_dir / "calls.log"
    log.write_text("")
    (bin_dir / "ssh").write_text(f"#!/bin/bash\na=\"$*\"\nprintf '%s\\n' \"${{a//$'\\n'/ }}\" >>{log}\n"
                                 "exec /usr/bin/ssh \"$@\"\n")
    (bin_dir / "ssh").chmod(0o755)
    return f"{bin_dir}:{NODE_PATH}", log


def test_a_start_shares_one_connection_per_address_and_stop_ends_them(sim_cluster):
    c = sim_cluster
    seed_model(c)
    seed_model(c, "spark2")  # a warm start: the copies (own bulk connections) are another test's business
    ctl = f"{state_dir(c)}/ssh"
    path, log = counting_ssh(c)
    samples: list[str] = []
    done = threading.Event()

    def sample() -> None:  # every process on both nodes, while the start runs
        while not done.is_set():
            samples.extend(c.exec(n, "ps -eo args").stdout for n in ("spark1", "spark2"))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    try:
        script(c, "stop_cluster.sh")  # no master left from an earlier test: this start opens its own
        before = accepted(c, "spark2")
        sampler.start()
        r = script(c, "start_cluster.sh", "--nodes", "2", PATH=path)
        done.set()
        sampler.join(30)
        assert r.ok, r.stdout + r.stderr
        worker = c.workers[0]
        calls = [ln for ln in log.read_text().splitlines() if worker.mgmt_ip in ln or worker.fabric_ip in ln]
        shakes = accepted(c, "spark2") - before
        mode = c.exec("spark1", f"stat -c %a {ctl}").stdout.strip()
        sockets = c.exec("spark1", f"ls {ctl}").stdout.split()
        assert mode == "700", f"control directory mode {mode}"
        assert sockets and all(len(s) == 11 and s[0] in "bc" for s in sockets), sockets
        assert len(masters(c)) == len(sockets), (masters(c), sockets)
        # one handshake per master (management and fabric address), however many calls the start made (its
        # count varies with how soon the engine answers: more calls than masters is what sharing shows)
        assert shakes <= len(sockets) <= 3 < len(calls), (shakes, sockets, calls)
        for name in sockets:
            check = c.exec("spark1", ["ssh", "-o", f"ControlPath={ctl}/{name}", "-O", "check", "x"])
            assert "Master running" in check.stderr, check.stderr
        for secret in (API_KEY, HF_TOKEN):
            assert not any(secret in s for s in samples), f"{secret} in a process list during the start"
            assert secret not in log.read_text(), f"{secret} in an ssh argv"

        stop = script(c, "stop_cluster.sh", PATH=path)
        assert stop.ok, stop.stderr
        assert c.exec("spark1", f"test -e {ctl}").returncode == 1, "stop removes the control directory"
        deadline = time.monotonic() + 5
        while masters(c) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert masters(c) == [], "stop ends the masters"
        assert sum("-O stop" in ln for ln in log.read_text().splitlines()) == len(sockets)
    finally:
        done.set()
        script(c, "stop_cluster.sh", "--force")
        for node in ("spark1", "spark2"):
            c.exec(node, f"rm -rf {MODEL_DIR}")


def worker_socket(cluster) -> str:
    code = ("from sparkhelpers.config import load_config; from sparkhelpers.topology import topology; "
            "from sparkhelpers.runner import control_path; "
            "print(control_path(topology(load_config()).workers[0].host))")
    r = cluster.exec("spark1", ["env", *env_for(cluster), str(ROOT / ".venv/bin/python"), "-c", code])
    assert r.ok, r.stderr
    return r.stdout.strip()


def master_pid(cluster, sock: str) -> int:
    r = cluster.exec("spark1", ["ssh", "-o", f"ControlPath={sock}", "-O", "check", "x"])
    assert "Master running" in r.stderr, r.stderr
    return int(r.stderr.split("pid=")[1].split(")")[0])


def test_a_stopped_or_killed_master_does_not_hang_a_call(sim_cluster):
    c = sim_cluster
    sock = worker_socket(c)
    try:
        assert cli(c, "logs", "--node", "1", "--tail", "1").returncode in (0, 1)  # any call: opens the master
        pid = master_pid(c, sock)
        c.exec("spark1", f"kill -STOP {pid}").check("stopping the master")  # accepts, never answers
        t0 = time.monotonic()
        st = cli(c, "status", "--json", timeout=60)
        elapsed = time.monotonic() - t0
        assert "did not answer; replaced" in st.stderr, st.stderr
        assert "unreachable" not in st.stdout and elapsed < 30, (elapsed, st.stdout)
        fresh = master_pid(c, sock)
        assert fresh != pid, "a new master took the socket"
        c.exec("spark1", f"kill -KILL {fresh}").check("killing the new master")  # its socket file stays
        again = cli(c, "status", "--json", timeout=60)
        assert "unreachable" not in again.stdout, again.stdout + again.stderr
        assert master_pid(c, sock) not in (pid, fresh)
    finally:
        c.exec("spark1", f"kill -CONT {pid} 2>/dev/null; kill {pid} 2>/dev/null; true")
        script(c, "stop_cluster.sh", "--force")
