"""Pure planning: configuration (+ each node's fabric facts, + the model spec) -> a ClusterPlan.

Nothing here touches a process or the network. The plan says which node runs what, with which
environment, in which launch mode; ``render`` turns it into shell and ``lifecycle`` runs it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace

from sparkhelpers import validate as v
from sparkhelpers.config import Config, state_dir
from sparkhelpers.errors import SparkError
from sparkhelpers.models.catalog import ModelSpec
from sparkhelpers.runner import Host
from sparkhelpers.topology import Topology, endpoint_url, layout_for, topology

MODES = ("ray", "native", "single", "llama-cpp")
# What a --dry-run shows for a fabric fact it would discover over SSH at start (it opens no connection).
DISCOVER = "<discovered at start>"
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
    recipe_id: str = ""  # <model-slug>@<runtime>@<hash> when a recipe says how the model is served

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
        """The URL clients use (sparkhelpers.topology's rule, for this plan's head)."""
        return endpoint_url(self.listen, self.port, self.head.host)

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


def fabric_from_config(topo: Topology, cfg: Config, count: int) -> dict[int, NodeNet]:
    """Fabric facts as configured (discovery fills what is left open)."""
    ifname, hcas, gid = cfg.get("FABRIC_IF"), cfg.get("NCCL_IB_HCA"), cfg.get("NCCL_IB_GID_INDEX")
    return {node.rank: NodeNet(node.fabric_ip, ifname, hcas, gid) for node in topo.nodes[:count]}


def choose_mode(cfg: Config, count: int, native_supported: bool | None) -> str:
    runtime, requested = v.setting(cfg, "RUNTIME", "vllm"), v.setting(cfg, "LAUNCH_MODE", "auto")
    if runtime == "llama-cpp":  # one node: the layout rule (sparkhelpers.topology) already refused more
        return "llama-cpp"
    if count == 1:
        return "single"
    if requested == "ray":
        return "ray"
    if requested == "native" or native_supported is not False:
        return "native"
    return "ray"


def engine_args(recipe, mode: str, listen: str, port: int) -> list[str]:  # noqa: ANN001 - a recipes.Recipe
    """The serve arguments every rank shares, by the recipe renderer (sparkhelpers.recipes.render) alone: a
    recipe's, or the configured model's recipe (``recipes.apply.config_recipe``); llama-server also gets its
    host and port here (vLLM's come per node from the templates)."""
    from sparkhelpers.recipes import engine_argv

    return (["--host", listen, "--port", str(port)] if mode == "llama-cpp" else []) + engine_argv(recipe)


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


def check_net(rank: int, name: str, net: NodeNet) -> None:
    """A multi-node launch needs each node's fabric address and interface (HCAs and GID are optional)."""
    key = "HEAD_IP" if rank == 0 else "WORKER_IB_IP"
    if DISCOVER in (net.fabric_ip, net.ifname, net.hcas):
        return  # a dry run: discovery (and its checks) happen at start
    if not net.fabric_ip:
        raise SparkError(f"no fabric IP known for node {rank} ({name})",
                         fix=f"set {key}, or run `sparkhelpers discover` on that node")
    v.ip(net.fabric_ip, key)
    if not net.ifname:
        raise SparkError(f"no fabric interface known for node {rank}",
                         fix="set FABRIC_IF (e.g. enp1s0f1np1), or run `sparkhelpers discover`")
    v.ifname(net.ifname)
    if net.hcas:
        v.hca_list(net.hcas)
    if net.gid_index and not net.gid_index.isdigit():
        raise v.bad("NCCL_IB_GID_INDEX", net.gid_index, "is not a number", "leave it empty (NCCL picks)")


def node_plans(cfg: Config, topo: Topology, count: int, mode: str, fabric: dict[int, NodeNet], cluster: str,
               sdir: str, offline: bool) -> tuple[NodePlan, ...]:
    """Rank 0 is the topology's head (this machine or HEAD_HOST), then the first count-1 workers."""
    fabric_launch = mode in ("ray", "native")
    head_ip = fabric.get(0, NodeNet()).fabric_ip
    plans = []
    for node in topo.nodes[:count]:
        net = fabric.get(node.rank, NodeNet())
        if fabric_launch:
            check_net(node.rank, node.name, net)
        plans.append(NodePlan(rank=node.rank, role="head" if node.rank == 0 else "worker", host=node.host,
                              fabric_ip=net.fabric_ip, container=f"sparkhelpers-{cluster}-{node.rank}",
                              env=node_env(cfg, mode, net, head_ip, offline, f"{sdir}/run/{cluster}/{node.rank}")))
    ips = [n.fabric_ip for n in plans if n.fabric_ip != DISCOVER]
    if fabric_launch and len(set(ips)) != len(ips):
        raise SparkError(f"two nodes share the fabric IP {max(ips, key=ips.count)}",
                         fix="every node needs its own ConnectX-7 address; check HEAD_IP and WORKER_IB_IP")
    return tuple(plans)


def build_plan(cfg: Config, spec: ModelSpec, *, nodes: int | None = None, solo: bool = False,
               fabric: dict[int, NodeNet] | None = None, native_supported: bool | None = None,
               offline: bool = True, secret_names: tuple[str, ...] = (),
               timeout_s: int | None = None, topo: Topology | None = None) -> ClusterPlan:
    """Validate the configuration and compute who runs what. Raises SparkError on the first bad value.
    ``topo`` is a node set (``topology.node_set``); default: every configured node, the head first."""
    cluster = v.setting(cfg, "CLUSTER_NAME", "spark")
    topo = topo or topology(cfg)
    lay = layout_for(cfg, spec, nodes=nodes, solo=solo, topo=topo)
    mode = choose_mode(cfg, lay.nodes, native_supported)
    model = v.model_id(spec.repo)
    served = v.served_name(cfg.get("SERVED_MODEL_NAME") or model)
    sdir = v.check("SPARK_STATE_DIR", str(state_dir(cfg)))
    hf_cache = v.setting(cfg, "HF_CACHE")
    worker_cache = v.check("WORKER_HF_CACHE", cfg.get("WORKER_HF_CACHE") or hf_cache)
    plans = node_plans(cfg, topo, lay.nodes, mode, fabric or fabric_from_config(topo, cfg, lay.nodes), cluster,
                       sdir, offline)
    from sparkhelpers.recipes import recipe_id
    from sparkhelpers.recipes.apply import config_recipe

    image = v.image(spec.image or cfg.require("VLLM_IMAGE"))
    recipe = spec.recipe or config_recipe(spec, image=image, runtime=v.setting(cfg, "RUNTIME", "vllm"), mode=mode,
                                          served=served, lay=lay, cfg=cfg)
    args = engine_args(recipe, mode, topo.listen, topo.port)
    if spec.recipe is not None:  # the recipe's container env on every rank (it carries no per-node variable)
        plans = tuple(replace(n, env={**n.env, **spec.recipe.env}) for n in plans)
    return ClusterPlan(
        cluster=cluster, mode=mode, image=image, model=model,
        revision=v.revision(spec.revision or ""), served_name=served,
        tensor_parallel=lay.tensor_parallel, pipeline_parallel=lay.pipeline_parallel,
        port=topo.port, listen=topo.listen, nodes=plans,
        engine_args=tuple(args),
        state_dir=sdir, hf_cache=hf_cache, worker_hf_cache=worker_cache,
        ipc_host=v.setting(cfg, "IPC_HOST", True), shm_size=v.setting(cfg, "SHM_SIZE", "16g"),
        privileged=v.setting(cfg, "PRIVILEGED", False),
        extra_docker_args=tuple(v.setting(cfg, "EXTRA_DOCKER_ARGS", [])),
        ray_port=v.setting(cfg, "RAY_PORT", 6385),
        dashboard_host=v.setting(cfg, "RAY_DASHBOARD_HOST", "127.0.0.1"),
        dashboard_port=v.setting(cfg, "RAY_DASHBOARD_PORT", 8265),
        object_store_bytes=v.setting(cfg, "RAY_OBJECT_STORE_BYTES", 1 << 30),
        master_port=v.setting(cfg, "MASTER_PORT", 29501),
        offline=offline, secret_names=tuple(secret_names), recipe_id=recipe_id(recipe),
        timeout_s=timeout_s if timeout_s is not None else v.setting(cfg, "START_TIMEOUT", 1800),
    )
