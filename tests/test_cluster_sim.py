"""start_cluster.sh, stop_cluster.sh, status and logs end to end on the emulated cluster.

Real sshd, dockerd, rsync, `docker save | ssh | docker load` and a real tiny engine (SmolLM2 through
xllamacpp behind the sim's strict `vllm`/`ray` stand-ins). The scripts run on the head exactly as a
user runs them, pointed at the sim by its config profile.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from polling import wait_for

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = "/raid/hf-cache/hub/models--Qwen--Qwen3-0.6B"
API_KEY = "sk-sim-api-key-7c1d9e"
HF_TOKEN = "hf_sim_token_4b8a2f"
FAULT_FILE = "/raid/hf-cache/.sparksim-fault"
GGUF_REPO = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"
# A valid one-tensor safetensors file of N floats (the models helper verifies weights' headers).
SAFETENSORS = ("python3 -c 'import json,struct,sys; h=json.dumps({\"w\":{\"dtype\":\"F32\",\"shape\":[N],"
               "\"data_offsets\":[0,4*N]}}).encode(); "
               "sys.stdout.buffer.write(struct.pack(\"<Q\",len(h))+h+bytes(4*N))'")

pytestmark = [pytest.mark.sim, pytest.mark.engine]


def seed_model(cluster, node: str = "spark1") -> None:
    """A model snapshot in the head's HF cache (the sim engine serves SmolLM2 under its name)."""
    snap = cluster.seed_model(node, "Qwen/Qwen3-0.6B")
    # what the models helper's verify wants of a complete snapshot: a tokenizer and weights
    cluster.exec(node, f"echo '{{}}' >{snap}/tokenizer.json && {SAFETENSORS.replace('N', '4096')} "
                       f">{snap}/model.safetensors").check("completing the snapshot")
    cluster.exec(node, f"umask 077 && printf '%s\\n' {API_KEY} >/root/api-key").check("writing the API key file")


def env_for(cluster, **extra: str) -> list[str]:
    base = {"SPARK_CONFIG": cluster.profile, "START_TIMEOUT": "240", "STOP_TIMEOUT": "5",
            "API_KEY_FILE": "/root/api-key", "HF_TOKEN": HF_TOKEN, "MAX_MODEL_LEN": "2048"}
    return [f"{k}={v}" for k, v in {**base, **extra}.items()]


def script(cluster, name: str, *args: str, timeout: float = 400, **extra: str):
    return cluster.exec("spark1", ["env", *env_for(cluster, **extra), str(ROOT / name), *args], timeout=timeout)


def cli(cluster, *args: str, timeout: float = 120, **extra: str):
    return cluster.exec("spark1", ["env", *env_for(cluster, **extra), str(ROOT / ".venv/bin/sparkhelpers"), *args],
                        timeout=timeout)


def ours(cluster, node: str, running_only: bool = False) -> list[str]:
    flag = "" if running_only else "-a"
    r = cluster.exec(node, f"docker ps {flag} --filter label=sparkhelpers.cluster=sim-{cluster.name} "
                           "--format '{{.Names}} {{.State}}'")
    assert r.ok, r.stderr
    return [ln for ln in r.stdout.splitlines() if ln.strip()]


def no_containers_left(cluster, nodes) -> None:  # noqa: ANN001
    for node in nodes:
        assert ours(cluster, node, running_only=True) == [], f"a container of ours is still running on {node}"


