"""Recipe -> a llama-swap config entry, or Kubernetes manifests (KubeRay RayService / RayCluster, LeaderWorkerSet).

llama-swap runs our foreground mode (``sparkhelpers cluster run --recipe``), so a swap is a full start and a
clean stop. The Kubernetes pods carry what a Spark needs: host network (the ConnectX-7 twins), /dev/infiniband,
one GPU per pod, the HF cache as a host path with HF_HUB_OFFLINE=1, and VLLM_HOST_IP (plus the NCCL
interface variables) written by an init container that runs ``sparkhelpers discover --exports`` on the node,
because the pod IP is the management address, not the fabric one.
"""

from __future__ import annotations

import shlex
from typing import Any

from sparkhelpers.errors import SparkError
from sparkhelpers.recipes.identity import model_slug, recipe_id
from sparkhelpers.recipes.render import engine_argv
from sparkhelpers.recipes.schema import Recipe

# Only keys llama-swap's config schema documents (config-schema.json): per model and global.
LLAMA_SWAP_MODEL_KEYS = ("cmd", "cmdStop", "proxy", "checkEndpoint", "ttl", "unloadTimeout", "env", "aliases",
                         "useModelName", "filters", "concurrencyLimit", "unlisted", "capabilities")
LLAMA_SWAP_KEYS = ("healthCheckTimeout", "globalTTL", "unloadTimeout", "startPort", "macros", "models", "groups",
                   "logToStdout")
HF_CACHE = "/raid/hf-cache"
FABRIC_ENV = "/run/sparkhelpers/fabric.env"
PORT = 8000


def llama_swap(recipe: Recipe, ref: str, ttl: int, start_timeout: int = 1800) -> dict[str, Any]:
    """A config.yaml with one model entry; merge its `models:` into yours."""
    entry: dict[str, Any] = {
        "cmd": f"sparkhelpers cluster run --recipe {shlex.quote(ref)} --port ${{PORT}}",
        "cmdStop": "kill -TERM ${PID}",  # the foreground mode stops every rank cleanly on SIGTERM
        "proxy": "http://127.0.0.1:${PORT}",
        "checkEndpoint": "/health",
        "ttl": ttl,
        "useModelName": recipe.served_name,
        # the foreground mode's own stop grace, then llama-swap may kill
        "unloadTimeout": 60,
    }
    if recipe.name != recipe.served_name:
        entry["aliases"] = [recipe.served_name]
    return {"healthCheckTimeout": max(start_timeout, 15), "models": {recipe.name: entry}}


# ---- Kubernetes -----------------------------------------------------------------------------------

def k8s_name(recipe: Recipe) -> str:
    name = recipe.name.replace(".", "-").replace("_", "-")
    return name[:52].rstrip("-")


def labels(recipe: Recipe) -> dict[str, str]:
    rid = recipe_id(recipe)
    return {"app.kubernetes.io/name": k8s_name(recipe), "app.kubernetes.io/managed-by": "sparkhelpers",
            "sparkhelpers.io/recipe-hash": rid.rsplit("@", 1)[1], "sparkhelpers.io/model": model_slug(recipe.model)}


def _env(recipe: Recipe) -> list[dict[str, str]]:
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": "/root/.cache/huggingface",
           "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True", **recipe.env}
    return [{"name": k, "value": val} for k, val in env.items()]


def _volumes(recipe: Recipe, hf_cache: str) -> tuple[list[dict], list[dict]]:
    shm = recipe.container["shm_size"]
    volumes = [
        {"name": "hf-cache", "hostPath": {"path": hf_cache, "type": "Directory"}},
        {"name": "infiniband", "hostPath": {"path": "/dev/infiniband", "type": "Directory"}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm[:-1] + shm[-1].upper() + "i"
                                      if shm[-1].isalpha() else shm}},
        {"name": "fabric", "emptyDir": {}},
    ]
    mounts = [{"name": "hf-cache", "mountPath": "/root/.cache/huggingface"},
              {"name": "infiniband", "mountPath": "/dev/infiniband"},
              {"name": "dshm", "mountPath": "/dev/shm"}, {"name": "fabric", "mountPath": "/run/sparkhelpers"}]
    return volumes, mounts


