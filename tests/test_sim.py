"""The emulated cluster: real sshd/dockerd/rsync between namespaced nodes, fake GB10/CX7 facts."""

from __future__ import annotations

import json
import subprocess
import sys
import time
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
        netplan.check_nodes(9)


def test_link_names_fit_the_kernel_limit():
    for line in netplan.root_batch("x" * 24, 8).splitlines():
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


# ---- the engine image on the cluster ----

IMG = "sparkhelpers-sim/engine:latest"
MODEL_DIR = "/raid/hf-cache/hub/models--Qwen--Qwen3-0.6B/snapshots/0123abc"
RUN = ["docker", "run", "--pull", "never", "--network", "host", "--gpus", "all"]
HTTP_GET = ("import sys,urllib.request,time\nfor i in range(120):\n    try:\n"
            "        print(urllib.request.urlopen(sys.argv[1],timeout=2).read().decode()); break\n"
            "    except OSError: time.sleep(0.25)\nelse: sys.exit(1)\n")


def ensure_image_on_worker(c):
    if c.exec("spark2", ["docker", "image", "inspect", IMG]).ok:
        return
    on(c, "spark1", f"docker save {IMG} | ssh {c.workers[0].fabric_ip} docker load -q", timeout=300)


def wait_http(c, node, url):
    return on(c, node, ["python3", "-c", HTTP_GET, url], timeout=60)


def cleanup_containers(c, *names):
    for node in ("spark1", "spark2"):
        c.exec(node, ["docker", "rm", "-f", *names])


@pytest.mark.sim
@pytest.mark.engine
def test_docker_save_load_and_host_network_container_over_fabric(sim_cluster):
    c = sim_cluster
    c.exec("spark2", ["docker", "rmi", "-f", IMG, c.image])
    on(c, "spark1", f"docker save {c.image} | ssh {c.workers[0].fabric_ip} docker load -q", timeout=300)
    ids = {on(c, n, ["docker", "image", "inspect", "-f", "{{.Id}}", c.image]).strip() for n in ("spark1", "spark2")}
    assert len(ids) == 1
    on(c, "spark2", ["docker", "tag", c.image, IMG])
    try:
        on(c, "spark1", ["ssh", c.workers[0].fabric_ip, "docker", "run", "-d", "--pull", "never", "--name", "probe",
                         "--network", "host", "--gpus", "all", "--privileged", "--ipc", "host", "--ulimit",
                         "memlock=-1", "--ulimit", "stack=67108864", "--shm-size", "1g", IMG,
                         "python3", "-m", "http.server", "8123"])
        assert "Directory listing" in wait_http(c, "spark1", f"http://{c.workers[0].fabric_ip}:8123/")
    finally:
        cleanup_containers(c, "probe")


def ray_status(c) -> str:
    return on(c, "spark1", ["docker", "exec", "ray-head", "ray", "status"], timeout=120)


def wait_ray(c, want: tuple[int, int], within: float) -> tuple[str, float]:
    """Poll the real `ray status` until parse_ray_status gives ``want``; (last text, seconds taken)."""
    from sparkhelpers.cluster.nodes import parse_ray_status

    t0, status = time.monotonic(), ""
    while time.monotonic() - t0 < within:
        status = c.exec("spark1", ["docker", "exec", "ray-head", "ray", "status"], timeout=120).stdout
        if parse_ray_status(status) == want:
            break
        time.sleep(1)
    return status, time.monotonic() - t0


