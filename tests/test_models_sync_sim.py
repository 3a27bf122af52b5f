"""Model sync on the emulated cluster: real sshd, rsync and fabric links between namespaced nodes."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from hubstub import fake_model, write_cached_model  # noqa: E402

pytestmark = pytest.mark.sim
ROOT = Path(__file__).resolve().parents[1]
EXE = str(Path(sys.executable).parent / "sparkhelpers")


def host_cache(cluster, node: str) -> Path:
    """A node's /raid/hf-cache as seen from the host (a bind mount of a per-node directory)."""
    path = cluster.node_dir(node) / "raid" / "hf-cache"
    assert path.is_dir(), path
    return path


def models(cluster, *args: str, env: dict | None = None, timeout: float = 180):
    """``sparkhelpers models ...`` on the head, configured by the cluster's profile."""
    base = {"SPARK_CONFIG": cluster.profile, "SPARK_HOME": str(ROOT), "SSH_CONNECT_TIMEOUT": "3", **(env or {})}
    return cluster.exec("spark1", [EXE, "models", *args], env=base, timeout=timeout)


def seed(cluster, repo: str = "acme/tiny", **kw) -> dict[str, bytes]:
    files = fake_model(**kw)
    write_cached_model(host_cache(cluster, "spark1"), repo, files)
    return files


def clean(cluster, repo: str) -> None:
    for node in cluster.nodes:
        shutil.rmtree(host_cache(cluster, node.name) / "hub" / ("models--" + repo.replace("/", "--")),
                      ignore_errors=True)


@pytest.fixture
def tiny(sim_cluster):
    """The shared 2-node cluster with acme/tiny on the head; removed from every node afterwards."""
    seed(sim_cluster)
    yield sim_cluster
    clean(sim_cluster, "acme/tiny")


def test_sync_to_one_worker_then_a_noop_resync(tiny):
    c = tiny
    r = models(c, "sync", "acme/tiny", "--json")
    assert r.ok, r.stderr
    (row,) = json.loads(r.stdout)
    worker = c.workers[0]
    assert row["worker"] == worker.mgmt_ip and row["action"] == "copied" and row["verified"]
    assert row["via"] == "fabric" and row["address"] == worker.fabric_ip
    model = host_cache(c, worker.name) / "hub" / "models--acme--tiny"
    link = model / "snapshots" / "0123456789abcdef0123456789abcdef01234567" / "model-00001-of-00002.safetensors"
    assert link.is_symlink() and os.readlink(link).startswith("../../blobs/")  # layout kept
    assert link.read_bytes() == fake_model()["model-00001-of-00002.safetensors"]
    v = models(c, "verify", "acme/tiny", "--node", "1")
    assert v.ok and v.stdout.startswith("ok  acme/tiny on 1"), v.stdout + v.stderr
    # unchanged model: one read-only check per worker, no rsync at all
    r = models(c, "sync", "acme/tiny", "--json")
    assert r.ok and json.loads(r.stdout)[0]["action"] == "present"
    assert "nothing to copy" in r.stderr


def test_sync_to_three_workers_in_parallel(make_sim):
    c = make_sim(nodes=4)
    seed(c, shard_values=1_000_000)  # 2 x 2 MB shards
    # --bwlimit makes each copy take a few seconds, so overlap (or its absence) is visible
    r = models(c, "sync", "acme/tiny", "--to", "all", "--bwlimit", "1500", "--json")
    assert r.ok, r.stderr
    rows = json.loads(r.stdout)
    assert sorted(x["worker"] for x in rows) == sorted(w.mgmt_ip for w in c.workers)
    assert all(x["action"] == "copied" and x["verified"] and x["via"] == "fabric" for x in rows)
    # all three copies were running at the same moment (each takes ~2.7 s at 1.5 MB/s)
    assert max(x["started_at"] for x in rows) < min(x["finished_at"] for x in rows)
    for w in c.workers:
        assert models(c, "verify", "acme/tiny", "--node", w.mgmt_ip).ok


def test_interrupted_copy_resumes(sim_cluster):
    c = sim_cluster
    files = seed(c, repo="acme/big", shard_values=5_000_000, shards=1)  # one 10 MB shard
    try:
        # start a slow copy in its own process group on the head; once the worker holds part of the
        # shard (polled, not a fixed sleep: a loaded machine starts rsync late), kill the whole group
        env = " ".join(f"{k}={v}" for k, v in {"SPARK_CONFIG": c.profile, "SPARK_HOME": ROOT}.items())
        r = c.exec("spark1", f"env {env} setsid {EXE} models sync acme/big --method fanout --bwlimit 1000 "
                              ">/dev/null 2>&1 & "
                              "echo $! > /tmp/interrupted-sync.pid", timeout=60)
        assert r.ok, r.stderr
        model_dir = host_cache(c, "spark2") / "hub" / "models--acme--big"
        deadline = time.monotonic() + 120
        def copy_in_flight() -> bool:  # rsync's hidden temp file (or a partial) with bytes in it
            return any(p.is_file() and p.stat().st_size > 0 and (p.name.startswith(".") or ".rsync-partial"
                       in p.parts) for p in model_dir.rglob("*")) if model_dir.exists() else False

        while time.monotonic() < deadline and not copy_in_flight():
            time.sleep(0.2)
        r = c.exec("spark1", "pid=$(cat /tmp/interrupted-sync.pid); kill -TERM -- -$pid; "
                             "while kill -0 $pid 2>/dev/null; do sleep 0.1; done; true", timeout=60)
        assert r.ok, r.stderr
        partial = list((host_cache(c, "spark2") / "hub" / "models--acme--big").rglob(".rsync-partial/*"))
        assert partial and partial[0].stat().st_size > 0, "no partial file kept on the worker"
        shard = next(v for k, v in files.items() if k.endswith(".safetensors"))
        v = models(c, "verify", "acme/big", "--node", "1")
        assert not v.ok  # incomplete, and verify says so
        r = models(c, "sync", "acme/big", "--method", "fanout", "--json")
        assert r.ok, r.stderr
        (row,) = json.loads(r.stdout)
        assert row["action"] == "copied" and row["verified"]
        assert row["bytes"] < len(shard)  # rsync re-sent only what the partial file lacked
        assert models(c, "verify", "acme/big", "--node", "1").ok
    finally:
        clean(c, "acme/big")


