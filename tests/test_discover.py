"""Discovery on snapshots shaped like real DGX Sparks, and a capture -> replay round trip on this machine."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from sparkhelpers.discover import capture, discover_snapshot, host_problems, nccl_env
from sparkhelpers.discover.probe import Snapshot, capture_script, unpack
from sparkhelpers.errors import SparkError
from sparkhelpers.runner import Runner

SNAPS = Path(__file__).parent / "fixtures" / "snapshots"
ROOT = Path(__file__).resolve().parents[1]


def facts(name: str):
    return discover_snapshot(str(SNAPS / name))


def codes(name: str, single: bool = False) -> set[str]:
    return {p.code for p in host_problems(facts(name), single_node=single)}


def test_healthy_spark_uses_both_twins_of_port_1_and_never_wifi_or_management():
    f = facts("spark1")
    assert f.management_iface == "enP7s7"
    assert f.default_route_iface == "wlP9s9"
    assert f.cabled_cages == [1]
    assert [(t.hca, t.netdev) for t in f.twins] == [("rocep1s0f1", "enp1s0f1np1"), ("roceP2p1s0f1", "enP2p1s0f1np1")]
    assert nccl_env(f) == {
        "NCCL_SOCKET_IFNAME": "enp1s0f1np1",
        "NCCL_IB_HCA": "rocep1s0f1,roceP2p1s0f1",
        "NCCL_IB_DISABLE": "0",
        "GLOO_SOCKET_IFNAME": "enp1s0f1np1",
        "TP_SOCKET_IFNAME": "enp1s0f1np1",
        "UCX_NET_DEVICES": "enp1s0f1np1",
        "VLLM_HOST_IP": "192.168.100.10",
        "NCCL_IB_GID_INDEX": "3",
    }
    assert host_problems(f) == []
    assert f.gpu_name == "NVIDIA GB10" and f.gpu_driver == "580.95.05"
    assert f.mem_total_kib == 127612724 and f.memlock == "unlimited"
    assert f.netdevs["wlP9s9"].kind == "wifi" and f.netdevs["docker0"].kind == "virtual"
    assert f.netdevs["enp1s0f1np1"].speed_mbps == 200000


def test_worker_gets_its_own_host_ip():
    assert nccl_env(facts("spark2"))["VLLM_HOST_IP"] == "192.168.100.11"


def test_twins_in_one_subnet_is_an_error_with_the_netplan_fix():
    problems = host_problems(facts("spark2-same-subnet"))
    same = [p for p in problems if p.code == "twins-same-subnet"]
    assert same and same[0].severity == "error" and "netplan" in same[0].fix


def test_mtu_1500_is_a_warning_per_twin():
    problems = [p for p in host_problems(facts("spark2-mtu1500")) if p.code == "mtu"]
    assert [p.severity for p in problems] == ["warning", "warning"]
    assert "mtu 9000" in problems[0].fix


def test_twin_down_keeps_the_live_twin_and_says_so():
    f = facts("spark2-twin-down")
    env = nccl_env(f)
    assert env["NCCL_IB_HCA"] == "rocep1s0f1"
    assert "twin-down" in codes("spark2-twin-down")


def test_only_the_capital_p_twin_up_still_works():
    f = facts("spark2-twin-down")
    f.twins[0].active, f.twins[1].active, f.twins[1].operstate = False, True, "up"
    env = nccl_env(f)
    assert env["NCCL_SOCKET_IFNAME"] == "enP2p1s0f1np1" and env["VLLM_HOST_IP"] == "192.168.101.11"


def test_no_roce_device_multi_node_is_an_error_single_node_is_fine():
    assert nccl_env(facts("spark2-no-roce")) == {}
    problems = host_problems(facts("spark2-no-roce"))
    assert [(p.severity, p.code) for p in problems] == [("error", "no-rdma-device")]
    assert "mlx5_ib" in problems[0].fix
    single = host_problems(facts("spark2-no-roce"), single_node=True)
    assert [(p.severity, p.code) for p in single] == [("info", "no-rdma-device")]
    assert "no fabric is needed" in single[0].message


def test_single_node_without_cable():
    f = facts("single")
    assert nccl_env(f) == {} and f.cabled_cages == []
    assert [(p.severity, p.code) for p in host_problems(f, single_node=True)] == [("info", "no-cabled-port")]
    assert [(p.severity, p.code) for p in host_problems(f)] == [("error", "no-cabled-port")]


def test_port_0_cabled_is_found():
    f = facts("spark2-port0")
    assert f.cabled_cages == [0]
    assert nccl_env(f)["NCCL_IB_HCA"] == "rocep1s0f0,roceP2p1s0f0"


def test_gid_index_only_when_every_twin_agrees_and_never_empty():
    f = facts("spark1")
    f.twins[1].gid_index = 4
    env = nccl_env(f)
    assert "NCCL_IB_GID_INDEX" not in env
    assert "gid-index-differs" in {p.code for p in host_problems(f)}
    f.twins[1].gid_index = None
    assert "NCCL_IB_GID_INDEX" not in nccl_env(f)
    assert all(v != "" for v in nccl_env(f).values())


def test_management_and_wifi_never_chosen_even_without_hcas():
    f = facts("spark2-no-roce")
    assert f.twins == [] and f.socket_twin is None


def test_emulated_hca_with_only_gid_attrs_ndevs(tmp_path):
    """The sim's fake HCA has no device/net link: the netdev comes from gid_attrs/ndevs."""
    snap = tmp_path / "s"
    (snap / "cmd").mkdir(parents=True)
    port = snap / "sys/class/infiniband/rocep1s0f1/ports/1"
    (port / "gid_attrs/ndevs").mkdir(parents=True)
    (port / "gid_attrs/ndevs/0").write_text("enp1s0f1np1\n")
    (port / "state").write_text("4: ACTIVE\n")
    (snap / "cmd/ip-addr.json").write_text(json.dumps([{"ifname": "enp1s0f1np1", "operstate": "UP", "mtu": 9000,
        "addr_info": [{"family": "inet", "local": "169.254.100.11", "prefixlen": 24}]}]))
    f = discover_snapshot(str(snap))
    env = nccl_env(f)
    assert env["NCCL_IB_HCA"] == "rocep1s0f1" and env["VLLM_HOST_IP"] == "169.254.100.11"
    assert "NCCL_IB_GID_INDEX" not in env