def discovery_init(tools_image: str) -> dict[str, Any]:
    """Writes this node's fabric variables (VLLM_HOST_IP = the ConnectX-7 address, NCCL interfaces)."""
    return {"name": "fabric-discovery", "image": tools_image,
            "command": ["sh", "-c", f"sparkhelpers discover --exports > {FABRIC_ENV}.tmp && "
                                    f"mv {FABRIC_ENV}.tmp {FABRIC_ENV}"],
            "volumeMounts": [{"name": "fabric", "mountPath": "/run/sparkhelpers"}]}


def pod_template(recipe: Recipe, command: list[str], *, tools_image: str, hf_cache: str, name: str,
                 ray: bool = False, serves_http: bool = True) -> dict[str, Any]:
    """One Spark per pod: host network, RDMA devices, one GPU, the HF cache, discovered fabric variables."""
    volumes, mounts = _volumes(recipe, hf_cache)
    security: dict[str, Any] = ({"privileged": True} if recipe.container["privileged"]
                                else {"capabilities": {"add": ["IPC_LOCK", "SYS_RESOURCE"]}})
    container: dict[str, Any] = {
        "name": name, "image": recipe.image, "env": _env(recipe), "volumeMounts": mounts,
        "resources": {"limits": {"nvidia.com/gpu": "1"}}, "securityContext": security,
    }
    if command:
        container["command"] = ["bash", "-c", f"set -a; . {FABRIC_ENV}; set +a; exec {shlex.join(command)}"]
    if serves_http and not ray:
        container["ports"] = [{"containerPort": PORT, "name": "http"}]
        container["readinessProbe"] = {"httpGet": {"path": "/health", "port": PORT}, "periodSeconds": 10,
                                       "failureThreshold": 3}
    return {"metadata": {"labels": labels(recipe)},
            "spec": {"hostNetwork": True, "dnsPolicy": "ClusterFirstWithHostNet", "hostIPC": recipe.container[
                "ipc_host"], "initContainers": [discovery_init(tools_image)], "containers": [container],
                "volumes": volumes}}


def serve_command(recipe: Recipe, *, rank: str = "0", leader: str = "", nodes: int | None = None) -> list[str]:
    """The rank's vllm serve: rank 0 serves the API, the others run headless (as the native launch does)."""
    n = nodes or recipe.nodes
    argv = ["vllm", "serve", recipe.model]
    argv += ["--host", "0.0.0.0", "--port", str(PORT)] if rank == "0" else ["--headless"]
    if n > 1:
        argv += ["--nnodes", str(n), "--node-rank", rank, "--master-addr", leader, "--master-port", "29501"]
    return argv + engine_argv(recipe)


def leader_worker_set(recipe: Recipe, tools_image: str, hf_cache: str) -> dict[str, Any]:
    """Ray-free multi-node (vLLM's --nnodes): the leader is rank 0, workers take their LWS index."""
    leader = serve_command(recipe, rank="0", leader="$(LWS_LEADER_ADDRESS)")
    worker = serve_command(recipe, rank="$(LWS_WORKER_INDEX)", leader="$(LWS_LEADER_ADDRESS)")
    spec: dict[str, Any] = {"size": recipe.nodes,
                            "workerTemplate": pod_template(recipe, worker if recipe.nodes > 1 else leader,
                                                           tools_image=tools_image, hf_cache=hf_cache, name="vllm",
                                                           serves_http=recipe.nodes == 1)}
    if recipe.nodes > 1:
        spec["leaderTemplate"] = pod_template(recipe, leader, tools_image=tools_image, hf_cache=hf_cache,
                                              name="vllm")
    return {"apiVersion": "leaderworkerset.x-k8s.io/v1", "kind": "LeaderWorkerSet",
            "metadata": {"name": k8s_name(recipe), "labels": labels(recipe)},
            "spec": {"replicas": 1, "startupPolicy": "LeaderCreated", "leaderWorkerTemplate": spec}}