def test_permission_fault_is_found_before_copying(make_sim):
    c = make_sim(nodes=2)
    seed(c)
    setup = ("useradd -m -p '*' spark && mkdir -p /home/spark/.ssh && "
             "cp /root/.ssh/authorized_keys /home/spark/.ssh/ && chown -R spark: /home/spark/.ssh && "
             "mkdir -p /raid/hf-cache/hub/models--acme--tiny/blobs")
    assert c.exec("spark2", setup).ok  # what a root container leaves behind
    r = models(c, "sync", "acme/tiny", env={"WORKER_USER": "spark"})
    assert r.returncode == 1
    worker = c.workers[0]
    assert "is not writable by spark (nothing was copied)" in r.stderr
    assert f"sparkhelpers: fix: ssh spark@{worker.fabric_ip} sudo chown -R spark: /raid/hf-cache" in r.stderr
    assert not list((host_cache(c, "spark2") / "hub" / "models--acme--tiny" / "blobs").iterdir())
    # apply exactly that fix (as root on the worker) and the sync goes through
    assert c.exec("spark2", "chown -R spark: /raid/hf-cache").ok
    r = models(c, "sync", "acme/tiny", env={"WORKER_USER": "spark"})
    assert r.ok, r.stderr


def test_unreachable_fabric_falls_back_to_management(tiny):
    r = models(tiny, "sync", "acme/tiny", "--json", env={"WORKER_IB_IP": "169.254.101.99"})
    assert r.ok, r.stderr
    assert "fabric address 169.254.101.99 unreachable over SSH" in r.stderr
    (row,) = json.loads(r.stdout)
    assert row["via"] == "management" and row["address"] == tiny.workers[0].mgmt_ip


def test_dry_run_copies_nothing(tiny):
    r = models(tiny, "sync", "acme/tiny", "--dry-run")
    assert r.ok, r.stderr
    worker = tiny.workers[0]
    assert "[dry-run]" in r.stderr and "would copy" in r.stdout
    assert f"lane 1: forward to {worker.mgmt_ip}" in r.stderr and f"lane 2: forward to {worker.mgmt_ip}" in r.stderr
    assert "python3 -c <relay agent> recv" in r.stderr and "over 2 twin(s)" in r.stderr
    r = models(tiny, "sync", "acme/tiny", "--dry-run", "--method", "fanout")
    assert r.ok and "rsync -a" in r.stderr and "would copy" in r.stdout, r.stderr
    assert not (host_cache(tiny, "spark2") / "hub" / "models--acme--tiny").exists()


def test_ensure_on_nodes_accepts_the_cluster_plans_hosts(tiny, monkeypatch):
    """The cluster start passes plain Hosts; they map to WORKER_HOST entries (fabric address kept)."""
    from sparkhelpers.config import load_config
    from sparkhelpers.models import ensure_on_nodes, resolve_model
    from sparkhelpers.models.sync import as_workers
    from sparkhelpers.runner import Host

    for line in Path(tiny.profile).read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            monkeypatch.setenv(key, value.strip("'"))
    cfg = load_config()
    worker = tiny.workers[0]
    (w,) = as_workers(cfg, [Host(worker.mgmt_ip, user="root")])
    assert w.host.address == worker.fabric_ip and w.via == "fabric"
    (w,) = as_workers(cfg, [Host("10.99.0.1")])
    assert w.host.address == "10.99.0.1" and w.cache == "/raid/hf-cache"
    assert callable(ensure_on_nodes) and resolve_model(cfg, "acme/tiny").repo == "acme/tiny"


def test_switch_model_restarts_the_cluster_with_the_lifecycle_scripts(tiny):
    """switch_model.sh on the head: config written, the cluster stopped then started (in-process), one chat."""
    profile = Path(tiny.dir) / "switch-test.env"  # a copy: the session cluster's profile stays as it was
    shutil.copy(tiny.profile, profile)
    env = {"SPARK_CONFIG": str(profile), "SPARK_HOME": str(ROOT)}
    try:
        r = tiny.exec("spark1", [str(ROOT / "switch_model.sh"), "--skip-download", "acme/tiny"], env=env,
                      timeout=600)
    finally:  # leave the shared cluster as we found it: nothing running
        assert tiny.exec("spark1", [str(ROOT / "stop_cluster.sh")], env=env, timeout=300).ok
    assert "MODEL=acme/tiny" in profile.read_text()
    assert "restarting the cluster with acme/tiny" in r.stderr
    assert "nothing of cluster" in r.stderr  # stop_cluster.sh ran on every node
    if tiny.image:  # with the engine image the cluster comes up and answers the smoke request
        assert r.ok, r.stderr
        assert "acme/tiny is serving at http://" in r.stdout and "test answer: '" in r.stdout
    else:  # without one, the start fails and switch_model says which step, choice kept
        assert r.returncode == 1
        assert "the start failed: " in r.stderr and "MODEL=acme/tiny is saved" in r.stderr
