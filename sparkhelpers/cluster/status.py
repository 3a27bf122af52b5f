"""`sparkhelpers status`: one probe per node in parallel, Ray and HTTP checks on the head."""

from __future__ import annotations

import time
from pathlib import Path

from sparkhelpers.cluster import nodes as nd
from sparkhelpers.cluster.plan import worker_hosts
from sparkhelpers.config import Config, state_dir
from sparkhelpers.errors import UsageError
from sparkhelpers.runner import LOCAL, Host, Runner
from sparkhelpers.secrets import secret_value
from sparkhelpers.validate import cluster_name


def all_nodes(cfg: Config) -> list[tuple[str, Host]]:
    return [("head", LOCAL)] + [(h.address, h) for h in worker_hosts(cfg)]


def pick_node(cfg: Config, which: str) -> tuple[int, Host]:
    """(rank, host) for --node: a rank, "head", or a WORKER_HOST entry."""
    nodes = all_nodes(cfg)
    if which.isdigit() and int(which) < len(nodes):
        return int(which), nodes[int(which)][1]
    for rank, (label, host) in enumerate(nodes):
        if which in (label, host.address):
            return rank, host
    raise UsageError(f"--node {which}: no such node (ranks 0-{len(nodes) - 1}: "
                     f"{', '.join(label for label, _ in nodes)})", fix="pass a rank or a WORKER_HOST entry")


def _http(url: str, api_key: str) -> tuple[int, object]:
    import requests

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        r = requests.get(url, timeout=3, headers=headers)
    except requests.RequestException:
        return 0, None
    try:
        return r.status_code, r.json()
    except ValueError:
        return r.status_code, None


def collect(cfg: Config, runner: Runner) -> dict:

    cluster = cluster_name(cfg.get("CLUSTER_NAME", "spark"))
    log_dir = f"{state_dir(cfg)}/logs/{cluster}"
    image, model = cfg.get("VLLM_IMAGE"), cfg.get("MODEL")
    runtime = cfg.get("RUNTIME", "vllm")
    nodes = all_nodes(cfg)

    def probe(item: tuple[str, Host]) -> dict:
        label, host = item
        cache = cfg.get("HF_CACHE") if label == "head" else (cfg.get("WORKER_HF_CACHE") or cfg.get("HF_CACHE"))
        r = runner.on(host, nd.probe_script(cluster, image, model, cache, runtime, log_dir),
                      timeout=host.connect_timeout + 30, mutating=False)
        if "probe=ok" not in r.stdout:
            return {"node": label, "reachable": False, "error": r.last_line or f"exit {r.returncode}"}
        p = nd.parse_probe(label, r.stdout)
        return {"node": label, "reachable": True,
                "containers": [{"name": c.name, "state": c.state, "rank": c.rank, "mode": c.mode,
                                "config": c.config, "status": c.status} for c in p.containers],
                "mem_available_gib": round(p.mem_available_gib, 1), "nccl_transport": p.transport or "unknown",
                "image_id": p.image_id[:19], "model_cached": p.model_present}

    per_node = runner.parallel(probe, nodes)
    containers = [c for n in per_node for c in n.get("containers", [])]
    running = [c for c in containers if c["state"] == "running"]
    mode = running[0]["mode"] if running else ""
    data: dict = {"cluster": cluster, "running": bool(running), "mode": mode, "nodes": per_node}
    if mode == "ray":  # the head container publishes `ray status` once a second on the host
        path = Path(f"{state_dir(cfg)}/run/{cluster}/0/ray-status.txt")
        fresh = path.is_file() and time.time() - path.stat().st_mtime < 30
        data["ray_nodes"], data["ray_gpus"] = nd.parse_ray_status(path.read_text()) if fresh else (0, 0)
    port = cfg.get_int("VLLM_PORT", 8000)
    host = cfg.get("VLLM_HOST", "0.0.0.0")
    endpoint = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"
    api_key = secret_value(cfg, "API_KEY")
    code, _ = _http(f"{endpoint}/health", "")
    models_code, models = _http(f"{endpoint}/v1/models", api_key)
    served = [m.get("id") for m in models.get("data", [])] if models_code == 200 and isinstance(models, dict) else []
    data.update(endpoint=endpoint, healthy=code == 200, served_models=served)
    return data


def format_text(data: dict) -> str:
    lines = [f"cluster {data['cluster']}: " + (f"running ({data['mode']})" if data["running"] else "not running")]
    for n in data["nodes"]:
        if not n["reachable"]:
            lines.append(f"  {n['node']}: UNREACHABLE ({n['error']})")
            continue
        cs = ", ".join(f"{c['name']} {c['state']}" for c in n["containers"]) or "no containers"
        lines.append(f"  {n['node']}: {cs}; MemAvailable {n['mem_available_gib']} GiB; "
                     f"NCCL transport {n['nccl_transport']}")
        if n["nccl_transport"] == "Socket":
            lines.append(f"  WARNING: {n['node']} uses NCCL over TCP sockets (NET/Socket), not RDMA: slow. "
                         "Check /dev/infiniband in the container and NCCL_IB_HCA (checkout_setup.sh --nccl).")
    if "ray_nodes" in data:
        lines.append(f"  Ray: {data['ray_nodes']} node(s), {data['ray_gpus']} GPU(s)")
    served = ", ".join(data["served_models"]) or "-"
    lines.append(f"  API {data['endpoint']}: {'healthy' if data['healthy'] else 'not answering'}; serving {served}")
    return "\n".join(lines) + "\n"

