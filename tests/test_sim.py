"""The emulated cluster: real sshd/dockerd/rsync between namespaced nodes, fake GB10/CX7 facts."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from sparkhelpers.errors import UsageError
from sparkhelpers.sim import facts as factmod
from sparkhelpers.sim import netplan

# ---- pure builders (no root needed) ----


def test_names_are_prefixed_and_exact():
    assert netplan.node_ns("a", 1) == "sparksim-a-spark1"
    assert netplan.owns_netns("a", "sparksim-a-sw")
    assert netplan.owns_netns("a", "sparksim-a-spark3")
    assert not netplan.owns_netns("a", "sparksim-a-b-spark1")  # cluster "a-b" is not "a"
    with pytest.raises(UsageError):
        netplan.check_name("Bad_Name")
    with pytest.raises(UsageError):
        netplan.check_nodes(5)


def test_link_names_fit_the_kernel_limit():
    for line in netplan.root_batch("x" * 24, 4).splitlines():
        words = line.split()
        assert len(words[2]) <= 15 and len(words[words.index("peer") + 2]) <= 15


def test_twin_down_leaves_switch_port_down():
    facts = {"spark1": factmod.merge_facts({}), "spark2": factmod.merge_facts({"twin2_up": "false"})}
    text = netplan.switch_batch(2, facts)
    assert "link set f2-1 mtu 9000 master br-f2 up" in text
    assert "link set f2-2 mtu 9000 master br-f2\n" in text


def test_facts_defaults_and_overrides():
    f = factmod.merge_facts({"mtu": "1500", "twin1_subnet": "169.254.111.0/24"})
    assert f["mtu"] == 1500 and f["gpu_name"] == "NVIDIA GB10"
    assert factmod.node_addrs(2, f).twin1 == "169.254.111.12"
    with pytest.raises(UsageError):
        factmod.merge_facts({"no_such": 1})
    with pytest.raises(UsageError):
        factmod.merge_facts({"mtu": "big"})
    assert factmod.parse_fact_args(["all:mtu=1500", "spark2:driver_version=570.1"], 2) == {
        "spark1": {"mtu": "1500"}, "spark2": {"mtu": "1500", "driver_version": "570.1"}}
    with pytest.raises(UsageError):
        factmod.parse_fact_args(["spark3:mtu=1"], 2)


def test_gids_put_ipv4_roce_v2_at_the_configured_index():
    files = factmod.sysfs_files(1, factmod.merge_facts({}))
    port = "infiniband/rocep1s0f1/ports/1"
    assert files[f"{port}/gids/3"] == "0000:0000:0000:0000:0000:ffff:a9fe:650b"  # 169.254.101.11
    assert files[f"{port}/gid_attrs/types/3"] == "RoCE v2"
    assert files[f"{port}/gids/0"].startswith("fe80:")
    assert files[f"{port}/state"] == "4: ACTIVE"
    assert files["infiniband/rocep1s0f0/ports/1/state"] == "1: DOWN"
    moved = factmod.sysfs_files(1, factmod.merge_facts({"gid_v2_index": 4}))
    assert moved[f"{port}/gid_attrs/types/4"] == "RoCE v2" and f"{port}/gid_attrs/types/3" in moved


# ---- the real thing (root, namespaces) ----

def on(cluster, node, cmd, timeout=120):
    res = cluster.exec(node, cmd, timeout=timeout)
    assert res.ok, f"{cmd!r} on {node}: rc={res.returncode}\n{res.stdout}\n{res.stderr}"
    return res.stdout


@pytest.mark.sim
def test_ssh_by_key_over_the_fabric_and_facts(sim_cluster):
    w = sim_cluster.workers[0]
    assert on(sim_cluster, "spark1", ["ssh", "-o", "BatchMode=yes", w.fabric_ip, "hostname"]).strip() == "spark2"
    assert on(sim_cluster, "spark1", ["ssh", "-o", "BatchMode=yes", w.fabric2_ip, "hostname"]).strip() == "spark2"
    # password login is off: without the key, ssh must fail
    res = sim_cluster.exec("spark1", ["ssh", "-o", "BatchMode=yes", "-o", "IdentityFile=/dev/null",
                                      "-o", "IdentitiesOnly=yes", w.mgmt_ip, "true"])
    assert res.returncode == 255
    out = on(sim_cluster, "spark2", "ibdev2netdev; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader;"
                                    "grep MemTotal /proc/meminfo; ls /dev/infiniband; ip -o link show enp1s0f1np1")
    assert "rocep1s0f1 port 1 ==> enp1s0f1np1 (Up)" in out
    assert "rocep1s0f0 port 1 ==> enp1s0f0np0 (Down)" in out
    assert "NVIDIA GB10, 580.95.05" in out
    assert "MemTotal:       127601452 kB" in out
    assert "uverbs0" in out and "mtu 9000" in out


@pytest.mark.sim
def test_rsync_between_nodes(sim_cluster):
    on(sim_cluster, "spark1", "mkdir -p /raid/hf-cache/hub/models--t--m/snapshots/a && "
                              "head -c 3000000 /dev/urandom > /raid/hf-cache/hub/models--t--m/snapshots/a/w.bin")
    w = sim_cluster.workers[0]
    on(sim_cluster, "spark1", ["rsync", "-a", "/raid/hf-cache/hub/models--t--m", f"{w.fabric_ip}:/raid/hf-cache/hub/"])
    a = on(sim_cluster, "spark1", "sha256sum /raid/hf-cache/hub/models--t--m/snapshots/a/w.bin").split()[0]
    b = on(sim_cluster, "spark2", "sha256sum /raid/hf-cache/hub/models--t--m/snapshots/a/w.bin").split()[0]
    assert a == b
    on(sim_cluster, "spark2", "rm -rf /raid/hf-cache/hub/models--t--m")
    on(sim_cluster, "spark1", "rm -rf /raid/hf-cache/hub/models--t--m")


@pytest.mark.sim
def test_nodes_are_isolated_from_the_host(sim_cluster):
    on(sim_cluster, "spark1", "echo node > /etc/sparksim-probe")
    assert not __import__("os").path.exists("/etc/sparksim-probe")
    assert on(sim_cluster, "spark2", "cat /etc/sparksim-probe 2>/dev/null || echo absent").strip() == "absent"
    on(sim_cluster, "spark1", "rm /etc/sparksim-probe")
    assert "default" not in on(sim_cluster, "spark1", "ip route")  # no route off the box


@pytest.mark.sim
def test_two_clusters_coexist_and_down_leaves_nothing(make_sim, sim_cluster, sparkhelpers_bin):
    other = make_sim(nodes=2, facts={"spark2": {"mtu": 1500, "twin2_up": False, "driver_version": "570.86.10"}})
    out = on(other, "spark2", "ip -o link show enp1s0f1np1; ibdev2netdev; nvidia-smi --query-gpu=driver_version "
                              "--format=csv,noheader")
    assert "mtu 1500" in out and "570.86.10" in out
    assert "roceP2p1s0f1 port 1 ==> enP2p1s0f1np1 (Down)" in out
    # same addresses, separate switches: the session cluster is untouched
    assert on(sim_cluster, "spark2", "ip -o link show enp1s0f1np1").count("mtu 9000") == 1
    other.down()
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"sparksim-{other.name}-" not in netns
    cgroups = subprocess.run(["find", "/sys/fs/cgroup", "-maxdepth", "2", "-name", f"sparksim-{other.name}-*"],
                             capture_output=True, text=True).stdout
    assert cgroups == ""
    assert not __import__("pathlib").Path(other.dir).exists()
    other.down()  # idempotent
    assert on(sim_cluster, "spark1", ["ssh", sim_cluster.workers[0].fabric_ip, "true"]) == ""


@pytest.mark.sim
def test_teardown_after_crash_and_second_up(make_sim, sim_state_dir):
    from sparkhelpers.sim import cluster as cl

    c = make_sim(nodes=1)
    (cl.cluster_dir(sim_state_dir, c.name) / "cluster.json").unlink()  # damaged state
    assert cl.down(c.name, sim_state_dir)
    assert not any(netplan.owns_netns(c.name, ns) for ns in cl.netns_list(__import__("sparkhelpers.runner",
                                                                                        fromlist=["Runner"]).Runner()))
    c2 = make_sim(nodes=1)
    assert on(c2, "spark1", "hostname").strip() == "spark1"


@pytest.mark.sim
def test_cli_status_exec_and_errors(sim_cluster, sparkhelpers_bin, sim_state_dir, monkeypatch):
    monkeypatch.setenv("SPARK_STATE_DIR", str(sim_state_dir))
    r = subprocess.run([*sparkhelpers_bin, "sim", "status", "--json", "--name", sim_cluster.name],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data[0]["state"] == "up" and {n["sshd"] for n in data[0]["nodes"]} == {"ok"}
    r = subprocess.run([*sparkhelpers_bin, "sim", "exec", "--name", sim_cluster.name, "spark2", "--",
                        "sh", "-c", "hostname; exit 3"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 3 and r.stdout.strip() == "spark2"
    r = subprocess.run([*sparkhelpers_bin, "sim", "up", "--name", sim_cluster.name],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "already up" in r.stderr
    r = subprocess.run([*sparkhelpers_bin, "sim", "up", "--nodes", "9"], capture_output=True, text=True)
    assert r.returncode == 2 and "out of range" in r.stderr
    profile = Path(sim_cluster.profile).read_text()
    assert f"WORKER_HOST='{sim_cluster.workers[0].mgmt_ip}'" in profile and "WORKER_USER=root" in profile


def test_exec_on_missing_cluster_is_one_clear_line(sparkhelpers_bin):
    r = subprocess.run([*sparkhelpers_bin, "sim", "exec", "--name", "nosuch", "spark1", "--", "true"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr.startswith("sparkhelpers: no sim cluster named 'nosuch'")