@pytest.mark.sim
@pytest.mark.engine
@pytest.mark.slow
def test_real_ray_joins_over_the_fabric_serves_vllm_and_drops_a_lost_node(sim_cluster):
    """The image's real Ray 2.49.2: a head and a worker in two namespaces form one cluster (one emulated GPU
    each, declared for NVML), the vLLM stand-in takes a placement group of 2 GPU bundles through it, and a
    killed worker leaves `ray status` only after the real Ray's detection delay; the engine keeps /health 200
    until the next request fails, like vLLM."""
    from sparkhelpers.cluster.nodes import parse_ray_status

    c = sim_cluster
    ensure_image_on_worker(c)
    head, worker = c.head.fabric_ip, c.workers[0].fabric_ip
    try:
        on(c, "spark1", [*RUN, "-d", "--name", "ray-head", "-v", "/raid/hf-cache:/root/.cache/huggingface", IMG,
                         "ray", "start", "--head", "--port", "6385", "--disable-usage-stats",
                         "--node-ip-address", head, "--block"])
        on(c, "spark2", [*RUN, "-d", "--name", "ray-worker", IMG, "ray", "start", "--address", f"{head}:6385",
                         "--disable-usage-stats", "--node-ip-address", worker, "--block"])
        status, _ = wait_ray(c, (2, 2), 180)
        assert parse_ray_status(status) == (2, 2), status
        for section in ("Autoscaler status", "Total Usage:", "Total Constraints:", "Total Demands:"):
            assert section in status  # the real Ray 2.49 text
        assert " 0.0/2.0 GPU" in status
        # a head that is not there: the real Ray retries without end (the stand-in used to exit 1 in 10 s)
        on(c, "spark2", [*RUN, "-d", "--name", "ray-lost", IMG, "ray", "start", "--address", "169.254.101.99:6385",
                         "--node-ip-address", worker])
        lost = ""
        for _ in range(60):
            lost = c.exec("spark2", ["docker", "logs", "ray-lost"]).stderr
            if "Failed to connect to GCS at address 169.254.101.99:6385" in lost:
                break
            time.sleep(1)
        assert "Failed to connect to GCS at address 169.254.101.99:6385" in lost, lost
        assert on(c, "spark2", ["docker", "inspect", "-f", "{{.State.Running}}", "ray-lost"]).strip() == "true"
        c.exec("spark2", ["docker", "rm", "-f", "ray-lost"])
        # vLLM on the Ray cluster: TP=4 exceeds the 2 GPUs; TP=2 takes one bundle on each node
        on(c, "spark1", f"mkdir -p {MODEL_DIR} && echo '{{}}' > {MODEL_DIR}/config.json")
        too_big = c.exec("spark1", ["docker", "exec", "-e", "HF_HUB_OFFLINE=1", "ray-head", "vllm", "serve",
                                    "Qwen/Qwen3-0.6B", "-tp", "4", "--distributed-executor-backend", "ray"],
                         timeout=180)
        assert too_big.returncode == 1 and "exceeds the total number of available GPUs" in too_big.stderr
        on(c, "spark1", ["docker", "exec", "-d", "-e", "HF_HUB_OFFLINE=1", "-e", "NCCL_DEBUG=INFO",
                         "-e", "NCCL_IB_HCA=rocep1s0f1,roceP2p1s0f1", "ray-head", "sh", "-c",
                         "vllm serve Qwen/Qwen3-0.6B -tp 2 --distributed-executor-backend ray --port 8001 "
                         "--served-model-name qwen > /tmp/vllm.log 2>&1"])
        health = f"http://{head}:8001/health"
        for _ in range(240):
            if http_code(c, "spark1", health) == 200:
                break
            time.sleep(1)
        log = on(c, "spark1", ["docker", "exec", "ray-head", "cat", "/tmp/vllm.log"])
        assert http_code(c, "spark1", health) == 200, log
        assert f"workers on ['{head}', '{worker}']" in log, log  # one bundle per node (PACK spills over)
        # the autoscaler's summary refreshes every few seconds: the placement group shows up a little later
        status = ray_status(c)
        for _ in range(30):
            if " 2.0/2.0 GPU" in status:
                break
            time.sleep(1)
            status = ray_status(c)
        assert " 2.0/2.0 GPU" in status, status
        assert "via NET/Socket/0" in log  # no /dev/infiniband in this container (no --device/--privileged)

        # the worker node dies: Ray keeps it in Active until its health checks time out
        on(c, "spark2", ["docker", "kill", "ray-worker"])
        killed = time.monotonic()
        status, inactive = wait_ray(c, (1, 1), 120)
        assert parse_ray_status(status) == (1, 1), status
        assert http_code(c, "spark1", health) == 200  # like vLLM: /health stays 200 after a lost rank ...
        chat = json.dumps({"model": "qwen", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
        assert http_code(c, "spark1", f"http://{head}:8001/v1/chat/completions", chat) == 500  # ... until a request
        log = on(c, "spark1", ["docker", "exec", "ray-head", "cat", "/tmp/vllm.log"])
        assert "ray.exceptions." in log and "RayWorkerWrapper on " + worker in log, log
        print(f"real Ray: the killed worker left Active and the GPU totals {inactive:.1f} s after the kill "
              f"({time.monotonic() - killed:.1f} s to the failed request)")
    finally:
        cleanup_containers(c, "ray-head", "ray-worker", "ray-lost")
        c.exec("spark1", f"rm -rf {MODEL_DIR}")


def http_code(c, node, url, body=None):
    """The HTTP status of one GET (or POST of ``body``) sent from ``node``; 0 when nothing answers."""
    script = ("import sys,urllib.request,urllib.error\nd=sys.argv[2].encode() if len(sys.argv)>2 else None\n"
              "r=urllib.request.Request(sys.argv[1],data=d,headers={'Content-Type':'application/json'})\n"
              "try: print(urllib.request.urlopen(r,timeout=30).status)\n"
              "except urllib.error.HTTPError as e: print(e.code)\nexcept OSError: print(0)")
    return int(on(c, node, ["python3", "-c", script, url, *([body] if body else [])], timeout=60).strip())


def stream_chat(c, node, url, model, max_tokens=16):
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Name a colour."}],
                       "max_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True}})
    script = ("import sys,urllib.request\nr=urllib.request.Request(sys.argv[1],data=sys.argv[2].encode(),"
              "headers={'Content-Type':'application/json'})\nprint(urllib.request.urlopen(r,timeout=120).read().decode())")
    out = on(c, node, ["python3", "-c", script, url, body], timeout=150)
    chunks = [json.loads(ln[6:]) for ln in out.splitlines() if ln.startswith("data: {")]
    assert out.rstrip().endswith("data: [DONE]")
    return chunks


@pytest.mark.sim
@pytest.mark.engine
def test_vllm_native_multinode_streams_a_real_chat_with_usage(sim_cluster):
    c = sim_cluster
    ensure_image_on_worker(c)
    head, worker = c.head.fabric_ip, c.workers[0].fabric_ip
    mount = ["-v", "/raid/hf-cache:/root/.cache/huggingface", "-e", "HF_HUB_OFFLINE=1"]
    on(c, "spark1", f"mkdir -p {MODEL_DIR} && echo '{{}}' > {MODEL_DIR}/config.json")
    on(c, "spark1", ["rsync", "-a", "/raid/hf-cache/hub", f"{worker}:/raid/hf-cache/"])
    args = ["vllm", "serve", "Qwen/Qwen3-0.6B", "--nnodes", "2", "--master-addr", head, "--master-port", "29501",
            "-tp", "2"]
    try:
        # flags are checked like vLLM's argparse: unknown flag or bad value -> exit 2
        bad = c.exec("spark1", [*RUN, "--rm", IMG, "vllm", "serve", "m", "--no-such-flag"])
        assert bad.returncode == 2 and "unrecognized arguments: --no-such-flag" in bad.stderr
        bad = c.exec("spark1", [*RUN, "--rm", IMG, "vllm", "serve", "m", "--gpu-memory-utilization", "lots"])
        assert bad.returncode == 2 and "invalid float value" in bad.stderr
        missing = c.exec("spark1", [*RUN, "--rm", *mount, IMG, "vllm", "serve", "org/absent"])
        assert missing.returncode == 1 and "LocalEntryNotFoundError" in missing.stderr
        on(c, "spark2", [*RUN, "-d", "--name", "vllm-w", *mount, IMG, *args, "--node-rank", "1", "--headless"])
        on(c, "spark1", [*RUN, "-d", "--name", "vllm-h", "--privileged", *mount, "-e", "NCCL_DEBUG=INFO",
                         "-e", "NCCL_IB_HCA=rocep1s0f1,roceP2p1s0f1", IMG, *args, "--node-rank", "0",
                         "--port", "8000", "--served-model-name", "qwen3"])
        models = json.loads(wait_http(c, "spark1", f"http://{head}:8000/v1/models"))
        assert [m["id"] for m in models["data"]] == ["qwen3"]
        chunks = stream_chat(c, "spark1", f"http://{head}:8000/v1/chat/completions", "qwen3")
        text = "".join((ch["choices"][0]["delta"].get("content") or "") for ch in chunks if ch["choices"])
        usage = chunks[-1]["usage"]
        assert text.strip() and usage["completion_tokens"] > 0 and usage["prompt_tokens"] > 0
        assert all(ch["model"] == "qwen3" for ch in chunks)
        logs = on(c, "spark1", "docker logs vllm-h 2>&1")
        assert "node rank 1 joined from " + worker in logs
        assert "[send] via NET/IB/0" in logs  # --privileged: /dev/infiniband is in the container
        # the worker dies: like real vLLM, rank 0 keeps answering /health 200; the next request fails with
        # HTTP 500, then /health says 503 and the API server exits
        on(c, "spark2", ["docker", "rm", "-f", "vllm-w"])
        time.sleep(3)  # the loss is noticed within a second or two
        assert http_code(c, "spark1", f"http://{head}:8000/health") == 200
        chat = json.dumps({"model": "qwen3", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
        assert http_code(c, "spark1", f"http://{head}:8000/v1/chat/completions", chat) == 500
        assert http_code(c, "spark1", f"http://{head}:8000/health") == 503
        for _ in range(60):
            state = on(c, "spark1", ["docker", "inspect", "-f", "{{.State.Running}}", "vllm-h"]).strip()
            if state == "false":
                break
            time.sleep(0.25)
        assert state == "false" and "EngineCore encountered an issue" in on(c, "spark1", "docker logs vllm-h 2>&1")
    finally:
        cleanup_containers(c, "vllm-h", "vllm-w")


@pytest.mark.sim
@pytest.mark.engine
def test_llama_server_and_engine_faults(sim_cluster):
    from sparkhelpers.sim import faults

    c = sim_cluster
    gguf = "/opt/sparksim/models/SmolLM2-135M-Instruct.Q4_1.gguf"
    mount = ["-v", "/raid/hf-cache:/root/.cache/huggingface"]
    head = c.head.fabric_ip
    try:
        bad = c.exec("spark1", [*RUN, "--rm", IMG, "llama-server", "-m", gguf, "--bogus"])
        assert bad.returncode == 1 and "error:" in bad.stderr
        faults.inject(c, "spark1", "engine-crash-after", "1")
        on(c, "spark1", [*RUN, "-d", "--name", "llama", *mount, IMG, "llama-server", "-m", gguf, "--host", head,
                         "--port", "8090", "-t", "1", "-np", "2", "-c", "2048", "--alias", "smol"])
        wait_http(c, "spark1", f"http://{head}:8090/health")
        chunks = stream_chat(c, "spark1", f"http://{head}:8090/v1/chat/completions", "smol", max_tokens=4)
        assert chunks[-1]["usage"]["completion_tokens"] > 0
        for _ in range(40):  # crash after the 1st request
            if on(c, "spark1", ["docker", "inspect", "-f", "{{.State.Running}}", "llama"]).strip() == "false":
                break
            time.sleep(0.25)
        assert "crash after 1 requests" in on(c, "spark1", "docker logs llama 2>&1")
        faults.inject(c, "spark1", "engine-crash-load")
        r = c.exec("spark1", [*RUN, "--rm", *mount, IMG, "llama-server", "-m", gguf])
        assert r.returncode == 1 and "crash during load" in r.stderr
    finally:
        faults.clear(c, "spark1")
        cleanup_containers(c, "llama")
    assert faults.active_faults(c, "spark1") == []


@pytest.mark.sim
def test_faults_are_observable_and_clear(make_sim):
    from sparkhelpers.sim import faults

    c = make_sim(nodes=2)
    w = c.workers[0]
    faults.inject(c, "spark2", "link-down", "twin1")
    assert "enp1s0f1np1 (Down)" in on(c, "spark2", "ibdev2netdev")
    assert c.exec("spark1", ["ping", "-c1", "-W1", w.fabric_ip]).returncode != 0
    assert c.exec("spark1", ["ping", "-c1", "-W1", w.fabric2_ip]).ok
    faults.inject(c, "spark2", "kill-sshd")
    assert c.exec("spark1", ["ssh", "-o", "ConnectTimeout=3", w.fabric2_ip, "true"]).returncode == 255
    faults.inject(c, "spark2", "fill-disk")
    assert c.exec("spark2", "echo x > /raid/hf-cache/new").returncode != 0
    faults.inject(c, "spark2", "slow-fabric", "50mbit")
    assert "rate 50Mbit" in on(c, "spark2", "tc qdisc show dev enP2p1s0f1np1")
    faults.clear(c, "spark2")
    assert "enp1s0f1np1 (Up)" in on(c, "spark2", "ibdev2netdev")
    on(c, "spark1", ["ssh", w.fabric_ip, "echo x > /raid/hf-cache/new"])
    faults.inject(c, "spark2", "stop-node")
    res = c.exec("spark1", ["ssh", "-o", "ConnectTimeout=2", w.mgmt_ip, "true"])
    assert res.returncode == 255
    faults.inject(c, "spark2", "clear")  # boots it again, disks kept
    assert on(c, "spark1", ["ssh", w.fabric_ip, "cat /raid/hf-cache/new"]).strip() == "x"


@pytest.mark.sim
def test_cli_profile_and_seed_model(sim_cluster, sparkhelpers_bin, sim_state_dir, monkeypatch):
    monkeypatch.setenv("SPARK_STATE_DIR", str(sim_state_dir))
    base = [*sparkhelpers_bin, "sim"]
    r = subprocess.run([*base, "profile", "--name", sim_cluster.name], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == sim_cluster.profile
    r = subprocess.run([*base, "seed-model", "--name", sim_cluster.name, "spark2", "org/seeded"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert on(sim_cluster, "spark2", "ls /raid/hf-cache/hub/models--org--seeded/snapshots/*/config.json")
    on(sim_cluster, "spark2", "rm -rf /raid/hf-cache/hub/models--org--seeded")
    r = subprocess.run([*base, "seed-model", "--name", sim_cluster.name, "spark2", "noslash"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "give an org/name repo id" in r.stderr


@pytest.mark.sim
def test_a_failing_test_still_tears_its_cluster_down(tmp_path, sim_state_dir):
    """Run a pytest session whose test fails while its cluster is up; nothing may be left behind."""
    from sparkhelpers.runner import Runner
    from sparkhelpers.sim import cluster as cl

    marker = tmp_path / "cluster.txt"
    (tmp_path / "test_inner.py").write_text(
        "def test_fails(make_sim):\n"
        "    c = make_sim(nodes=1)\n"
        f"    open({str(marker)!r}, 'w').write(c.name + ' ' + c.dir)\n"
        "    assert c.exec('spark1', ['true']).ok\n"
        "    raise AssertionError('deliberate failure with a cluster up')\n")
    tests_dir = Path(__file__).resolve().parent
    env = {**__import__("os").environ, "PYTHONPATH": str(tests_dir)}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "simfixtures", "-p", "no:cacheprovider",
                        "--rootdir", str(tmp_path), str(tmp_path / "test_inner.py")],
                       capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert r.returncode == 1 and "deliberate failure" in r.stdout, r.stdout + r.stderr
    name, cdir = marker.read_text().split()
    assert not any(netplan.owns_netns(name, ns) for ns in cl.netns_list(Runner()))
    assert not Path(cdir).exists()


def test_up_dry_run_shows_the_plan_and_changes_nothing(sparkhelpers_bin, isolated_env):
    r = subprocess.run([*sparkhelpers_bin, "sim", "up", "--dry-run", "--name", "dry", "--nodes", "3",
                        "--fact", "spark3:mtu=1500"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "ip netns add sparksim-dry-spark3" in r.stdout
    assert "addr add 169.254.102.13/24 dev enP2p1s0f1np1" in r.stdout
    assert "link set enp1s0f1np1 mtu 1500 up" in r.stdout
    assert not (isolated_env / "state" / "sim").exists()
