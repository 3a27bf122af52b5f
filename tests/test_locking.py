"""The cluster lock: Python alone takes it; it names its holder, frees itself when the holder dies, and a
record left by a dead holder is taken over with a note."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sparkhelpers.config import load_config
from sparkhelpers.errors import SparkError
from sparkhelpers.locking import HELD_ENV, cluster_lock, holder, lock_path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(ROOT.glob("*.sh"))

HOLDER = """
import sys, time
from sparkhelpers.locking import cluster_lock
with cluster_lock(what=sys.argv[1]) as path:
    if len(sys.argv) > 2:
        path.write_text(sys.argv[2])  # a misleading record: the kernel still knows who holds it
    print("locked", flush=True)
    time.sleep(float(sys.argv[3]) if len(sys.argv) > 3 else 60)
"""


def hold(what: str = "start_cluster.sh", record: str = "", seconds: float = 60) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != HELD_ENV}
    args = [sys.executable, "-c", HOLDER, what] + ([record, str(seconds)] if record or seconds != 60 else [])
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_lock_file_lives_in_the_state_dir(isolated_env):
    assert lock_path(load_config()) == isolated_env / "state" / "cluster.lock"


def test_busy_names_the_holder_pid_and_how_to_end_it():
    proc = hold()
    try:
        with pytest.raises(SparkError) as err, cluster_lock(load_config()):
            pass
        assert f"busy: pid {proc.pid} (start_cluster.sh)" in err.value.message
        assert "stop_cluster.sh --force" in err.value.fix and f"pid {proc.pid}" in err.value.fix
    finally:
        proc.kill()
        proc.wait()


def test_the_kernel_names_the_real_holder_when_the_record_lies():
    proc = hold(record="pid 999999 (gone) since long ago\n", seconds=60)
    try:
        with pytest.raises(SparkError, match=rf"busy: pid {proc.pid} \(recorded: pid 999999"), \
                cluster_lock(load_config()):
            pass
    finally:
        proc.kill()
        proc.wait()


def test_nested_holders_in_one_process_and_its_children_do_not_deadlock():
    cfg = load_config()
    with cluster_lock(cfg, what="outer"), cluster_lock(cfg, what="inner") as path:
        assert holder(path).startswith(f"pid {os.getpid()} (outer)")
        child = subprocess.run([sys.executable, "-c", "from sparkhelpers.locking import cluster_lock\n"
                                "with cluster_lock(): print('child-ok')"], capture_output=True, text=True, timeout=30)
        assert child.returncode == 0 and "child-ok" in child.stdout


def test_clean_release_leaves_no_record_and_a_dead_holder_is_taken_over_with_a_note():
    cfg = load_config()
    with cluster_lock(cfg) as path:
        pass
    assert holder(path) == ""
    proc = hold(what="benchmark_all.sh")
    proc.send_signal(signal.SIGKILL)  # dies holding it: the kernel frees the flock, the record stays
    proc.wait()
    assert holder(path).startswith(f"pid {proc.pid} (benchmark_all.sh)")
    notes: list[str] = []
    t0 = time.monotonic()
    with cluster_lock(cfg, what="switch_model.sh", note=notes.append):
        assert holder(path).startswith(f"pid {os.getpid()} (switch_model.sh)")
    assert time.monotonic() - t0 < 5
    assert notes and f"taking over the cluster lock from pid {proc.pid} (benchmark_all.sh)" in notes[0]


def test_stop_force_ends_the_lock_holder():
    proc = hold(what="start_cluster.sh")
    try:
        r = subprocess.run([str(ROOT / "stop_cluster.sh"), "--force", "--local-only"], capture_output=True,
                           text=True, timeout=60, env={**{k: v for k, v in os.environ.items() if k != HELD_ENV},
                                                         "CLUSTER_NAME": f"locktest{os.getpid()}"})
        assert f"ending the lock holder pid {proc.pid} (start_cluster.sh)" in r.stderr, r.stderr
        assert proc.wait(timeout=30) == -signal.SIGTERM
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_no_script_takes_a_lock_of_its_own(script):
    text = script.read_text()
    assert "flock" not in text and "spark_lock" not in text


def test_the_shell_library_has_no_lock():
    text = (ROOT / "lib" / "common.sh").read_text()
    assert "flock" not in text and "spark_lock" not in text and "cluster.lock" not in text
