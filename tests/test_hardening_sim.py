"""Issue 11 fault tests on the emulated cluster: each fault ends with one clear line, exit 1 and
nothing half-started (the scripts run on the head exactly as a user runs them)."""

from __future__ import annotations

import os
import time

import pytest
from test_cluster_sim import FAULT_FILE, MODEL_DIR, cli, no_containers_left, ours, script, seed_model

from sparkhelpers.sim import faults

pytestmark = [pytest.mark.sim, pytest.mark.engine]
TWINS = ("enp1s0f1np1", "enP2p1s0f1np1")


def bound(seconds: float) -> float:
    """The issue's time bound on this shared 2-core machine: as stated at a load average up to 4, stretched
    in proportion above it (the other teams' test runs share the cores). What makes the bound hold is the
    phase the start fails in, asserted separately."""
    return seconds * max(1.0, os.getloadavg()[0] / 4)


@pytest.fixture
def seeded(sim_cluster):
    seed_model(sim_cluster)
    try:
        yield sim_cluster
    finally:
        script(sim_cluster, "stop_cluster.sh", "--force")
        for node in ("spark1", "spark2"):
            sim_cluster.exec(node, f"rm -rf {MODEL_DIR} {FAULT_FILE} /root/old-key")


def test_link_down_on_a_worker_twin_fails_the_start_within_30s(seeded):
    c = seeded
    faults.inject(c, "spark2", "link-down", "twin1")
    try:
        t0 = time.monotonic()
        r = script(c, "start_cluster.sh", "--nodes", "2")
        elapsed = time.monotonic() - t0
        assert r.returncode == 1, r.stdout + r.stderr
        assert elapsed < bound(30), f"the start took {elapsed:.1f}s to fail (load {os.getloadavg()[0]:.1f})"
        assert "[image]" not in r.stderr, "it fails in the preflight phase, before image, model and containers"
        line = next(ln for ln in r.stderr.splitlines() if "fabric preflight failed, nothing was started" in ln)
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
        wait_for(lambda: ours(c, "spark2", running_only=True), 240, what="the worker container")
        faults.inject(c, "spark2", "link-down", "twin1")
        t0 = time.monotonic()
        out, err = start.communicate(timeout=120)
        elapsed = time.monotonic() - t0
        assert start.returncode == 1, out + err
        assert elapsed < bound(45), f"diagnosed after {elapsed:.1f}s (START_TIMEOUT is 240 s)"
        line = next(ln for ln in err.splitlines() if "cannot reach its peers" in ln)
        assert "live fabric re-check" in line and c.workers[0].fabric_ip in line, err
    finally:
        if start.poll() is None:
            start.kill()
        faults.clear(c, "spark2")
    no_containers_left(c, ("spark1", "spark2"))


def http_status(cluster, path: str, key: str = "") -> int:
    """GET on the head's API (it listens in the head's network namespace)."""
    auth = f', headers={{"Authorization": "Bearer {key}"}}' if key else ""
    code = ("import urllib.request, urllib.error\n"
            f"req = urllib.request.Request('http://127.0.0.1:8000{path}'{auth})\n"
            "try:\n    print(urllib.request.urlopen(req, timeout=10).status)\n"
            "except urllib.error.HTTPError as e:\n    print(e.code)\n")
    r = cluster.exec("spark1", ["python3", "-c", code])
    assert r.ok, r.stderr
    return int(r.stdout.strip())


def test_a_rotated_key_restarts_the_engine_on_a_plain_start(seeded):
    from test_cluster_sim import API_KEY

    c = seeded
    new_key = "sk-sim-rotated-key-51e0aa"
    r = script(c, "start_cluster.sh", "--nodes", "2")
    assert r.ok, r.stdout + r.stderr
    assert "without an API key" not in r.stdout + r.stderr
    assert http_status(c, "/v1/models", API_KEY) == 200

    c.exec("spark1", f"umask 077 && printf '%s\\n' {new_key} >/root/api-key").check("rotating the key")
    rotated = script(c, "start_cluster.sh", "--nodes", "2")
    assert rotated.ok, rotated.stdout + rotated.stderr
    assert "API key or HF token changed" in rotated.stderr and "no --replace needed" in rotated.stderr
    assert "is ready" in rotated.stdout
    assert http_status(c, "/v1/models", API_KEY) == 401, "the old key no longer works"
    assert http_status(c, "/v1/models", new_key) == 200, "the new key works"
    for secret in (API_KEY, new_key):
        assert secret not in c.exec("spark1", "docker inspect $(docker ps -aq)").stdout

    again = script(c, "start_cluster.sh", "--nodes", "2")
    assert again.ok and "already running this configuration" in again.stderr

    # status with the old key: the 401 is named, with its fix; exit 1 (the API is not usable as configured)
    c.exec("spark1", f"umask 077 && printf '%s\\n' {API_KEY} >/root/old-key").check("the old key file")
    st = cli(c, "status", API_KEY_FILE="/root/old-key")
    assert st.returncode == 1 and "HTTP 401" in st.stdout and "API_KEY_FILE" in st.stdout, st.stdout + st.stderr
    assert API_KEY not in st.stdout + st.stderr
    assert cli(c, "status").returncode == 0

    # the key removed: restarted too, and an API on 0.0.0.0 without a key is a warning in the summary and status
    open_api = script(c, "start_cluster.sh", "--nodes", "2", API_KEY_FILE="")
    assert open_api.ok, open_api.stdout + open_api.stderr
    assert "warning: the API listens on 0.0.0.0" in open_api.stdout and "without an API key" in open_api.stdout
    st = cli(c, "status", API_KEY_FILE="")
    assert st.returncode == 0 and "without an API key" in st.stdout, st.stdout + st.stderr


