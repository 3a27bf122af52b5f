"""Pure tests of the cluster plan, the rendered commands and the validation that runs before anything."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from sparkhelpers.cluster import nodes as nd
from sparkhelpers.cluster import render as rd
from sparkhelpers.cluster.plan import PER_NODE_VARS, build_plan
from sparkhelpers.config import load_config
from sparkhelpers.errors import SparkError
from sparkhelpers.models import resolve_model

FABRIC = {"WORKER_HOST": "spark2 spark3", "WORKER_IB_IP": "169.254.100.12 169.254.100.13",
          "HEAD_IP": "169.254.100.11", "FABRIC_IF": "enp1s0f1np1", "NCCL_IB_HCA": "rocep1s0f1,roceP2p1s0f1"}


def plan_of(cfg, **kwargs):
    """A plan built as the start builds it: from the real ModelSpec of the configured model."""
    return build_plan(cfg, resolve_model(cfg), **kwargs)


def plan_for(nodes=None, solo=False, **flags):
    return plan_of(load_config(flags={**FABRIC, **flags}), nodes=nodes, solo=solo)


def scripts_of(plan):
    h = plan.config_hash()
    out = {}
    for node in plan.nodes:
        for name, text in rd.entry_scripts(plan, node).items():
            out[f"{node.label}:{name}"] = text
        out[f"{node.label}:docker-run"] = "#!/usr/bin/env bash\n" + rd.docker_run(plan, node, h)
    for phase in rd.start_phases(plan, h, {"VLLM_API_KEY": "k"}):
        for i, step in enumerate(phase.steps):
            out[f"{phase.name}:{i}:{step.node.label}"] = "#!/usr/bin/env bash\n" + (step.stdin or step.script)
    return out


def test_auto_mode_is_native_and_each_node_keeps_its_own_fabric_env():
    plan = plan_for(nodes=3)
    assert plan.mode == "native" and plan.tensor_parallel == 3 and len(plan.nodes) == 3
    ips = [n.env["VLLM_HOST_IP"] for n in plan.nodes]
    assert ips == ["169.254.100.11", "169.254.100.12", "169.254.100.13"]
    for node in plan.nodes:
        assert node.env["MASTER_ADDR"] == "169.254.100.11"
        assert node.env["NCCL_SOCKET_IFNAME"] == node.env["GLOO_SOCKET_IFNAME"] == "enp1s0f1np1"
        assert node.env["NCCL_IB_HCA"] == "rocep1s0f1,roceP2p1s0f1"
        assert node.env["RAY_memory_monitor_refresh_ms"] == "0"
        assert node.env["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
        assert node.env["HF_HUB_OFFLINE"] == "1"
        assert "NCCL_IB_GID_INDEX" not in node.env, "never pin an unvalidated (or empty) GID index"
    worker_run = rd.docker_run(plan, plan.nodes[1], "h")
    assert "VLLM_HOST_IP=169.254.100.11" not in worker_run


def test_modes_single_ray_and_llama():
    assert plan_for(solo=True).mode == "single"
    assert plan_for(nodes=1).mode == "single"
    ray = plan_for(nodes=2, LAUNCH_MODE="ray")
    assert ray.mode == "ray" and ray.nodes[0].env["VLLM_CONFIG_ROOT"].endswith("/run/spark/0/vllm-config")
    llama = plan_for(solo=True, RUNTIME="llama-cpp")
    assert llama.mode == "llama-cpp" and "--alias" in llama.engine_args
    with pytest.raises(SparkError, match="llama-cpp serves from one node"):
        plan_for(nodes=2, RUNTIME="llama-cpp")


def test_ray_mode_keeps_per_node_and_secret_variables_on_their_node():
    plan = plan_for(nodes=2, LAUNCH_MODE="ray")
    steps = [s for p in rd.start_phases(plan, "h", {}) for s in p.steps if "ray_non_carry_over" in (s.stdin or "")]
    assert len(steps) == 1 and steps[0].node.rank == 0
    for var in ("VLLM_HOST_IP", "NCCL_SOCKET_IFNAME", "NCCL_IB_HCA", "HF_TOKEN", "VLLM_API_KEY"):
        assert var in PER_NODE_VARS and var in steps[0].stdin


@pytest.mark.parametrize("flags,message", [
    ({"MODEL": "x$(touch /tmp/cl/pwned)"}, "is neither a catalog preset nor a Hugging Face repo id"),
    ({"MODEL": "a/b;rm -rf /"}, "is neither a catalog preset nor a Hugging Face repo id"),
    ({"SERVED_MODEL_NAME": "m`id`"}, "not a valid served model name"),
    ({"VLLM_IMAGE": "--privileged"}, "not a container image"),
    ({"CLUSTER_NAME": "Bad Name"}, "not a valid cluster name"),
    ({"HEAD_IP": "10.0.0.300"}, "not an IPv4 address"),
    ({"FABRIC_IF": "eth0;reboot"}, "not a network interface name"),
    ({"EXTRA_ARGS": "--api-key s3cret"}, "puts a secret on the command line"),
    ({"EXTRA_ARGS": "--chat-template 'unbalanced"}, "cannot be split"),
    ({"EXTRA_ARGS": "--no-such-flag 1"}, "EXTRA_ARGS: vllm 0.19.0 has no flag --no-such-flag"),
    ({"GPU_MEMORY_UTIL": "1.5"}, "must be a fraction between 0.05 and 0.98"),
    ({"KV_CACHE_DTYPE": "int3"}, "is not one of"),
    ({"SPECULATIVE_CONFIG": "{not json"}, "not valid JSON"),
    ({"TENSOR_PARALLEL": "4"}, "needs 4 GPUs"),
    ({"WORKER_IB_IP": "169.254.100.11 169.254.100.13"}, "share the fabric IP"),
    ({"WORKER_IB_IP": ""}, "no fabric IP known for node 1"),
    ({"ENABLE_PREFIX_CACHING": "maybe"}, "not auto, true or false"),
])
def test_bad_values_are_refused_before_anything_runs(flags, message):
    with pytest.raises(SparkError, match=message):
        plan_for(nodes=2, **flags)


def test_launch_mode_follows_what_the_image_supports():
    from sparkhelpers.cluster.fabric import NATIVE_MIN_VLLM, parse_version

    assert parse_version("0.19.0\n") == (0, 19, 0) and parse_version("vllm 0.10.1rc1") == (0, 10, 1)
    assert parse_version("no version") is None
    assert (0, 10, 1) < NATIVE_MIN_VLLM <= (0, 19, 0)
    cfg = load_config(flags=FABRIC)
    assert plan_of(cfg, nodes=2, native_supported=False).mode == "ray"
    assert plan_of(cfg, nodes=2, native_supported=None).mode == "native"
    assert plan_of(load_config(flags={**FABRIC, "LAUNCH_MODE": "native"}), nodes=2,
                   native_supported=False).mode == "native", "an explicit choice wins"


def test_more_nodes_than_configured_is_refused():
    with pytest.raises(SparkError, match="--nodes 4 asks for more nodes than this cluster has 3"):
        plan_for(nodes=4)


def test_tier1_engine_options_reach_every_rank():
    plan = plan_for(nodes=2, ENABLE_PREFIX_CACHING="true", KV_CACHE_DTYPE="fp8", ENABLE_CHUNKED_PREFILL="false",
                    MAX_NUM_SEQS="64", MAX_NUM_BATCHED_TOKENS="8192",
                    SPECULATIVE_CONFIG='{"num_speculative_tokens": 2}',
                    LOAD_FORMAT="fastsafetensors", EXTRA_ARGS="--enable-auto-tool-choice --tool-call-parser hermes",
                    SERVED_MODEL_NAME="qwen", MAX_MODEL_LEN="4096")
    args = plan.engine_args
    for expected in (["--enable-prefix-caching"], ["--kv-cache-dtype", "fp8"], ["--no-enable-chunked-prefill"],
                     ["--max-num-seqs", "64"], ["--max-num-batched-tokens", "8192"],
                     ["--speculative-config", '{"num_speculative_tokens":2}'], ["--load-format", "fastsafetensors"],
                     ["--served-model-name", "qwen"], ["--max-model-len", "4096"], ["--tool-call-parser", "hermes"]):
        i = args.index(expected[0])
        assert list(args[i:i + len(expected)]) == expected
    for node in plan.nodes:
        assert "--kv-cache-dtype fp8" in rd.entry_scripts(plan, node)["engine.sh"]


def test_container_settings_follow_the_facts():
    plan = plan_for(nodes=2)
    run = rd.docker_run(plan, plan.nodes[1], plan.config_hash())
    for part in ("--gpus all", "--network host", "--ipc host", "--ulimit memlock=-1", "--ulimit stack=67108864",
                 "--ulimit nofile=1048576:1048576", "--device /dev/infiniband --cap-add IPC_LOCK", "--pull never",
                 "--label sparkhelpers.cluster=spark", "--label sparkhelpers.role=worker",
                 "--label sparkhelpers.rank=1",
                 f"--label sparkhelpers.config={plan.config_hash()}", f"--volume {plan.hf_cache}:{plan.hf_cache}",
                 ":/root/.cache/vllm"):
        assert part in run, part
    priv = plan_for(nodes=2, PRIVILEGED="true", IPC_HOST="false", SHM_SIZE="32g")
    run = rd.docker_run(priv, priv.nodes[0], "h")
    assert "--privileged" in run and "--shm-size 32g" in run
    assert "--ipc host" not in run and "/dev/infiniband" not in run
    assert "--device" not in rd.docker_run(plan_for(solo=True), plan_for(solo=True).nodes[0], "h")


def test_config_hash_identifies_the_launch():
    assert plan_for(nodes=2).config_hash() == plan_for(nodes=2).config_hash()
    assert plan_for(nodes=2).config_hash() != plan_for(nodes=2, MODEL="Qwen/Qwen3-1.7B").config_hash()
    assert plan_for(nodes=2).config_hash() == plan_of(load_config(flags=FABRIC), nodes=2, timeout_s=5).config_hash()


@pytest.mark.parametrize("mode_flags", [
    {"nodes": 2}, {"nodes": 3, "LAUNCH_MODE": "ray"}, {"solo": True}, {"solo": True, "RUNTIME": "llama-cpp"},
    {"solo": True, "RUNTIME": "llama-cpp", "MODEL": "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF", "PRIVILEGED": "true",
     "IPC_HOST": "false"},
])
def test_every_rendered_script_passes_bash_n_and_shellcheck(mode_flags, tmp_path):
    flags = dict(mode_flags)
    hostile = ("--cache-type-k '/x y/t.jinja' --cache-type-v=\"a'b\"" if flags.get("RUNTIME") == "llama-cpp" else
               "--chat-template '/x y/t.jinja' --tool-call-parser=\"a'b\"")  # flags each engine has
    plan = plan_for(nodes=flags.pop("nodes", None), solo=flags.pop("solo", False), EXTRA_ARGS=hostile,
                    SERVED_MODEL_NAME="m:1", **flags)
    scripts = scripts_of(plan)
    scripts["stop"] = "#!/usr/bin/env bash\n" + nd.stop_script("spark", "/s/run/spark", False, 20)
    scripts["probe"] = "#!/usr/bin/env bash\n" + nd.probe_script("spark", plan.image, plan.model, "/r", "vllm",
                                                                  "/l")
    scripts["tail"] = "#!/usr/bin/env bash\n" + nd.tail_cmd("/l", 1, 10, True)
    for name, text in scripts.items():
        path = tmp_path / (name.replace(":", "_").replace("/", "_") + ".sh")
        path.write_text(text)
        r = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert r.returncode == 0, f"{name}: {r.stderr}\n{text}"
    if shutil.which("shellcheck"):
        paths = [str(p) for p in tmp_path.glob("*.sh")]
        r = subprocess.run(["shellcheck", "-S", "warning", *paths], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout


def test_quoting_survives_hostile_extra_args(tmp_path):
    marker = tmp_path / "pwned"
    plan = plan_for(solo=True,
                    EXTRA_ARGS=f"--chat-template '$(touch {marker})' --tool-call-parser '`touch {marker}`;'")
    script = rd.entry_scripts(plan, plan.nodes[0])["engine.sh"]
    exec_line = script[script.index("exec vllm"):]
    r = subprocess.run(["bash", "-c", f"vllm() {{ printf '%s\\n' \"$@\"; }}\n{exec_line.replace('exec ', '')}"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and f"$(touch {marker})" in r.stdout.splitlines()
    assert not marker.exists()


def test_dry_run_prints_every_command_and_no_secret(sparkhelpers_bin, tmp_path):
    key = tmp_path / "api-key"
    key.write_text("sk-very-secret-value\n")
    key.chmod(0o600)
    env = {**os.environ, **FABRIC, "API_KEY_FILE": str(key), "HF_TOKEN": "hf_secret_token_value"}
    r = subprocess.run([*sparkhelpers_bin, "cluster", "start", "--dry-run", "--nodes", "2"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "sk-very-secret-value" not in out + r.stderr and "hf_secret_token_value" not in out + r.stderr
    assert "# [head] prepare the node and start container sparkhelpers-spark-0" in out
    assert "# [spark2] prepare the node and start container sparkhelpers-spark-1" in out
    assert out.index("# [spark2]") < out.index("# [head]"), "native: workers first"
    assert "with VLLM_API_KEY, HF_TOKEN: values not shown" in out and "--headless" in out
    assert not (tmp_path / "state").exists()


def test_dry_run_of_an_injection_fails_before_anything_runs(sparkhelpers_bin, tmp_path):
    marker = tmp_path / "p"
    env = {**os.environ, "MODEL": f"x$(touch {marker})"}
    r = subprocess.run([*sparkhelpers_bin, "cluster", "start", "--solo"], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1 and "Hugging Face repo id" in r.stderr and "fix:" in r.stderr
    assert not marker.exists()


RAY_STATUS = """======== Autoscaler status: 2026-11-22 09:00:00.000000 ========
Node status
---------------------------------------------------------------
Active:
 1 node_5f2c0e8b1d7a4c8e9f0a1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c2
 1 node_0a1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c25f2c0e8b1d7a4c8e9f
Pending:
 (no pending nodes)
Recent failures:
 (no failures)

Resources
---------------------------------------------------------------
Usage:
 0.0/40.0 CPU
 0.0/2.0 GPU
 0B/1.86GiB object_store_memory
"""


def test_ray_status_parser():
    assert nd.parse_ray_status(RAY_STATUS) == (2, 2)
    assert nd.parse_ray_status("") == (0, 0)


def test_probe_parser():
    text = ("probe=ok\ndocker=ok\nimage=sha256:abc\nip=169.254.100.12=enp1s0f1np1\ninfiniband=yes\nmem=125829120\n"
            "model=yes\ncontainer=sparkhelpers-spark-1|running|1|cafe|native|2|Up 3 minutes\ntransport=IB\n"
            "transport=Socket\n")
    p = nd.parse_probe("spark2", text)
    assert p.docker and p.image_id == "sha256:abc" and p.ips == {"169.254.100.12": "enp1s0f1np1"}
    assert p.infiniband and p.model_present and round(p.mem_available_gib) == 120
    assert p.containers[0].running and p.containers[0].config == "cafe" and p.transport == "Socket"
