"""Doctor checks on DGX Spark snapshots (pure), and the doctor/checkout_setup.sh CLI contract."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from sparkhelpers.config import load_config
from sparkhelpers.discover import checks as ck
from sparkhelpers.discover import doctor
from sparkhelpers.discover.facts import discover_snapshot
from sparkhelpers.errors import UsageError

SNAPS = Path(__file__).parent / "fixtures" / "snapshots"
ROOT = Path(__file__).resolve().parents[1]
PLAN = ck.Plan(image="nvcr.io/nvidia/vllm:26.04-py3", ports=(("VLLM_PORT", 8000), ("RAY_PORT", 6385)),
               gpu_memory_util=0.85, model="m", model_bytes=None)


def run_checks(worker: str, head: str = "spark1", plan: ck.Plan = PLAN) -> list[ck.Check]:
    nodes = [ck.NodeFacts("head", discover_snapshot(str(SNAPS / head)), True),
             ck.NodeFacts("spark-02", discover_snapshot(str(SNAPS / worker)))]
    return ck.static_checks(nodes, plan)


def failed(checks: list[ck.Check]) -> set[tuple[str, str]]:
    return {(c.node, c.name) for c in checks if c.status == "fail"}


def test_healthy_pair_has_no_failures():
    checks = run_checks("spark2")
    assert failed(checks) == set()
    names = {c.name for c in checks}
    for expected in ("same-port", "subnet-match", "unique-ips", "mtu-match", "driver-match", "kernel-match",
                     "image", "docker", "dev-infiniband", "memlock", "hf-cache", "memory", "port-8000", "gpu"):
        assert expected in names, expected


@pytest.mark.parametrize(("worker", "expected"), [
    ("spark2-same-subnet", {("spark-02", "twin-subnets"), ("cluster", "subnet-match")}),
    ("spark2-mtu1500", {("cluster", "mtu-match")}),
    ("spark2-twin-down", {("spark-02", "twins")}),
    ("spark2-driver-mismatch", {("cluster", "driver-match")}),
    ("spark2-no-roce", {("spark-02", "fabric"), ("spark-02", "dev-infiniband")}),
    ("spark2-port0", {("cluster", "same-port")}),
    ("spark2-no-image", {("cluster", "image")}),
])
def test_each_fault_fails_the_matching_check_with_a_fix(worker, expected):
    checks = run_checks(worker)
    assert failed(checks) == expected
    for c in checks:
        if c.status == "fail":
            assert c.fix, c


def test_mtu_1500_also_warns_per_node():
    warns = {(c.node, c.name) for c in run_checks("spark2-mtu1500") if c.status == "warn"}
    assert ("spark-02", "mtu") in warns


def test_duplicate_fabric_ip_fails_unique_ips():
    checks = run_checks("spark1")  # the head twice: same IPs
    assert ("cluster", "unique-ips") in failed(checks)


def test_single_node_needs_no_fabric():
    checks = ck.static_checks([ck.NodeFacts("head", discover_snapshot(str(SNAPS / "single")), True)], PLAN)
    assert failed(checks) == set()
    assert not any(c.name in ("fabric", "dev-infiniband", "same-port") and c.status != "pass" for c in checks)


def test_memory_disk_and_ports_judgements():
    f = discover_snapshot(str(SNAPS / "spark1"))
    node = ck.NodeFacts("head", f, True)
    assert ck.memory(node, ck.Plan(gpu_memory_util=0.95)).status == "fail"
    assert ck.memory(node, ck.Plan(gpu_memory_util=0.85)).status == "pass"
    assert ck.disk(node, ck.Plan(model="big", model_bytes=10 * 1024**4)).status == "fail"
    assert ck.disk(node, ck.Plan(model="small", model_bytes=1024**3)).status == "pass"
    unknown = ck.disk(node, ck.Plan(model="x"))
    assert unknown.status == "warn" and "unknown" in unknown.message
    f.listening_ports = [8000]
    statuses = {c.name: c.status for c in ck.ports(node, PLAN)}
    assert statuses == {"port-8000": "warn", "port-6385": "pass"}


def test_hf_cache_owned_by_someone_else_fails():
    f = discover_snapshot(str(SNAPS / "spark1"))
    f.hf_cache_owner, f.hf_cache_owner_uid = "root", 0
    c = ck.hf_cache_owner(ck.NodeFacts("head", f, True))
    assert c.status == "fail" and "chown -R spark /raid/hf-cache" in c.fix


def test_docker_permission_denied_says_docker_group():
    f = discover_snapshot(str(SNAPS / "spark1"))
    f.docker_ok, f.docker_error = False, "permission denied while trying to connect to the Docker daemon socket"
    c = ck.docker(ck.NodeFacts("head", f, True))
    assert c.status == "fail" and "usermod -aG docker" in c.fix


def test_nccl_bandwidth_threshold():
    good = "#  Out of bounds values : 0 OK\n# Avg bus bandwidth    : 22.9141 \n"
    assert ck.judge_nccl_busbw(good).status == "pass"
    bad = ck.judge_nccl_busbw("NCCL INFO Using network Socket\n# Avg bus bandwidth    : 3.1 \n")
    assert bad.status == "fail" and "NET/Socket" in bad.message
    assert ck.judge_nccl_busbw("mpirun: error").status == "fail"


def test_ib_write_bw_parsing():
    out = (" #bytes     #iterations    BW peak[Gb/sec]    BW average[Gb/sec]   MsgRate[Mpps]\n"
           " 65536      1086000          0.00               94.87              0.180950\n")
    assert ck.judge_ib_write_bw(out, "spark-02", "rocep1s0f1").status == "pass"
    assert ck.judge_ib_write_bw(out.replace("94.87", "41.20"), "n", "h").status == "fail"


def test_engine_log_transport():
    assert ck.judge_engine_log("NCCL INFO NET/IB : Using [0]rocep1s0f1:1/RoCE", "head").status == "pass"
    assert ck.judge_engine_log("NCCL INFO NET/Socket : Using [0]enp1s0f1np1", "head").status == "fail"
    assert ck.judge_engine_log(None, "head").status == "warn"


def test_snapshot_args():
    assert doctor.parse_snapshot_args(["head=/a", "w=/b"]) == [("head", Path("/a")), ("w", Path("/b"))]
    with pytest.raises(UsageError):
        doctor.parse_snapshot_args(["nodir"])
    with pytest.raises(UsageError):
        doctor.parse_snapshot_args(["a=/x", "a=/y"])


def test_full_writes_a_private_redacted_bundle(tmp_path):
    cfg = load_config()
    snaps = [("head", SNAPS / "spark1"), ("spark-02", SNAPS / "spark2")]
    report = doctor.run(cfg, level="full", snapshots=snaps)
    assert report.bundle and report.bundle.is_file()
    assert (report.bundle.stat().st_mode & 0o777) == 0o600
    with tarfile.open(report.bundle) as tar:
        names = tar.getnames()
    assert any(n.endswith("results.json") for n in names)
    assert any("snapshots/spark-02/cmd/ip-addr.json" in n for n in names)


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})}, cwd=ROOT)


def test_doctor_cli_exit_codes_and_json(sparkhelpers_bin):
    ok = cli(*sparkhelpers_bin, "doctor", "--snapshot", f"head={SNAPS / 'spark1'}",
             "--snapshot", f"spark-02={SNAPS / 'spark2'}", "--json")
    assert ok.returncode == 0, ok.stderr
    data = json.loads(ok.stdout)
    assert data["summary"]["fail"] == 0 and all({"name", "node", "status", "message", "fix"} <= set(c)
                                                 for c in data["checks"])
    bad = cli(*sparkhelpers_bin, "doctor", "--snapshot", f"head={SNAPS / 'spark1'}",
              "--snapshot", f"spark-02={SNAPS / 'spark2-driver-mismatch'}")
    assert bad.returncode == 1
    assert "FAIL  cluster" in bad.stdout and "driver-match" in bad.stdout
    assert "fix: install the same driver" in bad.stdout
    usage = cli(*sparkhelpers_bin, "doctor", "--quick", "--full")
    assert usage.returncode == 2


def test_checkout_setup_on_this_host_single_node():
    r = cli(ROOT / "checkout_setup.sh", "--quick", "--json")
    assert r.returncode in (0, 1), r.stderr
    data = json.loads(r.stdout)
    names = {c["name"] for c in data["checks"]}
    assert {"docker", "memory", "hf-cache", "memlock"} <= names
    assert r.returncode == (1 if data["summary"]["fail"] else 0)
    assert cli(ROOT / "checkout_setup.sh", "--ib", "--nccl").returncode == 2


def test_engine_transport_reads_the_real_logs(tmp_path):
    from sparkhelpers.runner import Runner

    logs = tmp_path / "logs"
    logs.mkdir()
    node = doctor.HEAD
    assert doctor.engine_transport(Runner(), node, str(logs)).status == "warn"  # no log at all
    (logs / "engine-0.log").write_text("INFO loading\nNCCL INFO NET/IB : Using [0]rocep1s0f1:1/RoCE\n")
    assert doctor.engine_transport(Runner(), node, str(logs)).status == "pass"
    (logs / "ray-1.log").write_text("NCCL INFO NET/Socket : Using [0]enp1s0f1np1:169.254.101.12<0>\n")
    check = doctor.engine_transport(Runner(), node, str(logs))
    assert check.status == "fail" and "/dev/infiniband" in check.fix


def test_gid_index_differing_between_nodes_warns_not_to_pin_it():
    worker = discover_snapshot(str(SNAPS / "spark2"))
    for twin in worker.twins:
        twin.gid_index = 4
    nodes = [ck.NodeFacts("head", discover_snapshot(str(SNAPS / "spark1")), True), ck.NodeFacts("spark-02", worker)]
    gid = next(c for c in ck.static_checks(nodes, PLAN) if c.name == "gid-match")
    assert gid.status == "warn" and "NCCL_IB_GID_INDEX" in gid.fix
    assert next(c for c in run_checks("spark2") if c.name == "gid-match").status == "pass"


def test_setup_rejects_an_unknown_model_without_writing(sparkhelpers_bin, tmp_path):
    config = tmp_path / "c.env"
    config.write_text("MODEL=qwen3-8b\n")
    r = cli(*sparkhelpers_bin, "setup", "--non-interactive", "--model", "not-a-model",
            env={"SPARK_CONFIG": str(config)})
    assert r.returncode == 1 and "neither a catalog preset" in r.stderr
    assert config.read_text() == "MODEL=qwen3-8b\n"


def test_setup_dry_run_writes_nothing(tmp_path):
    config = tmp_path / "c.env"
    config.write_text("MODEL=qwen3-8b\n")
    r = cli(ROOT / "setup-env.sh", "--non-interactive", "--model", "qwen3-0.6b", "--dry-run",
            env={"SPARK_CONFIG": str(config)})
    assert r.returncode == 0, r.stderr
    assert "[dry-run] would write MODEL=qwen3-0.6b" in r.stderr
    assert config.read_text() == "MODEL=qwen3-8b\n"