@pytest.mark.parametrize("content", ["", "  \\n\\t\\n"], ids=["empty", "whitespace"])
def test_an_empty_key_file_is_refused_before_anything_starts(seeded, content):
    """Issue 11 item 6: an empty API_KEY_FILE used to turn authentication off without a word."""
    c = seeded
    c.exec("spark1", f"umask 077 && printf '{content}' >/root/empty-key").check("the empty key file")
    try:
        r = script(c, "start_cluster.sh", "--nodes", "2", API_KEY_FILE="/root/empty-key")
        assert r.returncode == 1, r.stdout + r.stderr
        assert "is empty (authentication would silently be off)" in r.stderr and "fix:" in r.stderr, r.stderr
        assert "is ready" not in r.stdout
        no_containers_left(c, ("spark1", "spark2"))
        assert ours(c, "spark1") == [] and ours(c, "spark2") == [], "nothing half-started"
    finally:
        c.exec("spark1", "rm -f /root/empty-key")


def _snapshot_file(cluster, node: str, name: str) -> str:
    r = cluster.exec(node, f"find {MODEL_DIR}/snapshots -name {name} | head -n 1")
    assert r.ok and r.stdout.strip(), f"{name} not on {node}"
    return r.stdout.strip()


def test_a_truncated_or_missing_file_on_a_worker_is_resynced_at_start(seeded):
    c = seeded
    r = script(c, "start_cluster.sh", "--nodes", "2")
    assert r.ok and "copying Qwen/Qwen3-0.6B" in r.stderr, r.stdout + r.stderr
    assert script(c, "stop_cluster.sh").ok
    shard = _snapshot_file(c, "spark2", "model.safetensors")
    c.exec("spark2", f"truncate -s 100 {shard} && rm {_snapshot_file(c, 'spark2', 'tokenizer.json')}").check(
        "damaging the worker's copy")

    r = script(c, "start_cluster.sh", "--nodes", "2")
    assert r.ok, r.stdout + r.stderr
    assert "copying Qwen/Qwen3-0.6B" in r.stderr and "is ready" in r.stdout
    head_size = c.exec("spark1", f"stat -Lc %s {_snapshot_file(c, 'spark1', 'model.safetensors')}").stdout
    assert c.exec("spark2", f"stat -Lc %s {shard}").stdout == head_size
    assert c.exec("spark2", f"test -f {_snapshot_file(c, 'spark2', 'tokenizer.json')}").ok

    # unchanged: one read-only check per worker, nothing copied
    assert script(c, "stop_cluster.sh").ok
    r = script(c, "start_cluster.sh", "--nodes", "2")
    assert r.ok and "nothing to copy" in r.stderr and "copying Qwen" not in r.stderr, r.stderr


def test_a_sync_that_fills_the_disk_says_so_and_removes_its_partial_files(sim_cluster):
    from test_models_sync_sim import EXE, ROOT, clean, models, seed

    c = sim_cluster
    seed(c, repo="acme/big", shard_values=5_000_000, shards=1)  # one 10 MB shard
    target = "/raid/hf-cache/hub/models--acme--big"
    c.exec("spark2", f"mkdir -p {target} && mount -t tmpfs -o size=12m sparkhelpers-test-nospace {target}").check(
        "a small disk under the worker's model directory")
    try:
        env = f"SPARK_CONFIG={c.profile} SPARK_HOME={ROOT}"
        c.exec("spark1", f"rm -f /tmp/nospace.rc; (env {env} {EXE} models sync acme/big --bwlimit 1500 "
                         ">/tmp/nospace.log 2>&1; echo $? >/tmp/nospace.rc) >/dev/null 2>&1 &").check("sync")
        in_flight = (f"find {target} -type f -size +0 \\( -name '.*' -o -path '*/.rsync-partial/*' "
                     "-o -path '*/.relay/*' \\) | grep -q .")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not c.exec("spark2", in_flight).ok:
            time.sleep(0.2)
        # another writer takes the rest of the disk while the copy runs
        c.exec("spark2", f"dd if=/dev/zero of={target}/other-writer bs=1M 2>/dev/null; true").check("filling")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not c.exec("spark1", "test -s /tmp/nospace.rc").ok:
            time.sleep(0.5)
        rc = c.exec("spark1", "cat /tmp/nospace.rc").stdout.strip()
        log = c.exec("spark1", "cat /tmp/nospace.log").stdout
        assert rc == "1", log
        line = next(ln for ln in log.splitlines() if "no space left on" in ln)
        assert f"no space left on {c.workers[0].mgmt_ip}: needs" in line and ", has " in line, log
        assert "partial files were removed" in line and "0.0 GiB" not in log and "Traceback" not in log
        assert not c.exec("spark2", f"find {target} \\( -name '.*.??????' -o -name .rsync-partial -o -name .relay "
                                    "-o -path '*/blobs/*' \\) | grep -q .").ok  # nothing partial, nothing in place
        assert not models(c, "verify", "acme/big", "--node", "1").ok
    finally:
        c.exec("spark2", f"umount {target}")
        clean(c, "acme/big")


def test_status_exit_codes_monitoring_can_trust(seeded):
    c = seeded
    down = cli(c, "status")
    assert down.returncode == 1 and "not running" in down.stdout, down.stdout + down.stderr
    faults.inject(c, "spark2", "kill-sshd")
    try:
        st = cli(c, "status")
        assert st.returncode == 2 and "ERROR unreachable:" in st.stdout, st.stdout + st.stderr
        assert "could not look at 1 node(s)" in st.stderr
        assert "Traceback" not in st.stderr
        logs = cli(c, "logs", "--node", "1")
        assert logs.returncode == 1 and "does not answer SSH" in logs.stderr and "fix:" in logs.stderr, logs.stderr
    finally:
        faults.clear(c, "spark2")
