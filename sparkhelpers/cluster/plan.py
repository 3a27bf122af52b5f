"""Pure planning: configuration (+ each node's fabric facts, + the model spec) -> a ClusterPlan.

Nothing here touches a process or the network. The plan says which node runs what, with which
environment, in which launch mode; ``render`` turns it into shell and ``lifecycle`` runs it.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import asdict, dataclass, field
from typing import Any

from sparkhelpers import validate as v
from sparkhelpers.config import Config, state_dir
from sparkhelpers.errors import SparkError
from sparkhelpers.runner import Host

MODES = ("ray", "native", "single", "llama-cpp")
# Variables that differ per node (or are secret): vLLM's Ray executor must not copy the head's copy of
# these to the workers. vLLM reads this list from $VLLM_CONFIG_ROOT/ray_non_carry_over_env_vars.json.
PER_NODE_VARS = ("VLLM_HOST_IP", "NCCL_SOCKET_IFNAME", "NCCL_IB_HCA", "NCCL_IB_GID_INDEX", "GLOO_SOCKET_IFNAME",
                 "TP_SOCKET_IFNAME", "UCX_NET_DEVICES", "OMPI_MCA_btl_tcp_if_include", "HF_TOKEN",
                 "VLLM_API_KEY", "HUGGING_FACE_HUB_TOKEN")


@dataclass(frozen=True)
class NodeNet:
    """What the plan needs to know about one node's fabric (from discovery, or from config)."""

    fabric_ip: str = ""
    ifname: str = ""
    hcas: str = ""  # comma-separated RoCE devices
    gid_index: str = ""  # only when validated; never an empty pin


@dataclass(frozen=True)
class NodePlan:
    rank: int
    role: str  # "head" or "worker"
    host: Host
    fabric_ip: str
    container: str
    env: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return "head" if self.rank == 0 else self.host.address


