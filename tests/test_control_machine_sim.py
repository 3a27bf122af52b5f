"""HEAD_HOST: the scripts run on a control machine (the host, outside every node) against emulated nodes only.

The control machine is this checkout on the host, with one veth on the cluster's management LAN
(sparkhelpers.sim.control): it reaches the nodes over SSH only, cannot reach the fabric, and runs no
container. Rank 0 is spark1 (HEAD_HOST); the head copies the model to the worker itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cluster_sim import API_KEY, HF_TOKEN, MODEL_DIR, ours, seed_model

ROOT = Path(__file__).resolve().parents[1]
CLI = str(ROOT / ".venv/bin/sparkhelpers")

pytestmark = [pytest.mark.sim, pytest.mark.engine]


@pytest.fixture
def control_machine(sim_cluster):
    from sparkhelpers.sim import control

    ctl = control.up(sim_cluster)
    key = ctl.dir / "api-key"  # secrets are read where the command runs: on the control machine
    key.write_text(API_KEY + "\n")
    key.chmod(0o600)
    try:
        yield ctl
    finally:
        control.down(sim_cluster)


def test_start_status_logs_doctor_and_stop_from_a_control_machine(sim_cluster, control_machine):
    c, ctl = sim_cluster, control_machine
    env = {"API_KEY_FILE": str(ctl.dir / "api-key"), "HF_TOKEN": HF_TOKEN, "START_TIMEOUT": "240",
           "STOP_TIMEOUT": "5", "MAX_MODEL_LEN": "2048"}

    def run(*cmd: str, timeout: float = 400):  # noqa: ANN202
        return ctl.run(list(cmd), env=env, timeout=timeout)

    seed_model(c)  # on the head only: the worker gets it from the head
    endpoint = f"http://{c.head.mgmt_ip}:8000"
    try:
        fabric = run("python3", "-c", f"import socket; socket.create_connection(('{c.head.fabric_ip}', 22), 2)",
                     timeout=30)
        assert not fabric.ok, "the control machine is outside the fabric: it is not a node"

        start = run(str(ROOT / "start_cluster.sh"), "--nodes", "2")
        assert start.ok, f"{start.stdout}\n{start.stderr}"
        assert f"is ready: {endpoint}/v1" in start.stdout and "native, 2 node(s)" in start.stdout
        assert "copying Qwen/Qwen3-0.6B" in start.stderr, "the head synced the model to the worker"
        assert ours(c, "spark1", running_only=True) and ours(c, "spark2", running_only=True)

        st = run(CLI, "status", "--json", timeout=120)
        assert st.ok, st.stderr
        data = json.loads(st.stdout)
        assert data["endpoint"] == endpoint and data["healthy"] and data["served_models"] == ["Qwen/Qwen3-0.6B"]
        assert [len(n["containers"]) for n in data["nodes"]] == [1, 1] and not data["errors"]

        logs = run(CLI, "logs", "--node", "0", "--tail", "5", timeout=60)
        assert logs.ok and logs.stdout.strip(), logs.stderr

        doctor = run(CLI, "doctor", "--quick", "--json", timeout=300)
        checks = json.loads(doctor.stdout)["checks"]
        ssh = {ch["node"]: ch["status"] for ch in checks if ch["name"] == "ssh"}
        assert ssh == {"head": "pass", c.workers[0].mgmt_ip: "pass"}, ssh

        stop = run(str(ROOT / "stop_cluster.sh"))
        assert stop.ok, stop.stderr
        assert ours(c, "spark1") == [] and ours(c, "spark2") == []
        assert API_KEY not in start.stdout + start.stderr + st.stdout + logs.stdout
    finally:
        run(str(ROOT / "stop_cluster.sh"), "--force")
        for node in ("spark1", "spark2"):
            c.exec(node, f"rm -rf {MODEL_DIR} /root/api-key")
