"""The cluster lock: Python and the shell lock the same file and exclude each other."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from sparkhelpers.config import load_config
from sparkhelpers.errors import SparkError
from sparkhelpers.locking import HELD_ENV, cluster_lock, lock_path

ROOT = Path(__file__).resolve().parents[1]


def shell(snippet: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", f"source lib/common.sh; spark_load_config; {snippet}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=30, env={**os.environ, **env})


def test_lock_file_lives_in_the_state_dir(isolated_env):
    assert lock_path(load_config()) == isolated_env / "state" / "cluster.lock"


def test_second_python_holder_fails_naming_the_first():
    cfg = load_config()
    with cluster_lock(cfg, what="start_cluster.sh") as path:
        os.environ.pop(HELD_ENV)  # pretend to be an unrelated process
        try:
            with pytest.raises(SparkError, match=r"busy: pid \d+ \(start_cluster.sh\)"), cluster_lock(cfg):
                pass
        finally:
            os.environ[HELD_ENV] = str(path)
    with cluster_lock(cfg):  # released on exit
        pass


def test_children_of_the_holder_do_not_deadlock():
    cfg = load_config()
    with cluster_lock(cfg, what="outer"), cluster_lock(cfg, what="inner"):
        r = shell("spark_lock child 0 && echo child-ok")
        assert r.returncode == 0 and "child-ok" in r.stdout


def test_shell_holder_blocks_python_and_frees_on_exit():
    proc = subprocess.Popen(["bash", "-c", "source lib/common.sh; spark_load_config; spark_lock benchmark_all.sh; "
                             "echo locked; sleep 30"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(SparkError, match=r"benchmark_all.sh"), cluster_lock(load_config()):
            pass
        r = shell("spark_lock second 0")
        assert r.returncode == 1 and "the cluster is busy" in r.stderr and "fix:" in r.stderr
    finally:
        proc.kill()
        proc.wait()
    t0 = time.monotonic()
    with cluster_lock(load_config(), wait_s=5):  # the kernel freed the killed holder's lock
        pass
    assert time.monotonic() - t0 < 5