def stream_chat(cluster) -> tuple[str, dict]:
    """A streamed chat completion from the head (the API listens in the head's network namespace)."""
    code = f"""
import json, urllib.request
req = urllib.request.Request("http://127.0.0.1:8000/v1/chat/completions", method="POST",
    headers={{"Content-Type": "application/json", "Authorization": "Bearer {API_KEY}"}},
    data=json.dumps({{"model": "Qwen/Qwen3-0.6B", "stream": True, "max_tokens": 16,
                      "stream_options": {{"include_usage": True}},
                      "messages": [{{"role": "user", "content": "Name a colour."}}]}}).encode())
text, usage = "", None
with urllib.request.urlopen(req, timeout=60) as resp:
    for raw in resp:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        for c in chunk.get("choices", []):
            text += (c.get("delta") or {{}}).get("content") or ""
        usage = chunk.get("usage") or usage
print(json.dumps({{"text": text, "usage": usage}}))
"""
    r = cluster.exec("spark1", ["python3", "-c", code], timeout=90)
    assert r.ok, r.stderr
    out = json.loads(r.stdout)
    return out["text"], out["usage"]


def container_blocks(text: str) -> list[str]:
    """The `docker run` commands of a start listing (dry-run output or last-start.txt)."""
    blocks, current = [], None
    for line in text.splitlines():
        if line.startswith("docker run "):
            current = [line]
        elif current is not None:
            current.append(line)
            if not line.endswith("\\"):
                blocks.append("\n".join(current))
                current = None
    return blocks


def shown_by_dry_run(ran: str, shown: str) -> bool:
    """What ran is what the dry run showed, with discovery's answers where it showed <discovered at start>
    (and so another config hash; a GID index only discovery knows may be added)."""
    def lines(text: str) -> list[str]:
        text = re.sub(r"sparkhelpers\.config=[0-9a-f]{12}", "sparkhelpers.config=HASH", text.replace("'", ""))
        return [ln for ln in text.splitlines() if "NCCL_IB_GID_INDEX" not in ln]

    ran_lines, shown_lines = lines(ran), lines(shown)
    if len(ran_lines) != len(shown_lines):
        return False
    for got, want in zip(ran_lines, shown_lines, strict=True):
        pattern = re.escape(want).replace(re.escape("<discovered at start>"), r"[\w.,:-]+")
        if not re.fullmatch(pattern, got):
            return False
    return True


def state_dir(cluster) -> str:
    return f"{cluster.dir}/spark1/state"


def test_two_nodes_native_start_chat_status_logs_stop_and_secrets(sim_cluster):
    c = sim_cluster
    seed_model(c)
    try:
        dry = script(c, "start_cluster.sh", "--dry-run", "--nodes", "2")
        assert dry.ok, dry.stderr
        assert ours(c, "spark1") == [] and ours(c, "spark2") == [], "--dry-run changed nothing"

        r = script(c, "start_cluster.sh", "--nodes", "2")
        assert r.ok, f"{r.stdout}\n{r.stderr}"
        assert "is ready" in r.stdout and "native, 2 node(s)" in r.stdout
        assert "copying Qwen/Qwen3-0.6B" in r.stderr, "the model is synced to the worker that lacks it"
        assert "phases: discovery" in r.stdout and " preflight " in r.stdout

        # what ran is what --dry-run showed (the container commands, node by node, in order)
        # (the dry run opens no connection: what discovery reads at start it shows as <discovered at start>)
        executed = Path(state_dir(c), f"run/sim-{c.name}/last-start.txt").read_text()
        assert "<discovered at start>" in dry.stdout and "opens no connection" in dry.stdout
        ran, shown = container_blocks(executed), container_blocks(dry.stdout)
        assert len(ran) == len(shown) == 2
        for block, dry_block in zip(ran, shown, strict=True):
            assert shown_by_dry_run(block, dry_block), (block, dry_block)

        text, usage = stream_chat(c)
        assert text.strip() and usage and usage["completion_tokens"] > 0

        st = cli(c, "status", "--json")
        assert st.ok, st.stderr
        data = json.loads(st.stdout)
        assert data["running"] and data["healthy"] and data["mode"] == "native"
        assert data["served_models"] == ["Qwen/Qwen3-0.6B"]
        assert [len(n["containers"]) for n in data["nodes"]] == [1, 1]
        assert all(n["mem_available_gib"] > 0 for n in data["nodes"])

        logs = cli(c, "logs", "--node", "1", "--tail", "5")
        assert logs.ok and logs.stdout.strip(), logs.stderr
        assert Path(state_dir(c), f"logs/sim-{c.name}/engine-0.log").stat().st_size > 0, "logs live on the host"

        # secrets: in no process list, docker inspect, log, state file or report, on any node
        reports = st.stdout + r.stdout + r.stderr + dry.stdout + dry.stderr + logs.stdout
        for node in ("spark1", "spark2"):
            ps = c.exec(node, "ps -eo args").stdout
            inspect = c.exec(node, "docker inspect $(docker ps -aq) 2>/dev/null").stdout
            files = c.exec(node, f"grep -rl --exclude=api-key -e {API_KEY} -e {HF_TOKEN} {state_dir(c)} /root "
                                 "2>/dev/null || true").stdout
            for secret in (API_KEY, HF_TOKEN):
                assert secret not in ps and secret not in inspect and secret not in reports, (node, secret)
            assert files.strip() == "", files
        assert "VLLM_API_KEY" not in c.exec("spark1", "docker inspect $(docker ps -q)").stdout

        again = script(c, "start_cluster.sh", "--nodes", "2")
        assert again.ok and "already running this configuration" in again.stderr

        other = script(c, "start_cluster.sh", "--nodes", "2", MAX_NUM_SEQS="8")
        assert other.returncode == 1 and "different configuration" in other.stderr and "--replace" in other.stderr

        stop = script(c, "stop_cluster.sh")
        assert stop.ok, stop.stderr
        assert ours(c, "spark1") == [] and ours(c, "spark2") == []
        assert script(c, "stop_cluster.sh").ok, "stopping twice is harmless"
    finally:
        script(c, "stop_cluster.sh", "--force")
        for node in ("spark1", "spark2"):
            c.exec(node, f"rm -rf {MODEL_DIR} {FAULT_FILE} /raid/hf-cache/hub/models--{GGUF_REPO.replace('/', '--')}")


