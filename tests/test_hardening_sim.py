"""Issue 11 fault tests on the emulated cluster: each fault ends with one clear line, exit 1 and
nothing half-started (the scripts run on the head exactly as a user runs them)."""

from __future__ import annotations

import time

import pytest
from test_cluster_sim import FAULT_FILE, MODEL_DIR, no_containers_left, ours, script, seed_model

from sparkhelpers.sim import faults

pytestmark = [pytest.mark.sim, pytest.mark.engine]
TWINS = ("enp1s0f1np1", "enP2p1s0f1np1")


@pytest.fixture
def seeded(sim_cluster):
    seed_model(sim_cluster)
    try:
        yield sim_cluster
    finally:
        script(sim_cluster, "stop_cluster.sh", "--force")
        for node in ("spark1", "spark2"):
            sim_cluster.exec(node, f"rm -rf {MODEL_DIR} {FAULT_FILE}")


def test_link_down_on_a_worker_twin_fails_the_start_within_30s(seeded):
    c = seeded
    faults.inject(c, "spark2", "link-down", "twin1")
    try:
        t0 = time.monotonic()
        r = script(c, "start_cluster.sh", "--nodes", "2")
        elapsed = time.monotonic() - t0
        assert r.returncode == 1, r.stdout + r.stderr
        assert elapsed < 30, f"the start took {elapsed:.1f}s to fail"
        line = next(ln for ln in r.stderr.splitlines() if "fabric preflight failed" in ln)
        assert c.workers[0].mgmt_ip in line and "enp1s0f1np1" in line, r.stderr
        assert "fix: `sudo ip link set enp1s0f1np1 up`" in r.stderr
        assert "[containers]" not in r.stderr, "nothing starts after a failed preflight"
        assert ours(c, "spark1") == [] and ours(c, "spark2") == []
    finally:
        faults.clear(c, "spark2")


def test_mtu_mismatch_between_nodes_is_refused(seeded):
    c = seeded
    c.exec("spark2", " && ".join(f"ip link set dev {t} mtu 1500" for t in TWINS)).check("lowering spark2's MTU")
    try:
        r = script(c, "start_cluster.sh", "--nodes", "2")
        assert r.returncode == 1, r.stdout + r.stderr
        assert "fabric preflight failed" in r.stderr and "MTU differs" in r.stderr and "mtu: 9000" in r.stderr
        no_containers_left(c, ("spark1", "spark2"))
    finally:
        c.exec("spark2", " && ".join(f"ip link set dev {t} mtu 9000" for t in TWINS)).check("restoring the MTU")


def test_a_link_lost_while_waiting_for_health_is_diagnosed_in_bounded_time(seeded):
    from test_cluster_sim import background_start, wait_for

    c = seeded
    c.exec("spark1", f"echo hang-load >{FAULT_FILE}").check("the head's engine hangs while loading")
    start = background_start(c, "--nodes", "2")
    try:
        wait_for(lambda: ours(c, "spark2", running_only=True), 240, "the worker container")
        faults.inject(c, "spark2", "link-down", "twin1")
        t0 = time.monotonic()
        out, err = start.communicate(timeout=120)
        elapsed = time.monotonic() - t0
        assert start.returncode == 1, out + err
        assert elapsed < 45, f"diagnosed after {elapsed:.1f}s (START_TIMEOUT is 240 s)"
        line = next(ln for ln in err.splitlines() if "cannot reach its peers" in ln)
        assert "live fabric re-check" in line and c.workers[0].fabric_ip in line, err
    finally:
        if start.poll() is None:
            start.kill()
        faults.clear(c, "spark2")
    no_containers_left(c, ("spark1", "spark2"))