def ray_cluster_spec(recipe: Recipe, tools_image: str, hf_cache: str) -> dict[str, Any]:
    head = pod_template(recipe, [], tools_image=tools_image, hf_cache=hf_cache, name="ray-head", ray=True)
    params = {"num-gpus": "1", "dashboard-host": "0.0.0.0"}
    spec: dict[str, Any] = {"headGroupSpec": {"rayStartParams": params, "template": head}}
    if recipe.nodes > 1:
        worker = pod_template(recipe, [], tools_image=tools_image, hf_cache=hf_cache, name="ray-worker", ray=True)
        n = recipe.nodes - 1
        spec["workerGroupSpecs"] = [{"groupName": "sparks", "replicas": n, "minReplicas": n, "maxReplicas": n,
                                     "rayStartParams": {"num-gpus": "1"}, "template": worker}]
    for group in [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]:
        c = group["template"]["spec"]["containers"][0]
        # KubeRay runs `ray start` in a login shell (bash -lc): /etc/profile.d brings the discovered variables
        c["volumeMounts"].append({"name": "fabric", "mountPath": "/etc/profile.d/sparkhelpers-fabric.sh",
                                  "subPath": "fabric.env"})
    return spec


def serve_config(recipe: Recipe) -> dict[str, Any]:
    """Ray Serve LLM application (what RayService.spec.serveConfigV2 holds)."""
    kwargs: dict[str, Any] = {"tensor_parallel_size": recipe.tensor_parallel,
                              "pipeline_parallel_size": recipe.pipeline_parallel, **recipe.engine_args}
    if recipe.revision:
        kwargs["revision"] = recipe.revision
    llm = {"model_loading_config": {"model_id": recipe.served_name, "model_source": recipe.model},
           "engine_kwargs": kwargs, "accelerator_type": "GB10",
           "deployment_config": {"autoscaling_config": {"min_replicas": 1, "max_replicas": 1}},
           "runtime_env": {"env_vars": {"HF_HUB_OFFLINE": "1", **recipe.env}}}
    return {"applications": [{"name": k8s_name(recipe), "route_prefix": "/",
                              "import_path": "ray.serve.llm:build_openai_app", "args": {"llm_configs": [llm]}}]}


def export(recipe: Recipe, to: str, *, ref: str, ttl: int = 0, tools_image: str = "",
           hf_cache: str = HF_CACHE) -> dict[str, Any]:
    if to == "llama-swap":
        return llama_swap(recipe, ref, ttl)
    if recipe.runtime != "vllm":
        raise SparkError(f"recipe {recipe.name}: the Kubernetes export covers vLLM recipes only",
                         fix="export a runtime: vllm recipe (llama-cpp: use --to llama-swap)")
    import yaml

    from sparkhelpers import __version__

    tools = tools_image or f"sparkhelpers:{__version__}"
    meta = {"name": k8s_name(recipe), "labels": labels(recipe)}
    if to == "lws":
        return leader_worker_set(recipe, tools, hf_cache)
    if to == "raycluster":
        meta["annotations"] = {"sparkhelpers.io/serve": shlex.join(serve_command(recipe, nodes=1) +
                                                                   ["--distributed-executor-backend", "ray"])}
        return {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": meta,
                "spec": ray_cluster_spec(recipe, tools, hf_cache)}
    if to == "rayservice":
        return {"apiVersion": "ray.io/v1", "kind": "RayService", "metadata": meta,
                "spec": {"serveConfigV2": yaml.safe_dump(serve_config(recipe), sort_keys=False),
                         "rayClusterConfig": ray_cluster_spec(recipe, tools, hf_cache)}}
    raise SparkError(f"unknown export target {to}", fix="use llama-swap, rayservice, raycluster or lws")