def test_status_reports_a_native_cluster_broken_after_a_rank_is_lost(sim_cluster):
    """Real vLLM keeps /health 200 after a rank is lost (so does the stand-in now): status must not trust it.
    A pulled fabric cable leaves every container running; the 1-token test request finds the broken engine."""
    c = sim_cluster
    seed_model(c)
    try:
        r = script(c, "start_cluster.sh", "--nodes", "2")
        assert r.ok, f"{r.stdout}\n{r.stderr}"
        c_fault(c, "spark2", "link-down", "both")  # the fabric, not management: status still reaches spark2
        t0 = time.monotonic()
        verdict = None
        while time.monotonic() - t0 < 90:
            st = cli(c, "status", "--json")
            data = json.loads(st.stdout)
            if not data["healthy"]:
                verdict = (st.returncode, data, time.monotonic() - t0)
                break
            time.sleep(2)
        assert verdict, "status called the broken cluster healthy for 90 s"
        rc, data, took = verdict
        assert rc == 1 and data["running"] and data["problems"], data
        text = cli(c, "status")
        # a second look: the engine may have gone on from "/health 200, a request fails" (BROKEN) to not
        # answering at all; either is named, neither is healthy
        assert text.returncode == 1 and ("BROKEN" in text.stdout or "not answering" in text.stdout), text.stdout
        assert ": healthy;" not in text.stdout, text.stdout
        print(f"status saw the lost rank after {took:.1f} s: {data['problems']}")
    finally:
        c_fault(c, "spark2", "link-up", "both")
        script(c, "stop_cluster.sh", "--force")
        for node in ("spark1", "spark2"):
            c.exec(node, f"rm -rf {MODEL_DIR} {FAULT_FILE} /raid/hf-cache/hub/models--{GGUF_REPO.replace('/', '--')}")