def test_snapshot_rejects_non_snapshots(tmp_path):
    with pytest.raises(SparkError, match="not a snapshot"):
        Snapshot(tmp_path)
    with pytest.raises(SparkError, match="not a directory"):
        Snapshot(tmp_path / "missing")


def test_capture_script_is_shellcheck_clean():
    script = ROOT / "sparkhelpers/discover/capture.sh"
    r = subprocess.run(["shellcheck", "-S", "style", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


def test_capture_replay_round_trip_on_this_machine(tmp_path, monkeypatch):
    cache = tmp_path / "hf"
    cache.mkdir()
    monkeypatch.setenv("HF_TOKEN", "hf_" + "A" * 30)  # must never reach the snapshot
    snap = capture(Runner(), tmp_path / "snap", hf_cache=str(cache), image="no/such-image:1")
    for rel in ("cmd/ip-addr.json", "cmd/ip-route.json", "cmd/uname-r.txt", "proc/meminfo", "cmd/exit-codes.txt"):
        assert (snap / rel).is_file(), rel
    assert (snap / "sys/class/net/lo/mtu").read_text().strip() == "65536"
    text = "".join(p.read_text(errors="replace") for p in snap.rglob("*") if p.is_file())
    assert "hf_AAAA" not in text
    f = discover_snapshot(str(snap))
    assert f.kernel == os.uname().release
    assert f.hf_cache == str(cache) and f.disk_free_bytes and f.disk_free_bytes > 0
    assert f.hf_cache_owner_uid == os.getuid()
    assert f.mem_total_kib and f.mem_total_kib > 0
    assert "lo" in f.netdevs and f.netdevs["lo"].kind == "loopback"
    if not Path("/sys/class/infiniband").exists():
        assert nccl_env(f) == {}
        assert [p.code for p in host_problems(f)] == ["no-rdma-device"]


def test_capture_refuses_a_non_empty_directory(tmp_path):
    (tmp_path / "x").write_text("keep me")
    with pytest.raises(SparkError, match="not empty"):
        capture(Runner(), tmp_path)
    assert (tmp_path / "x").read_text() == "keep me"


def test_unpack_rejects_garbage(tmp_path):
    with pytest.raises(SparkError, match="unreadable"):
        unpack("not base64 at all!", tmp_path / "d")


def test_redaction_of_docker_proxy_credentials(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "docker").write_text("#!/bin/sh\n[ \"$1\" = info ] && echo '{\"ServerVersion\":\"28\",\"HttpProxy\":"
                                 "\"http://bob:s3cret@proxy:3128\",\"Name\":\"x\"}'\nexit 0\n")
    (fake / "docker").chmod(stat.S_IRWXU)
    env = {"PATH": f"{fake}:{os.environ['PATH']}"}
    r = Runner().run(["bash", "-s", "--", "", ""], input=capture_script(), env=env)
    snap = unpack(r.stdout, tmp_path / "snap")
    info = (snap / "cmd/docker-info.json").read_text()
    assert "s3cret" not in info and "<redacted>" in info
    assert discover_snapshot(str(snap)).docker_ok


def test_cli_json_and_exit_codes(sparkhelpers_bin, monkeypatch):
    r = subprocess.run([*sparkhelpers_bin, "discover", "--snapshot", str(SNAPS / "spark1"), "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["nccl_env"]["NCCL_IB_HCA"] == "rocep1s0f1,roceP2p1s0f1"
    assert data["management_iface"] == "enP7s7"
    monkeypatch.setenv("WORKER_HOST", "spark-02")
    r = subprocess.run([*sparkhelpers_bin, "discover", "--snapshot", str(SNAPS / "spark2-same-subnet")],
                       capture_output=True, text=True)
    assert r.returncode == 1
    assert "share subnet 192.168.100.0/24" in r.stdout and "fix: give each twin its own /24" in r.stdout
    r = subprocess.run([*sparkhelpers_bin, "discover", "--snapshot", str(SNAPS / "spark1"), "--exports"],
                       capture_output=True, text=True)
    assert "export NCCL_SOCKET_IFNAME=enp1s0f1np1" in r.stdout.splitlines()


class _LoopbackSsh(Runner):
    """Runs what would go over ssh in a local bash instead, and records every command."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, ...]] = []

    def run(self, argv, **kwargs):  # noqa: ANN001, ANN003, ANN201
        self.calls.append(tuple(argv))
        if argv[0] == "ssh":
            argv = ["bash", "-c", argv[-1]]
        return super().run(argv, **kwargs)


def test_remote_capture_is_one_ssh_round_trip_with_nothing_secret_in_argv(tmp_path):
    from sparkhelpers.discover import capture_remote
    from sparkhelpers.runner import Host

    runner = _LoopbackSsh()
    snap = capture_remote(runner, Host("spark-02", user="spark"), tmp_path / "s", hf_cache="/raid/hf-cache",
                          image="img:1")
    assert len(runner.calls) == 1
    argv = runner.calls[0]
    assert argv[0] == "ssh" and "BatchMode=yes" in argv and argv[-1] == "bash -s -- /raid/hf-cache img:1"
    assert discover_snapshot(str(snap)).kernel == os.uname().release


# What capture.sh's fabric scope leaves out (the start's preflight probe asks Docker, memory and the cache).
NOT_IN_FABRIC_SCOPE = ("cmd/id.txt", "cmd/ulimit-l.txt", "proc/meminfo", "proc/net/tcp", "proc/net/tcp6",
                       "etc/os-release", "cmd/docker-info.json", "cmd/docker-image-id.txt", "cmd/hf-cache-path.txt",
                       "cmd/df-hf-cache.txt", "cmd/stat-hf-cache.txt")


def gate_view(f) -> dict:  # noqa: ANN001
    """Every fact the start's fabric gate and nccl_env read."""
    return {"hostname": f.hostname, "kernel": f.kernel, "gpus": f.gpus, "ib": f.dev_infiniband,
            "netdevs": {n: (d.operstate, d.mtu, d.ipv4, d.kind, d.mac) for n, d in f.netdevs.items()},
            "hcas": f.hcas, "twins": f.twins, "cages": f.cabled_cages, "nccl": nccl_env(f)}


def test_fabric_scope_keeps_every_fact_the_gate_reads_and_drops_the_rest(tmp_path):
    """Real capture.sh on this machine, both scopes: the fabric scope (the start's) reads the same fabric
    and parity facts, skips Docker, memory, ports, limits, ethtool and the cache, and says it is partial."""
    from sparkhelpers.discover import discover
    from sparkhelpers.discover.probe import MemorySnapshot, capture_with

    full = capture(Runner(), tmp_path / "full", hf_cache=str(tmp_path), image="no/such-image:1")
    encoded, also = capture_with(Runner(), hf_cache=str(tmp_path), image="no/such-image:1", scope="fabric",
                                 also="echo probe=ok; echo \"answer=$((6 * 7))\"")
    part = MemorySnapshot(encoded)
    assert also == "probe=ok\nanswer=42\n"  # the script beside the capture, in the same process
    assert gate_view(discover(part)) == gate_view(discover_snapshot(str(full)))
    assert part.cmd("scope.txt") == "fabric" and (full / "cmd/scope.txt").read_text().strip() == "all"
    for rel in NOT_IN_FABRIC_SCOPE:
        assert (full / rel).exists() or rel.startswith("cmd/docker"), rel
        assert not part.exists(rel), rel
    assert not any(name.startswith("ethtool-") for name in part.listdir("/cmd"))


def test_memory_snapshot_reads_like_the_unpacked_one(tmp_path):
    from sparkhelpers.discover import discover
    from sparkhelpers.discover.probe import MemorySnapshot, capture_with

    encoded, _ = capture_with(Runner(), hf_cache=str(tmp_path))
    on_disk = discover_snapshot(str(unpack(encoded, tmp_path / "snap")))
    assert discover(MemorySnapshot(encoded)).to_dict() == on_disk.to_dict()


def _tar_b64(entries: dict[str, str]) -> str:
    import base64
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in entries.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return base64.b64encode(buf.getvalue()).decode()


def test_memory_snapshot_scrubs_tokens_and_refuses_escaping_entries():
    from sparkhelpers.discover.probe import MemorySnapshot

    snap = MemorySnapshot(_tar_b64({"./cmd/hostname.txt": "spark1\n", "./cmd/x.txt": "t=hf_" + "A" * 30 + "\n"}))
    assert snap.cmd("hostname.txt") == "spark1" and "hf_AAAA" not in snap.cmd("x.txt")
    assert snap.listdir("/cmd") == ["hostname.txt", "x.txt"] and snap.read("/cmd/none") is None
    with pytest.raises(SparkError, match="unsafe entry"):
        MemorySnapshot(_tar_b64({"../etc/passwd": "x"}))
    with pytest.raises(SparkError, match="unreadable"):
        MemorySnapshot("not base64 at all!")
