"""checkout_setup.sh on the emulated cluster: healthy passes, each injectable fault fails its check (exit 1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.sim


def checkout(cluster, *args: str, env: dict | None = None):  # noqa: ANN001, ANN201
    """Run checkout_setup.sh on the head node exactly as a user would, with the sim's config profile."""
    r = cluster.exec("spark1", [str(ROOT / "checkout_setup.sh"), *args],
                     env={"SPARK_CONFIG": cluster.profile, **(env or {})}, timeout=180)
    return r


def results(r) -> dict:  # noqa: ANN001
    return json.loads(r.stdout)


def failing(data: dict) -> dict[str, dict]:
    return {c["name"]: c for c in data["checks"] if c["status"] == "fail"}


def test_healthy_cluster_passes_quick(sim_cluster):
    r = checkout(sim_cluster, "--quick", "--json")
    data = results(r)
    assert r.returncode == 0, failing(data)
    names = {c["name"] for c in data["checks"] if c["status"] == "pass"}
    assert {"ssh", "ssh-back", "ping-enp1s0f1np1", "ping-enP2p1s0f1np1", "same-port", "subnet-match",
            "mtu-match", "driver-match", "kernel-match", "unique-ips", "docker", "dev-infiniband"} <= names
    text = checkout(sim_cluster, "--quick")
    assert text.returncode == 0 and "0 failed" in text.stdout


@pytest.mark.parametrize(("facts", "checks"), [
    ({"twin2_up": False}, {"twins"}),
    ({"mtu": 1500}, {"mtu-match", "ping-enp1s0f1np1"}),  # the no-fragment ping at 8972 bytes fails too
    ({"twin2_subnet": "169.254.112.0/24"}, {"subnet-match"}),
    ({"driver_version": "590.44.01"}, {"driver-match"}),
])
def test_fact_faults_fail_their_check_with_a_fix(make_sim, facts, checks):
    cluster = make_sim(nodes=2, facts={"spark2": facts})
    r = checkout(cluster, "--quick", "--json")
    fails = failing(results(r))
    assert r.returncode == 1
    assert checks <= set(fails), fails
    assert all(fails[c]["fix"] for c in checks)


def test_image_missing_on_a_worker_fails_image(make_sim):
    cluster = make_sim(nodes=2)
    made = cluster.exec("spark1", "tar -cf - --files-from /dev/null | docker import - sparktest/empty:1 >/dev/null")
    assert made.ok, made.stderr
    r = checkout(cluster, "--quick", "--json", env={"VLLM_IMAGE": "sparktest/empty:1"})
    fails = failing(results(r))
    assert r.returncode == 1 and "image" in fails
    assert "missing on" in fails["image"]["message"] and "docker save" in fails["image"]["fix"]
    # copy it the way the fix says: then the image check passes
    copy = cluster.exec("spark1", "docker save sparktest/empty:1 | ssh -i /root/.ssh/id_ed25519 "
                        f"{cluster.workers[0].mgmt_ip} docker load")
    assert copy.ok, copy.stderr
    r = checkout(cluster, "--quick", "--json", env={"VLLM_IMAGE": "sparktest/empty:1"})
    assert "image" not in failing(results(r))


def test_full_writes_bundle_on_the_head(sim_cluster):
    r = checkout(sim_cluster, "--full")
    assert "report bundle: " in r.stdout
    bundle = r.stdout.split("report bundle: ")[1].split()[0]
    listing = sim_cluster.exec("spark1", ["tar", "-tzf", bundle])
    assert listing.ok and "results.json" in listing.stdout and "cmd/ip-addr.json" in listing.stdout


def test_discover_a_worker_over_ssh_from_the_head(sim_cluster):
    worker = sim_cluster.workers[0]
    r = sim_cluster.exec("spark1", [str(ROOT / ".venv/bin/sparkhelpers"), "discover", "--host", worker.mgmt_ip,
                                    "--json"], env={"SPARK_CONFIG": sim_cluster.profile}, timeout=60)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["nccl_env"]["VLLM_HOST_IP"] == worker.fabric_ip
    assert data["nccl_env"]["NCCL_IB_HCA"] == "rocep1s0f1,roceP2p1s0f1"
    assert data["management_iface"] == "enP7s7" and data["hostname"] == worker.name


def _with_fault(cluster, node: str, kind: str, arg: str = "") -> dict:  # noqa: ANN001
    from sparkhelpers.sim import faults

    faults.inject(cluster, node, kind, arg)
    try:
        r = checkout(cluster, "--quick", "--json")
        assert r.returncode == 1, r.stdout + r.stderr
        return failing(results(r))
    finally:
        faults.clear(cluster, node)


def test_sim_fault_link_down_fails_twins(sim_cluster):
    fails = _with_fault(sim_cluster, "spark2", "link-down", "twin2")
    assert "twins" in fails and "enP2p1s0f1np1" in fails["twins"]["message"] and fails["twins"]["fix"]


def test_sim_fault_both_links_down_fails_fabric(sim_cluster):
    fails = _with_fault(sim_cluster, "spark2", "link-down", "both")
    assert "fabric" in fails and "no ConnectX-7 port is up" in fails["fabric"]["message"]


def test_sim_fault_fill_disk_fails_disk(sim_cluster):
    fails = _with_fault(sim_cluster, "spark2", "fill-disk")
    assert "disk" in fails and " free, " in fails["disk"]["message"] and "needs about" in fails["disk"]["message"]


def test_sim_fault_kill_sshd_and_stop_node_fail_ssh(make_sim):
    from sparkhelpers.sim import faults

    cluster = make_sim(nodes=2)
    for kind in ("kill-sshd", "stop-node"):
        faults.inject(cluster, "spark2", kind)
        r = checkout(cluster, "--quick", "--json")
        fails = failing(results(r))
        assert r.returncode == 1 and "ssh" in fails and "ssh-copy-id" in fails["ssh"]["fix"], kind
        faults.clear(cluster, "spark2")
