"""The topology (nodes, SSH, the endpoint) and the layout rule give one answer to every command."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from sparkhelpers import topology as tp
from sparkhelpers.bench import current
from sparkhelpers.cluster.plan import build_plan
from sparkhelpers.config import load_config
from sparkhelpers.discover.nodes import cluster_nodes
from sparkhelpers.errors import SparkError
from sparkhelpers.models import resolve_model, workers_from_config
from sparkhelpers.topology import LayoutAsk, choose_layout

ROOT = Path(__file__).resolve().parents[1]
FABRIC = {"WORKER_HOST": "spark2 spark3", "WORKER_IB_IP": "169.254.100.12 169.254.100.13",
          "HEAD_IP": "169.254.100.11", "FABRIC_IF": "enp1s0f1np1", "NCCL_IB_HCA": "rocep1s0f1"}
QUOTED = "-o 'ProxyCommand=ssh -W %h:%p bastion' -o ServerAliveInterval=5"


def plan_of(cfg, **kwargs):
    return build_plan(cfg, resolve_model(cfg), **kwargs)


def test_a_quoted_ssh_option_reaches_every_node_the_same_way():
    cfg = load_config(flags={**FABRIC, "SSH_OPTIONS": QUOTED, "WORKER_USER": "ops", "SSH_KEY": "/k"})
    want = ("-o", "ProxyCommand=ssh -W %h:%p bastion", "-o", "ServerAliveInterval=5")
    plan = plan_of(cfg, nodes=3)
    doctor = [n.host for n in cluster_nodes(cfg)][1:]
    sync = [w.mgmt for w in workers_from_config(cfg)]
    start = [n.host for n in plan.workers]
    assert start == doctor == sync
    assert all(h.options == want and h.user == "ops" and h.key == "/k" for h in start)


def test_worker_rules_are_checked_once_for_every_command():
    bad = load_config(flags={**FABRIC, "WORKER_IB_IP": "169.254.100.12"})
    for command in (tp.topology, cluster_nodes, workers_from_config, lambda c: plan_of(c, nodes=2)):
        with pytest.raises(SparkError, match="WORKER_IB_IP has 1 entries but WORKER_HOST has 2"):
            command(bad)
    with pytest.raises(SparkError, match="WORKER_HOST lists spark2 twice"):
        tp.topology(load_config(flags={"WORKER_HOST": "spark2 spark2"}))
    with pytest.raises(SparkError, match="is not a host name"):
        workers_from_config(load_config(flags={"WORKER_HOST": "spark2 -oProxyCommand=x"}))
    with pytest.raises(SparkError, match="cannot be split"):
        tp.topology(load_config(flags={**FABRIC, "SSH_OPTIONS": "-o 'unbalanced"}))


@pytest.mark.parametrize("listen,head,url", [
    ("0.0.0.0", "", "http://127.0.0.1:8123"),
    ("::", "", "http://127.0.0.1:8123"),
    ("169.254.100.11", "", "http://169.254.100.11:8123"),
    ("0.0.0.0", "spark1", "http://spark1:8123"),
    ("169.254.100.11", "spark1", "http://169.254.100.11:8123"),
])
def test_one_endpoint_for_start_status_smoke_bench_and_sweep(listen, head, url):
    cfg = load_config(flags={**FABRIC, "VLLM_HOST": listen, "VLLM_PORT": "8123", "HEAD_HOST": head})
    assert tp.endpoint(cfg) == url
    assert plan_of(cfg, nodes=2).endpoint == url  # start, and the lifecycle's health/chat
    assert current.configured_url(cfg) == url  # bench current and the sweep


def test_a_loopback_listener_on_a_remote_head_is_refused():
    cfg = load_config(flags={"HEAD_HOST": "spark1", "VLLM_HOST": "127.0.0.1"})
    with pytest.raises(SparkError, match="control machine cannot reach"):
        tp.endpoint(cfg)


def test_a_remote_head_is_rank_0_of_the_plan():
    cfg = load_config(flags={**FABRIC, "HEAD_HOST": "spark1", "WORKER_USER": "ops"})
    plan = plan_of(cfg, nodes=3)
    assert [n.host.target for n in plan.nodes] == ["ops@spark1", "ops@spark2", "ops@spark3"]
    assert not plan.head.host.is_local and plan.endpoint == "http://spark1:8000"
    with pytest.raises(SparkError, match="also listed in WORKER_HOST"):
        tp.topology(load_config(flags={**FABRIC, "HEAD_HOST": "spark2"}))


class _Engine(http.server.BaseHTTPRequestHandler):
    """Enough of the OpenAI API for smoke and status: /health, /v1/models, one chat answer."""

    def _send(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802
        self._send({"data": [{"id": "Qwen/Qwen3-0.6B"}]} if self.path == "/v1/models" else {})

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._send({"choices": [{"message": {"content": "OK"}}], "usage": {"completion_tokens": 1}})

    def log_message(self, *args):  # noqa: ANN002
        pass


@pytest.fixture
def engine_on_127_0_0_2():
    """A server on 127.0.0.2 (a loopback address that is not 127.0.0.1): VLLM_HOST set to it must be asked."""
    with socket.socket() as s:
        s.bind(("127.0.0.2", 0))
        port = s.getsockname()[1]
    server = http.server.ThreadingHTTPServer(("127.0.0.2", port), _Engine)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield port
    server.shutdown()
    server.server_close()


def test_smoke_status_and_bench_ask_the_address_the_engine_listens_on(engine_on_127_0_0_2, sparkhelpers_bin,
                                                                      tmp_path):
    env = {**os.environ, "VLLM_HOST": "127.0.0.2", "VLLM_PORT": str(engine_on_127_0_0_2),
           "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
    url = f"http://127.0.0.2:{engine_on_127_0_0_2}"
    smoke = subprocess.run([*sparkhelpers_bin, "models", "smoke", "--timeout", "10"], env=env, capture_output=True,
                           text=True, timeout=60)
    assert smoke.returncode == 0 and "answered 'OK'" in smoke.stdout, smoke.stderr
    status = subprocess.run([*sparkhelpers_bin, "status", "--json"], env=env, capture_output=True, text=True,
                            timeout=60)
    data = json.loads(status.stdout)
    assert data["endpoint"] == url and data["healthy"] and data["served_models"] == ["Qwen/Qwen3-0.6B"]
    bench = subprocess.run([*sparkhelpers_bin, "bench", "run", "--dry-run", "--num-prompts", "1"], env=env,
                           capture_output=True, text=True, timeout=60)
    assert bench.returncode == 0 and f"to {url}" in bench.stderr, bench.stderr


def test_status_with_docker_unreachable_is_an_error_not_an_empty_cluster(sparkhelpers_bin, tmp_path):
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/dead.sock", "VLLM_PORT": "9"}
    r = subprocess.run([*sparkhelpers_bin, "status"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stdout
    assert "head: ERROR Docker does not answer" in r.stdout and "no containers" not in r.stdout
    assert "could not look at 1 node(s)" in r.stderr and "fix:" in r.stderr
    data = json.loads(subprocess.run([*sparkhelpers_bin, "status", "--json"], env=env, capture_output=True,
                                     text=True, timeout=60).stdout)
    assert data["errors"] and not data["nodes"][0]["docker"]


@pytest.fixture
def recording_ssh(tmp_path):
    """An `ssh` (and rsync) first on PATH that only records that it was called."""
    bin_dir, log = tmp_path / "bin", tmp_path / "ssh-calls.log"
    bin_dir.mkdir()
    for name in ("ssh", "rsync"):
        (bin_dir / name).write_text(f"#!/bin/sh\necho \"{name} $*\" >>{log}\nsleep 30\nexit 255\n")
        (bin_dir / name).chmod(0o755)
    return bin_dir, log


def test_a_multi_node_dry_run_opens_no_connection(recording_ssh, sparkhelpers_bin, tmp_path):
    bin_dir, log = recording_ssh
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "WORKER_HOST": "192.0.2.10 192.0.2.11",
           "SSH_CONNECT_TIMEOUT": "30", "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
    t0 = time.monotonic()
    start = subprocess.run([str(ROOT / "start_cluster.sh"), "--dry-run", "--nodes", "3"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert start.returncode == 0, start.stderr
    assert "<discovered at start>" in start.stdout and "opens no connection" in start.stdout
    stop = subprocess.run([str(ROOT / "stop_cluster.sh"), "--dry-run"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert stop.returncode == 0 and "192.0.2.11" in stop.stdout + stop.stderr, stop.stderr
    # from a control machine (HEAD_HOST), the sync's dry run asks neither the head nor the workers
    sync = subprocess.run([*sparkhelpers_bin, "models", "sync", "qwen3-0.6b", "--dry-run"],
                          env={**env, "HEAD_HOST": "192.0.2.9"}, capture_output=True, text=True, timeout=60)
    assert sync.returncode == 0 and "would copy" in sync.stdout, sync.stderr
    assert "would ask" in sync.stderr and "192.0.2.9" in sync.stderr
    assert time.monotonic() - t0 < 25, "a dry run waits for no node"
    assert not log.exists(), log.read_text()


def test_the_control_machine_namespace_belongs_to_its_sim_cluster():
    from sparkhelpers.sim import netplan
    from sparkhelpers.sim.control import netns_name

    assert netplan.owns_netns("a", netns_name("a")) and not netplan.owns_netns("a", netns_name("a-b"))


@pytest.mark.parametrize("ask,flags,available,want", [
    (LayoutAsk(), {}, 3, (3, 3, 1)),  # raw repo, nothing set: every configured node
    (LayoutAsk(tensor_parallel=1), {}, 3, (1, 1, 1)),  # the user's TP gives the count
    (LayoutAsk(preset_tensor_parallel=2), {}, 3, (2, 2, 1)),  # a preset's TP gives the count
    (LayoutAsk(preset_tensor_parallel=1), {"nodes": 3}, 3, (3, 3, 1)),  # --nodes spreads a preset
    (LayoutAsk(pipeline_parallel=2), {"nodes": 2}, 2, (2, 1, 2)),
    (LayoutAsk(preset_tensor_parallel=2), {"solo": True}, 3, (1, 1, 1)),
])
def test_layout_rule(ask, flags, available, want):
    lay = choose_layout(ask, available=available, **flags)
    assert (lay.nodes, lay.tensor_parallel, lay.pipeline_parallel) == want


def test_layout_rule_refusals():
    with pytest.raises(SparkError, match="needs 4 GPUs, but 2 nodes"):
        choose_layout(LayoutAsk(tensor_parallel=4), available=3, nodes=2)
    with pytest.raises(SparkError, match="big needs 4 nodes; this cluster has 2 .*comes from the preset"):
        choose_layout(LayoutAsk(preset_tensor_parallel=4), available=2, name="big")
    with pytest.raises(SparkError, match="RUNTIME=llama-cpp serves from one node"):
        choose_layout(LayoutAsk(), available=2, nodes=2, runtime="llama-cpp")
    assert choose_layout(LayoutAsk(), available=3, runtime="llama-cpp").nodes == 1


def test_models_show_and_the_plan_agree_on_the_layout():
    """Catalog and plan used different rules: TP from len(WORKER_HOST) vs count // pp."""
    cfg = load_config(flags={**FABRIC, "MODEL": "acme/Some-Model-7B", "TENSOR_PARALLEL": "1"})
    spec = resolve_model(cfg)
    plan = build_plan(cfg, spec)
    assert (spec.nodes, spec.tensor_parallel) == (len(plan.nodes), plan.tensor_parallel) == (1, 1)
    cfg = load_config(flags={**FABRIC, "MODEL": "acme/Some-Model-7B", "PIPELINE_PARALLEL": "3"})
    spec, plan = resolve_model(cfg), plan_of(cfg)
    assert (spec.nodes, spec.tensor_parallel, spec.pipeline_parallel) == (3, 1, 3)
    assert (len(plan.nodes), plan.tensor_parallel, plan.pipeline_parallel) == (3, 1, 3)


