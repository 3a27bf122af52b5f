"""The start's fabric gate (pure parts): the doctor's rules on real snapshots, one line per failure."""

from __future__ import annotations

from pathlib import Path

import pytest

from sparkhelpers.discover import checks as ck
from sparkhelpers.discover import gate
from sparkhelpers.discover.facts import discover_snapshot
from sparkhelpers.errors import SparkError

SNAPS = Path(__file__).parent / "fixtures" / "snapshots"


def pair(worker: str) -> list[ck.NodeFacts]:
    return [ck.NodeFacts("head", discover_snapshot(str(SNAPS / "spark1")), True),
            ck.NodeFacts("spark-02", discover_snapshot(str(SNAPS / worker)))]


def test_healthy_pair_passes_and_keeps_only_fabric_and_parity_checks():
    checks = gate.gate_checks(pair("spark2"))
    assert checks and all(c.status != "fail" for c in checks)
    names = {c.name for c in checks}
    assert {"fabric", "twins", "mtu-match", "driver-match", "kernel-match", "subnet-match"} <= names
    assert not names & {"memlock", "hf-cache", "disk", "memory", "image", "docker"}, "doctor-only checks"


@pytest.mark.parametrize(("worker", "names", "words"), [
    ("spark2-twin-down", {"twins"}, ["spark-02:", "enP2p1s0f1np1", "ip link set"]),
    ("spark2-mtu1500", {"mtu-match"}, ["across nodes:", "MTU differs", "mtu: 9000"]),
    ("spark2-driver-mismatch", {"driver-match"}, ["NVIDIA driver differs", "same driver"]),
    ("spark2-same-subnet", {"twin-subnets", "subnet-match"}, ["share subnet", "netplan"]),
])
def test_a_fault_is_one_line_naming_node_twin_and_fix(worker, names, words):
    result = gate.GateResult(gate.gate_checks(pair(worker)))
    assert {c.name for c in result.failures} == names
    with pytest.raises(SparkError) as exc:
        result.raise_on_failure()
    text = str(exc.value)
    assert "\n" not in exc.value.message and "nothing was started" in text and exc.value.fix
    assert exc.value.fix not in exc.value.message, "the fix is said once, on its own line"
    for w in words:
        assert w in text, (w, text)


def test_no_failure_raises_nothing():
    gate.GateResult(gate.gate_checks(pair("spark2"))).raise_on_failure()


def test_single_node_or_dry_run_has_no_gate():
    from sparkhelpers.discover.nodes import Node
    from sparkhelpers.runner import LOCAL, Runner

    assert gate.start_gate(Runner(), [Node(0, "head", LOCAL)]).checks == []
    assert gate.start_gate(Runner(dry_run=True), [Node(0, "head", LOCAL), Node(1, "w", LOCAL)]).checks == []


@pytest.mark.parametrize("line", [
    "[W socket.cpp:464] [c10d] The client socket has failed to connect to [192.168.100.10]:29501 "
    "(errno: 113 - No route to host).",
    "torch.distributed.DistNetworkError: Connection reset by peer",
    "spark-02:412:412 [0] NCCL WARN NET/IB : Got completion from peer 192.168.100.10<45678> with error 12, "
    "opcode 0, len 0, vendor err 129 (Recv) IBV_WC_RETRY_EXC_ERR",
    "ERROR 12-01 10:00:00 RuntimeError: could not reach the master at 169.254.100.11:29501 within 600s",
    "ConnectionError: Unable to connect to GCS at 169.254.100.11:6385.",
])
def test_peer_error_lines_find_rendezvous_and_nccl_errors(line):
    log = "INFO loading weights\nINFO Starting vLLM API server\n" + line + "\nINFO retrying\n"
    assert gate.peer_error_lines(log) == [line.strip()]


def test_peer_error_lines_ignore_a_healthy_log_and_keep_the_last_few():
    healthy = "INFO NCCL INFO NET/IB : Using [0]rocep1s0f1:1/RoCE\nINFO Application startup complete.\n"
    assert gate.peer_error_lines(healthy) == []
    many = "\n".join(f"NCCL WARN connect {i} failed: No route to host" for i in range(10))
    assert gate.peer_error_lines(many) == [f"NCCL WARN connect {i} failed: No route to host" for i in (7, 8, 9)]


def test_peer_watch_reports_a_rank_only_while_its_errors_persist():
    err = "W socket.cpp: The client socket has failed to connect to [10.0.0.1]:29501 (errno: 113 - No route to host)"
    w = gate.PeerWatch(grace_s=90)
    assert w.observe("spark-02", f"INFO start\n{err}\n", 0) == []
    assert w.observe("spark-02", f"INFO start\n{err}\n{err}\n", 60) == []
    joined = f"{err}\nINFO joined the master\n" + "INFO loading weights\n" * 5
    assert w.observe("spark-02", joined, 70) == [], "a rank that got past its errors is forgotten"
    assert w.observe("spark-02", f"{err}\n", 100) == []
    assert w.observe("spark-02", f"{err}\n" * 4, 191) == [err] * 3


def test_stuck_message_is_one_line_with_the_recheck_and_the_log():
    broken = [ck.Check("ping-enp1s0f1np1", "spark-02", "fail", "169.254.101.12 does not answer", "check the cable")]
    text = gate.stuck_message("spark-02", ["NCCL WARN x", "NCCL WARN y"], broken)
    assert "\n" not in text and text.startswith("spark-02 cannot reach its peers")
    assert "169.254.101.12 does not answer" in text and "NCCL WARN x | NCCL WARN y" in text


# What capture.sh's fabric scope (the start's capture) does not write; the gate must judge alike without it.
NOT_IN_FABRIC_SCOPE = ("cmd/id.txt", "cmd/ulimit-l.txt", "proc", "etc", "cmd/docker-info.json",
                       "cmd/docker-image-id.txt", "cmd/hf-cache-path.txt", "cmd/hf-cache-existing.txt",
                       "cmd/df-hf-cache.txt", "cmd/stat-hf-cache.txt", "cmd/hf-cache-foreign.txt")


def fabric_scope(name: str, tmp: Path) -> Path:
    import shutil

    dest = tmp / name
    shutil.copytree(SNAPS / name, dest)
    for rel in NOT_IN_FABRIC_SCOPE:
        shutil.rmtree(dest / rel, ignore_errors=True) if (dest / rel).is_dir() else (dest / rel).unlink(missing_ok=True)
    for ethtool in (dest / "cmd").glob("ethtool-*"):
        ethtool.unlink()
    return dest


@pytest.mark.parametrize("worker", sorted(p.name for p in SNAPS.iterdir() if p.name.startswith("spark2")))
def test_fabric_scope_snapshots_get_the_same_gate_verdicts(worker, tmp_path):
    full = gate.gate_checks(pair(worker))
    part = gate.gate_checks([ck.NodeFacts("head", discover_snapshot(str(fabric_scope("spark1", tmp_path))), True),
                             ck.NodeFacts("spark-02", discover_snapshot(str(fabric_scope(worker, tmp_path))))])
    assert [(c.name, c.node, c.status, c.message) for c in part] == [(c.name, c.node, c.status, c.message)
                                                                      for c in full]