@dataclass(frozen=True)
class ClusterPlan:
    cluster: str
    mode: str
    image: str
    model: str
    revision: str
    served_name: str
    tensor_parallel: int
    pipeline_parallel: int
    port: int
    listen: str
    nodes: tuple[NodePlan, ...]
    engine_args: tuple[str, ...]
    state_dir: str
    hf_cache: str
    worker_hf_cache: str
    ipc_host: bool
    shm_size: str
    privileged: bool
    extra_docker_args: tuple[str, ...]
    ray_port: int
    dashboard_host: str
    dashboard_port: int
    object_store_bytes: int
    master_port: int
    offline: bool
    secret_names: tuple[str, ...]  # which secrets the head's engine gets (never their values)
    timeout_s: int

    @property
    def head(self) -> NodePlan:
        return self.nodes[0]

    @property
    def workers(self) -> tuple[NodePlan, ...]:
        return self.nodes[1:]

    @property
    def run_dir(self) -> str:
        return f"{self.state_dir}/run/{self.cluster}"

    def node_run_dir(self, node: NodePlan) -> str:
        """Each node has its own run dir, so a state dir on a shared (NFS) home still works."""
        return f"{self.run_dir}/{node.rank}"

    @property
    def log_dir(self) -> str:
        return f"{self.state_dir}/logs/{self.cluster}"

    @property
    def cache_dir(self) -> str:
        return f"{self.state_dir}/cache"

    @property
    def endpoint(self) -> str:
        host = "127.0.0.1" if self.listen in ("0.0.0.0", "::", "") else self.listen
        return f"http://{host}:{self.port}"

    def hf_cache_on(self, node: NodePlan) -> str:
        return self.hf_cache if node.rank == 0 else self.worker_hf_cache

    def config_hash(self) -> str:
        """Identity of the launch: equal hashes mean "the same configuration is already running"."""
        data = asdict(self)
        data.pop("timeout_s")
        for node in data["nodes"]:
            node["host"] = {"address": node["host"]["address"], "user": node["host"]["user"]}
        blob = json.dumps(data, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def worker_hosts(cfg: Config) -> list[Host]:
    user = cfg.get("WORKER_USER")
    key = cfg.get("SSH_KEY")
    options = tuple(shlex.split(cfg.get("SSH_OPTIONS")))
    timeout = v.positive_int(cfg.get_int("SSH_CONNECT_TIMEOUT", 5), "SSH_CONNECT_TIMEOUT", 1, 300)
    if user:
        v.ssh_host(user, "WORKER_USER")
    return [Host(v.ssh_host(a), user=user, key=key, options=options, connect_timeout=timeout)
            for a in cfg.get_list("WORKER_HOST")]


def node_count(cfg: Config, nodes: int | None, solo: bool) -> int:
    available = 1 + len(cfg.get_list("WORKER_HOST"))
    if solo:
        return 1
    if nodes is None:
        return available
    if nodes < 1 or nodes > available:
        raise SparkError(f"--nodes {nodes} asks for more nodes than configured (head + {available - 1} "
                         f"worker{'s' if available != 2 else ''})" if nodes > available else "--nodes must be >= 1",
                         fix="add workers to WORKER_HOST (sparkhelpers config set WORKER_HOST 'host2 host3') "
                             "or ask for fewer nodes")
    return nodes


def fabric_from_config(cfg: Config, count: int) -> dict[int, NodeNet]:
    """Fabric facts as configured (used when discovery is not available or to override it)."""
    ips = cfg.get_list("WORKER_IB_IP")
    ifname = cfg.get("FABRIC_IF")
    hcas = cfg.get("NCCL_IB_HCA")
    gid = cfg.get("NCCL_IB_GID_INDEX")
    out = {0: NodeNet(cfg.get("HEAD_IP"), ifname, hcas, gid)}
    for rank in range(1, count):
        out[rank] = NodeNet(ips[rank - 1] if rank - 1 < len(ips) else "", ifname, hcas, gid)
    return out


def choose_mode(cfg: Config, count: int, native_supported: bool | None) -> str:
    runtime = v.choice(cfg.get("RUNTIME", "vllm"), "RUNTIME", ("vllm", "llama-cpp"))
    requested = v.choice(cfg.get("LAUNCH_MODE", "auto"), "LAUNCH_MODE", ("auto", "ray", "native"))
    if runtime == "llama-cpp":
        if count > 1:
            raise SparkError(f"RUNTIME=llama-cpp serves from one node, but {count} nodes were asked for",
                             fix="start with --solo, or use RUNTIME=vllm for a multi-node cluster")
        return "llama-cpp"
    if count == 1:
        return "single"
    if requested == "ray":
        return "ray"
    if requested == "native" or native_supported is not False:
        return "native"
    return "ray"


def _flag(args: list[str], name: str, value: bool | None) -> None:
    if value is True:
        args.append(f"--{name}")
    elif value is False:
        args.append(f"--no-{name}")


def engine_args(cfg: Config, spec: Any, mode: str, model: str, served: str, tp: int, pp: int) -> list[str]:
    """The serve arguments every rank shares (API, parallelism, Tier-1 options, EXTRA_ARGS)."""
    if mode == "llama-cpp":
        args = ["--host", cfg.get("VLLM_HOST", "0.0.0.0"), "--port", str(cfg.get_int("VLLM_PORT", 8000)),
                "--alias", served]
        ctx = cfg.get_int("MAX_MODEL_LEN", getattr(spec, "max_model_len", 0) or 0)
        if ctx:
            args += ["--ctx-size", str(ctx)]
        return args + v.arg_list(cfg.get("EXTRA_ARGS"), "EXTRA_ARGS")
    args = ["--served-model-name", served, "--tensor-parallel-size", str(tp), "--pipeline-parallel-size", str(pp)]
    # The model spec (models helper) already merges catalog preset values with explicit config values.
    if spec is not None:
        util, max_len, rev = spec.gpu_memory_util, spec.max_model_len or 0, spec.revision or ""
        trust, ep = spec.trust_remote_code, spec.expert_parallel
    else:
        util, max_len, rev = cfg.get_float("GPU_MEMORY_UTIL", 0.85), cfg.get_int("MAX_MODEL_LEN", 0), \
            cfg.get("MODEL_REVISION")
        trust = cfg.get_bool("TRUST_REMOTE_CODE", False)
        ep = v.tristate(cfg.get("ENABLE_EXPERT_PARALLEL", "auto"), "ENABLE_EXPERT_PARALLEL")
    args += ["--gpu-memory-utilization", f"{v.fraction(util, 'GPU_MEMORY_UTIL'):g}"]
    if max_len:
        args += ["--max-model-len", str(v.positive_int(max_len, "MAX_MODEL_LEN", 16, 1 << 24))]
    if v.revision(rev):
        args += ["--revision", rev]
    if trust:
        args.append("--trust-remote-code")
    if ep:
        args.append("--enable-expert-parallel")
    _flag(args, "enable-prefix-caching", v.tristate(cfg.get("ENABLE_PREFIX_CACHING", "auto"), "ENABLE_PREFIX_CACHING"))
    kv = v.choice(cfg.get("KV_CACHE_DTYPE", "auto"), "KV_CACHE_DTYPE", v.KV_CACHE_DTYPES)
    if kv != "auto":
        args += ["--kv-cache-dtype", kv]
    _flag(args, "enable-chunked-prefill",
          v.tristate(cfg.get("ENABLE_CHUNKED_PREFILL", "auto"), "ENABLE_CHUNKED_PREFILL"))
    for key, flag in (("MAX_NUM_SEQS", "--max-num-seqs"), ("MAX_NUM_BATCHED_TOKENS", "--max-num-batched-tokens")):
        if cfg.get(key):
            args += [flag, str(v.positive_int(cfg.get_int(key), key))]
    if cfg.get("SPECULATIVE_CONFIG"):
        args += ["--speculative-config", v.json_object(cfg.get("SPECULATIVE_CONFIG"), "SPECULATIVE_CONFIG")]
    load = v.choice(cfg.get("LOAD_FORMAT", "auto"), "LOAD_FORMAT", v.LOAD_FORMATS)
    if load != "auto":
        args += ["--load-format", load]
    args += [str(a) for a in (getattr(spec, "extra_args", None) or [])]
    return args + v.arg_list(cfg.get("EXTRA_ARGS"), "EXTRA_ARGS")


def node_env(cfg: Config, mode: str, net: NodeNet, head_ip: str, offline: bool, run_dir: str) -> dict[str, str]:
    """This node's own environment. Fabric values come from this node's facts, never the head's."""
    env = {
        "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
        "RAY_memory_monitor_refresh_ms": "0",  # Ray's OOM killer kills loads at 95% of unified memory
        "RAY_num_prestart_python_workers": "0",
        "NCCL_DEBUG": cfg.get("NCCL_DEBUG", "WARN"),
    }
    if cfg.get("NCCL_DEBUG", "WARN").upper() in ("INFO", "TRACE"):
        env["NCCL_DEBUG_SUBSYS"] = "INIT,NET"
    if offline:
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    if mode in ("ray", "native"):
        env.update(
            VLLM_HOST_IP=net.fabric_ip,
            MASTER_ADDR=head_ip,
            NCCL_SOCKET_IFNAME=net.ifname,
            GLOO_SOCKET_IFNAME=net.ifname,
            TP_SOCKET_IFNAME=net.ifname,
            UCX_NET_DEVICES=net.ifname,
            OMPI_MCA_btl_tcp_if_include=net.ifname,
            NCCL_IB_DISABLE="0",
            NCCL_IGNORE_CPU_AFFINITY="1",
        )
        if net.hcas:
            env["NCCL_IB_HCA"] = net.hcas
        if net.gid_index:
            env["NCCL_IB_GID_INDEX"] = net.gid_index
    if mode == "ray":
        env["VLLM_CONFIG_ROOT"] = f"{run_dir}/vllm-config"
    return env


def build_plan(cfg: Config, *, nodes: int | None = None, solo: bool = False,
               fabric: dict[int, NodeNet] | None = None, spec: Any = None,
               native_supported: bool | None = None, offline: bool = True,
               secret_names: tuple[str, ...] = (), timeout_s: int | None = None) -> ClusterPlan:
    """Validate the configuration and compute who runs what. Raises SparkError on the first bad value."""
    cluster = v.cluster_name(cfg.get("CLUSTER_NAME", "spark"))
    preset = getattr(spec, "preset", None)
    nodes_asked = nodes is not None or solo
    if not nodes_asked and preset is not None:
        nodes = spec.nodes  # a catalog preset says how many nodes it needs (a TP1 model stays on the head)
    count = node_count(cfg, nodes, solo)
    mode = choose_mode(cfg, count, native_supported)
    model = v.model_id(getattr(spec, "repo", "") or cfg.require("MODEL"))
    served = v.served_name(cfg.get("SERVED_MODEL_NAME") or getattr(spec, "served_name", "") or model)
    image = v.image(getattr(spec, "image", "") or cfg.require("VLLM_IMAGE"))
    pp = v.positive_int(spec.pipeline_parallel if preset is not None else cfg.get_int("PIPELINE_PARALLEL", 1),
                        "PIPELINE_PARALLEL", 1, 8)
    if cfg.get("TENSOR_PARALLEL"):
        tp = cfg.get_int("TENSOR_PARALLEL")
    elif preset is not None and not nodes_asked:
        tp = spec.tensor_parallel
    else:
        tp = count // pp if mode != "llama-cpp" else 1
    v.positive_int(tp, "TENSOR_PARALLEL", 1, 8)
    if mode != "llama-cpp" and tp * pp != count:
        raise SparkError(f"TENSOR_PARALLEL={tp} x PIPELINE_PARALLEL={pp} needs {tp * pp} GPUs, but {count} "
                         f"node{'s' if count != 1 else ''} (one GB10 GPU each) {'were' if count != 1 else 'was'} "
                         "asked for",
                         fix=f"use --nodes {tp * pp}, or set TENSOR_PARALLEL to {count // pp or 1} "
                             "(empty = one per node)")
    hosts = worker_hosts(cfg)[: count - 1]
    sdir = str(state_dir(cfg))
    if not v._PATH.match(sdir):
        raise v.bad("SPARK_STATE_DIR", sdir, "must be an absolute path without spaces",
                    "sparkhelpers config set SPARK_STATE_DIR /var/lib/sparkhelpers")
    fabric = fabric or fabric_from_config(cfg, count)
    head_ip = ""
    node_plans: list[NodePlan] = []
    for rank in range(count):
        net = fabric.get(rank, NodeNet())
        if mode in ("ray", "native"):
            who = "HEAD_IP" if rank == 0 else f"WORKER_IB_IP (entry {rank})"
            if not net.fabric_ip:
                name = "head" if rank == 0 else hosts[rank - 1].address
                raise SparkError(f"no fabric IP known for node {rank} ({name})",
                                 fix=f"set {who.split()[0]}, or run `sparkhelpers discover` on that node")
            v.ip(net.fabric_ip, who.split()[0])
            if not net.ifname:
                raise SparkError(f"no fabric interface known for node {rank}",
                                 fix="set FABRIC_IF (e.g. enp1s0f1np1), or run `sparkhelpers discover`")
            v.ifname(net.ifname)
            if net.hcas:
                v.hca_list(net.hcas)
            if net.gid_index and not net.gid_index.isdigit():
                raise v.bad("NCCL_IB_GID_INDEX", net.gid_index, "is not a number", "leave it empty (NCCL picks)")
        if rank == 0:
            head_ip = net.fabric_ip
        host = Host("local") if rank == 0 else hosts[rank - 1]
        node_plans.append(NodePlan(rank=rank, role="head" if rank == 0 else "worker", host=host,
                                   fabric_ip=net.fabric_ip, container=f"sparkhelpers-{cluster}-{rank}",
                                   env=node_env(cfg, mode, net, head_ip, offline, f"{sdir}/run/{cluster}/{rank}")))
    if mode in ("ray", "native"):
        ips = [n.fabric_ip for n in node_plans]
        if len(set(ips)) != len(ips):
            raise SparkError(f"two nodes share the fabric IP {max(ips, key=ips.count)}",
                             fix="every node needs its own ConnectX-7 address; check HEAD_IP and WORKER_IB_IP")
    hf_cache = cfg.require("HF_CACHE")
    worker_cache = cfg.get("WORKER_HF_CACHE") or hf_cache
    for key, path in (("HF_CACHE", hf_cache), ("WORKER_HF_CACHE", worker_cache)):
        if not v._PATH.match(path):
            raise v.bad(key, path, "must be an absolute path", f"sparkhelpers config set {key} /raid/hf-cache")
    return ClusterPlan(
        cluster=cluster, mode=mode, image=image, model=model,
        revision=v.revision(cfg.get("MODEL_REVISION")), served_name=served,
        tensor_parallel=tp, pipeline_parallel=pp,
        port=v.port(cfg.get_int("VLLM_PORT", 8000), "VLLM_PORT"),
        listen=v.ip(cfg.get("VLLM_HOST", "0.0.0.0"), "VLLM_HOST"),
        nodes=tuple(node_plans),
        engine_args=tuple(engine_args(cfg, spec, mode, model, served, tp, pp)),
        state_dir=sdir, hf_cache=hf_cache, worker_hf_cache=worker_cache,
        ipc_host=cfg.get_bool("IPC_HOST", True), shm_size=v.size(cfg.get("SHM_SIZE", "16g"), "SHM_SIZE"),
        privileged=cfg.get_bool("PRIVILEGED", False),
        extra_docker_args=tuple(v.arg_list(cfg.get("EXTRA_DOCKER_ARGS"), "EXTRA_DOCKER_ARGS")),
        ray_port=v.port(cfg.get_int("RAY_PORT", 6385), "RAY_PORT"),
        dashboard_host=v.ip(cfg.get("RAY_DASHBOARD_HOST", "127.0.0.1"), "RAY_DASHBOARD_HOST"),
        dashboard_port=v.port(cfg.get_int("RAY_DASHBOARD_PORT", 8265), "RAY_DASHBOARD_PORT"),
        object_store_bytes=v.positive_int(cfg.get_int("RAY_OBJECT_STORE_BYTES", 1 << 30), "RAY_OBJECT_STORE_BYTES",
                                          78643200),
        master_port=v.port(cfg.get_int("MASTER_PORT", 29501), "MASTER_PORT"),
        offline=offline, secret_names=tuple(secret_names),
        timeout_s=timeout_s if timeout_s is not None else v.positive_int(cfg.get_int("START_TIMEOUT", 1800),
                                                                         "START_TIMEOUT"),
    )
