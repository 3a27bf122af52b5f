"""Relay faults on a 4-node emulated cluster (3 workers in a chain: spark2 -> spark3 -> spark4): a middle
worker dies mid-relay, one fabric twin is down, one worker's disk fills mid-relay; and on 6 nodes (5 workers)
the tree, with an inner node dying mid-relay. Real sshd, real tc/links, the shipped agent on every node."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from polling import wait_for  # noqa: E402
from test_models_sync_sim import EXE, ROOT, clean, host_cache, models, seed  # noqa: E402

from sparkhelpers.sim import faults  # noqa: E402

pytestmark = pytest.mark.sim
REPO = "acme/relay"
MODEL_DIR = "/raid/hf-cache/hub/models--acme--relay"


def start_sync(c, *args: str) -> None:  # noqa: ANN001
    """``models sync`` on the head in the background; its exit code lands in /tmp/relay.rc."""
    env = f"SPARK_CONFIG={c.profile} SPARK_HOME={ROOT} SSH_CONNECT_TIMEOUT=3"
    c.exec("spark1", f"rm -f /tmp/relay.rc; (env {env} {EXE} models sync {REPO} --json {' '.join(args)} "
                     ">/tmp/relay.out 2>/tmp/relay.log; echo $? >/tmp/relay.rc) >/dev/null 2>&1 &").check("sync")


def staged_bytes(c, node: str) -> int:  # noqa: ANN001
    stage = host_cache(c, node) / "hub" / "models--acme--relay" / ".relay"
    return sum(p.stat().st_size for p in stage.glob("*.part")) if stage.is_dir() else 0


def finished(c) -> tuple[int, str, str]:  # noqa: ANN001
    wait_for(lambda: c.exec("spark1", "test -s /tmp/relay.rc").ok, 300, what="the sync to end")
    rc = int(c.exec("spark1", "cat /tmp/relay.rc").stdout)
    return rc, c.exec("spark1", "cat /tmp/relay.out").stdout, c.exec("spark1", "cat /tmp/relay.log").stdout


def complete_on(c, node) -> bool:  # noqa: ANN001
    return models(c, "verify", REPO, "--node", node.mgmt_ip).ok


@pytest.fixture
def four(make_sim):
    c = make_sim(nodes=4)
    seed(c, repo=REPO, shard_values=12_000_000, shards=2)  # 2 x 24 MB shards: several 16 MiB chunks
    return c


def test_a_middle_worker_down_mid_relay_is_named_and_the_others_complete(four):
    c = four
    w2, w3, w4 = c.workers
    start_sync(c, "--bwlimit", "3000", "--idle-timeout", "5")  # ~17 s of copying: time to pull the plug
    wait_for(lambda: staged_bytes(c, "spark3") > 2_000_000, 120, what="spark3 to hold part of the model")
    faults.inject(c, "spark3", "stop-node")
    rc, out, log = finished(c)
    assert rc == 1, log
    line = next(ln for ln in log.splitlines() if "failed on 1 worker(s)" in ln)
    assert f"{w3.mgmt_ip}: unreachable over SSH" in line and f"{w2.mgmt_ip}, {w4.mgmt_ip} complete" in line, log
    assert f"head -> {w2.mgmt_ip} -> {w3.mgmt_ip} -> {w4.mgmt_ip}" in log  # the chain it started with
    assert f"head -> {w4.mgmt_ip}" in log and "routing around and resuming" in log  # then w3 left out
    rows = {r["worker"]: r for r in json.loads(out)}
    assert rows[w3.mgmt_ip]["action"] == "failed" and rows[w2.mgmt_ip]["verified"] and rows[w4.mgmt_ip]["verified"]
    assert complete_on(c, w2) and complete_on(c, w4)
    assert "Traceback" not in log
    # the node comes back: the next sync fills in only what it lacks and exits 0
    faults.inject(c, "spark3", "clear")
    r = models(c, "sync", REPO, "--json")
    assert r.ok, r.stderr
    assert {x["worker"]: x["action"] for x in json.loads(r.stdout)} == {
        w2.mgmt_ip: "present", w3.mgmt_ip: "copied", w4.mgmt_ip: "present"}
    assert complete_on(c, w3)


def test_a_full_disk_on_one_worker_is_named_and_leaves_nothing_partial(four):
    c = four
    w2, w3, w4 = c.workers
    faults.inject(c, "spark3", "limit-disk", "80")  # room for the model at the preflight...
    try:
        start_sync(c, "--bwlimit", "3000", "--idle-timeout", "5")
        wait_for(lambda: c.exec("spark3", f"test -d {MODEL_DIR}/.relay && "
                                          f"[ $(du -sb {MODEL_DIR}/.relay | cut -f1) -gt 2000000 ]").ok,
                 120, what="spark3 to hold part of the model")
        faults.inject(c, "spark3", "fill-disk")  # ...then another writer takes the rest mid-relay
        rc, out, log = finished(c)
        assert rc == 1, log
        line = next(ln for ln in log.splitlines() if "failed on 1 worker(s)" in ln)
        assert f"no space left on {w3.mgmt_ip}: needs" in line and "partial files were removed" in line, log
        assert f"{w2.mgmt_ip}, {w4.mgmt_ip} complete" in line  # spark3 kept forwarding to spark4
        assert complete_on(c, w2) and complete_on(c, w4) and not complete_on(c, w3)
        # nothing the engine could pick up: no staging left, no blob, no snapshot link in place
        left = c.exec("spark3", f"find {MODEL_DIR} -mindepth 1 \\( -name .relay -o -path '*/blobs/*' -o "
                                f"-path '*/snapshots/*' \\) 2>/dev/null")
        assert left.stdout.strip() == "", left.stdout
    finally:
        faults.inject(c, "spark3", "free-disk")


def test_one_twin_down_falls_back_to_one_twin_with_a_warning(sim_cluster):
    c = sim_cluster
    worker = c.workers[0]
    seed(c, repo=REPO, shard_values=3_000_000, shards=1)
    faults.inject(c, worker.name, "link-down", "twin2")
    try:
        r = models(c, "sync", REPO, "--json")
        assert r.ok, r.stderr
        assert (f"second fabric twin {worker.fabric2_ip} does not answer SSH" in r.stderr
                and "copying over one twin only" in r.stderr), r.stderr
        assert "over 1 twin(s)" in r.stderr
        (row,) = json.loads(r.stdout)
        assert row["lanes"] == 1 and row["verified"] and row["action"] == "copied"
        clean(c, REPO)
        seed(c, repo=REPO, shard_values=3_000_000, shards=1)
        faults.inject(c, worker.name, "link-up", "twin2")
        r = models(c, "sync", REPO, "--json")  # both twins again: two streams, no warning
        assert r.ok and "over 2 twin(s)" in r.stderr and "one twin only" not in r.stderr, r.stderr
        assert json.loads(r.stdout)[0]["lanes"] == 2
    finally:
        faults.inject(c, worker.name, "link-up", "twin2")
        clean(c, REPO)


def test_an_interrupted_relay_resumes_with_only_the_missing_chunks(sim_cluster):
    c = sim_cluster
    files = seed(c, repo=REPO, shard_values=20_000_000, shards=1)  # one 40 MB shard: 3 chunks of 16 MiB
    shard = next(v for k, v in files.items() if k.endswith(".safetensors"))
    stage = f"{MODEL_DIR}/.relay"
    try:
        env = f"SPARK_CONFIG={c.profile} SPARK_HOME={ROOT}"
        c.exec("spark1", f"env {env} setsid {EXE} models sync {REPO} --bwlimit 3000 >/dev/null 2>&1 & "
                         "echo $! > /tmp/relay-interrupted.pid").check("sync")
        # once a 16 MiB chunk of the shard is journaled on the worker (durable; the small files' one chunk
        # each comes first), kill the whole sync on the head
        wait_for(lambda: c.exec("spark2", f"[ $(cat {stage}/*.lane* 2>/dev/null | wc -l) -ge 2 ]").ok,
                 120, what="a journaled chunk of the shard")
        c.exec("spark1", "pid=$(cat /tmp/relay-interrupted.pid); kill -TERM -- -$pid; "
                         "while kill -0 $pid 2>/dev/null; do sleep 0.1; done; true").check("interrupting")
        assert not complete_on(c, c.workers[0])  # nothing half-done is taken for a copy
        assert c.exec("spark2", f"test ! -e {MODEL_DIR}/snapshots").ok  # and the engine sees no snapshot
        r = models(c, "sync", REPO, "--json")
        assert r.ok, r.stderr
        (row,) = json.loads(r.stdout)
        assert row["action"] == "copied" and row["verified"] and row["method"] == "relay"
        assert 0 < row["bytes"] < len(shard), row  # only the chunks the journal did not hold were sent
        assert complete_on(c, c.workers[0])
    finally:
        clean(c, REPO)


def test_five_workers_relay_as_a_tree_and_a_dead_inner_node_is_routed_around(make_sim):
    """Past CHAIN_MAX (4) workers the relay is a tree (two children a node): head -> w2; w2 -> w3, w4;
    w3 -> w5, w6. w3 stops mid-relay: it is named, and w5 and w6 below it are fed in the next round."""
    c = make_sim(nodes=6)
    seed(c, repo=REPO, shard_values=12_000_000, shards=2)
    w2, w3, w4, w5, w6 = c.workers
    start_sync(c, "--bwlimit", "3000", "--idle-timeout", "5")
    wait_for(lambda: staged_bytes(c, "spark3") > 2_000_000, 120, what="spark3 to hold part of the model")
    faults.inject(c, "spark3", "stop-node")
    rc, out, log = finished(c)
    assert rc == 1, log
    assert (f"head -> {w2.mgmt_ip}; {w2.mgmt_ip} -> {w3.mgmt_ip}, {w4.mgmt_ip}; "
            f"{w3.mgmt_ip} -> {w5.mgmt_ip}, {w6.mgmt_ip}") in log  # the tree it started with
    line = next(ln for ln in log.splitlines() if "failed on 1 worker(s)" in ln)
    assert f"{w3.mgmt_ip}: unreachable over SSH" in line, log
    rows = {r["worker"]: r for r in json.loads(out)}
    assert rows[w3.mgmt_ip]["action"] == "failed"
    for w in (w2, w4, w5, w6):  # the two cut off below w3 included
        assert rows[w.mgmt_ip]["verified"], rows[w.mgmt_ip]
        assert complete_on(c, w), w.name
    assert "Traceback" not in log