def test_ray_mode_then_solo(sim_cluster):
    c = sim_cluster
    seed_model(c)
    try:
        r = script(c, "start_cluster.sh", "--nodes", "2", LAUNCH_MODE="ray")
        assert r.ok, f"{r.stdout}\n{r.stderr}"
        assert "Ray: 2 node(s), 2 GPU(s)" in r.stderr and "(ray, 2 node(s)" in r.stdout
        data = json.loads(cli(c, "status", "--json").stdout)
        assert data["mode"] == "ray" and data["ray_nodes"] == 2 and data["ray_gpus"] == 2 and data["healthy"]
        text, _ = stream_chat(c)
        assert text.strip()
        nc = Path(state_dir(c), f"run/sim-{c.name}/0/vllm-config/ray_non_carry_over_env_vars.json").read_text()
        assert "NCCL_SOCKET_IFNAME" in nc and "VLLM_HOST_IP" in nc

        # the worker's fabric cable is pulled: every container keeps running and /health stays 200; the real
        # Ray loses the node and the stand-in's worker actor with it, so the next request fails, as in vLLM
        c_fault(c, "spark2", "link-down", "both")
        t0, data = time.monotonic(), {}
        try:
            while time.monotonic() - t0 < 150:
                st = cli(c, "status", "--json")
                data = json.loads(st.stdout)
                if not data["healthy"]:
                    break
                time.sleep(3)
        finally:
            c_fault(c, "spark2", "link-up", "both")
        assert not data["healthy"] and data["problems"] and data["running"], data
        print(f"Ray mode: status called the cluster broken {time.monotonic() - t0:.1f} s after the cable pull: "
              f"{data['problems']}")

        solo = script(c, "start_cluster.sh", "--solo", "--replace")
        assert solo.ok, f"{solo.stdout}\n{solo.stderr}"
        assert "(single, 1 node(s)" in solo.stdout and ours(c, "spark2") == []

        c.seed_model("spark1", GGUF_REPO, gguf=True)
        llama = script(c, "start_cluster.sh", "--solo", "--replace", RUNTIME="llama-cpp", MODEL=GGUF_REPO)
        assert llama.ok, f"{llama.stdout}\n{llama.stderr}"
        assert f"serving {GGUF_REPO} (llama-cpp, 1 node(s)" in llama.stdout and "test answer" in llama.stdout
        assert "llama-server -m" in Path(state_dir(c), f"run/sim-{c.name}/0/engine.sh").read_text()
    finally:
        script(c, "stop_cluster.sh", "--force")
        for node in ("spark1", "spark2"):
            c.exec(node, f"rm -rf {MODEL_DIR} {FAULT_FILE} /raid/hf-cache/hub/models--{GGUF_REPO.replace('/', '--')}")