def test_a_node_set_without_this_machine_serves_with_its_first_node_as_rank_0():
    cfg = load_config(flags=FABRIC)
    topo = tp.node_set(cfg, ["spark3", "spark2"])
    plan = build_plan(cfg, resolve_model(cfg), nodes=2, topo=topo)
    assert [n.host.address for n in plan.nodes] == ["spark3", "spark2"] and topo.remote_head
    assert plan.head.fabric_ip == "169.254.100.13" and plan.nodes[1].env["MASTER_ADDR"] == "169.254.100.13"
    assert plan.endpoint == topo.endpoint() == "http://spark3:8000"
    with pytest.raises(SparkError, match="spark3 asks for more nodes|--nodes 3 asks for more nodes"):
        build_plan(cfg, resolve_model(cfg), nodes=3, topo=topo)
    with pytest.raises(SparkError, match="no such node"):
        tp.node_set(cfg, ["spark9"])


def test_config_set_refuses_a_bad_head_host(sparkhelpers_bin):
    r = subprocess.run([*sparkhelpers_bin, "config", "set", "HEAD_HOST", "spark1;reboot"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1 and "HEAD_HOST" in r.stderr and "fix:" in r.stderr, r.stderr
    ok = subprocess.run([*sparkhelpers_bin, "config", "set", "HEAD_HOST", "spark1"], capture_output=True, text=True,
                        timeout=60)
    assert ok.returncode == 0, ok.stderr