def test_three_nodes_and_faults(make_sim):
    c = make_sim(nodes=3, image_on="head")
    seed_model(c)
    all_nodes = ("spark1", "spark2", "spark3")

    # 3-node start, then stop with one node down: reported, exit 1, the others cleaned
    r = script(c, "start_cluster.sh", "--nodes", "3")
    assert r.ok, f"{r.stdout}\n{r.stderr}"
    assert "3 node(s)" in r.stdout and "copying image" in r.stderr
    c_fault(c, "spark3", "stop-node")
    stop = script(c, "stop_cluster.sh")
    assert stop.returncode == 1 and f"could not reach {c.workers[1].mgmt_ip}" in stop.stderr
    no_containers_left(c, ("spark1", "spark2"))
    c_fault(c, "spark3", "clear")

    # worker unreachable (sshd dead): clear message before anything starts
    c_fault(c, "spark3", "kill-sshd")
    r = script(c, "start_cluster.sh", "--nodes", "3")
    assert r.returncode == 1 and "unreachable over SSH" in r.stderr and "fix:" in r.stderr
    no_containers_left(c, ("spark1", "spark2"))
    c_fault(c, "spark3", "clear")

    # wrong fabric address for a worker
    wrong = " ".join(["169.254.100.99"] + [n.fabric_ip for n in c.workers[1:]])
    r = script(c, "start_cluster.sh", "--nodes", "3", WORKER_IB_IP=wrong)
    assert r.returncode == 1 and "fabric address 169.254.100.99 is not configured on" in r.stderr
    no_containers_left(c, all_nodes)

    # image differing on a worker: refused
    c.exec("spark3", f"docker rm -f imgskew >/dev/null 2>&1; docker run --name imgskew --pull never "
                     f"--entrypoint true {c.image} && docker commit imgskew {c.image} >/dev/null && "
                     "docker rm imgskew >/dev/null").check("making spark3's image differ")
    r = script(c, "start_cluster.sh", "--nodes", "3")
    assert r.returncode == 1 and "differs between nodes" in r.stderr
    no_containers_left(c, all_nodes)
    c.exec("spark3", f"docker rmi -f {c.image}").check("removing the skewed image")

    # engine crash during load: the last log lines, cleanup, exit 1
    c.exec("spark1", f"echo crash-load >{FAULT_FILE}").check("fault")
    r = script(c, "start_cluster.sh", "--nodes", "2")
    assert r.returncode == 1 and "last log lines" in r.stderr and "crash during model load" in r.stderr
    no_containers_left(c, all_nodes)

    # ... and with --keep-on-failure the containers stay for debugging
    r = script(c, "start_cluster.sh", "--nodes", "2", "--keep-on-failure")
    assert r.returncode == 1 and "--keep-on-failure" in r.stderr
    assert ours(c, "spark1") and ours(c, "spark2")
    assert script(c, "stop_cluster.sh").ok

    # health timeout: the engine hangs while loading
    c.exec("spark1", f"echo hang-load >{FAULT_FILE}").check("fault")
    r = script(c, "start_cluster.sh", "--nodes", "2", "--timeout", "12")
    assert r.returncode == 1 and "not healthy after 12s" in r.stderr
    no_containers_left(c, all_nodes)

    # a second start while one runs is refused; Ctrl-C stops what the first one started
    first = background_start(c, "--nodes", "2")
    try:
        wait_for(lambda: ours(c, "spark1", running_only=True), 240, what="the first start to create containers")
        second = script(c, "start_cluster.sh", "--nodes", "2")
        assert second.returncode == 1 and "busy" in second.stderr
        os.killpg(first.pid, signal.SIGINT)
        out, err = first.communicate(timeout=240)  # cleanup of a loaded 2-core machine is slow, not hung
        # (the nsenter wrapper dies of the SIGINT itself: -2; the script inside exits 130)
        assert first.returncode in (130, -2) and "start interrupted (Ctrl-C)" in err, err
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    no_containers_left(c, all_nodes)

    # worker sshd killed mid-start: the node is named, exit 1, the rest cleaned up
    worker = background_start(c, "--nodes", "3")
    try:
        wait_for(lambda: ours(c, "spark3", running_only=True), 240, what="the worker container")
        c_fault(c, "spark3", "kill-sshd")
        out, err = worker.communicate(timeout=240)
        assert worker.returncode == 1 and f"lost contact with {c.workers[1].mgmt_ip}" in err, err
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
    no_containers_left(c, ("spark1", "spark2"))
    c_fault(c, "spark3", "clear")
    c.exec("spark1", f"rm -f {FAULT_FILE}")
    assert script(c, "stop_cluster.sh").ok
    no_containers_left(c, all_nodes)


def c_fault(cluster, node: str, kind: str, arg: str = "") -> None:
    from sparkhelpers.sim import faults

    faults.inject(cluster, node, kind, arg) if kind != "clear" else faults.clear(cluster, node)


def background_start(cluster, *args: str) -> subprocess.Popen:
    from sparkhelpers.sim.cluster import exec_argv

    argv = exec_argv(cluster.head, ["env", *env_for(cluster), str(ROOT / "start_cluster.sh"), *args])
    # SIGINT back to its default, as at a terminal: a test run started in the background (`cmd &`)
    # inherits SIGINT ignored, and the Ctrl-C below would then reach nobody.
    argv = ["env", "--default-signal=INT", *argv]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
