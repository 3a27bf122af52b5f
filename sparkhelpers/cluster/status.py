"""`sparkhelpers status`: one probe per node in parallel, Ray and HTTP checks on the head."""

from __future__ import annotations

from sparkhelpers.cluster import nodes as nd
from sparkhelpers.cluster.watch import engine_numbers, engine_text
from sparkhelpers.config import Config, state_dir
from sparkhelpers.runner import Runner, shell_quote
from sparkhelpers.secrets import secret_value
from sparkhelpers.topology import Node, topology
from sparkhelpers.validate import cluster_name


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


def probe_node(cfg: Config, runner: Runner, node: Node, cluster: str) -> dict:
    """One read-only round trip. A node we could not look at is an error, never "no containers"."""
    cache = cfg.get("HF_CACHE") if node.is_head else (cfg.get("WORKER_HF_CACHE") or cfg.get("HF_CACHE"))
    script = nd.probe_script(cluster, cfg.get("VLLM_IMAGE"), cfg.get("MODEL"), cache, cfg.get("RUNTIME", "vllm"),
                             f"{state_dir(cfg)}/logs/{cluster}")
    r = runner.on(node.host, script, timeout=node.host.connect_timeout + 30, mutating=False)
    if "probe=ok" not in r.stdout:
        return {"node": node.name, "reachable": False, "docker": False,
                "error": f"unreachable: {r.last_line or f'exit {r.returncode}'}"}
    p = nd.parse_probe(node.name, r.stdout)
    if not p.docker:
        return {"node": node.name, "reachable": True, "docker": False,
                "error": f"Docker does not answer: {p.docker_error or 'no reply'}"}
    return {"node": node.name, "reachable": True, "docker": True, "error": "",
            "containers": [{"name": c.name, "state": c.state, "rank": c.rank, "mode": c.mode,
                            "config": c.config, "status": c.status} for c in p.containers],
            "mem_available_gib": round(p.mem_available_gib, 1), "nccl_transport": p.transport or "unknown",
            "image_id": p.image_id[:19], "model_cached": p.model_present}


def collect(cfg: Config, runner: Runner) -> dict:

    cluster = cluster_name(cfg.get("CLUSTER_NAME", "spark"))
    topo = topology(cfg)
    per_node = runner.parallel(lambda n: probe_node(cfg, runner, n, cluster), list(topo.nodes))
    containers = [c for n in per_node for c in n.get("containers", [])]
    running = [c for c in containers if c["state"] == "running"]
    mode = running[0]["mode"] if running else ""
    errors = [f"{n['node']}: {n['error']}" for n in per_node if n["error"]]
    data: dict = {"cluster": cluster, "running": bool(running), "mode": mode, "nodes": per_node, "errors": errors}
    if mode == "ray":  # the head container publishes `ray status` once a second in its run dir
        path = f"{state_dir(cfg)}/run/{cluster}/0/ray-status.txt"
        fresh = (f"f={shell_quote(path)}; if [ -f \"$f\" ] && [ $(($(date +%s) - $(stat -c %Y \"$f\"))) -lt 30 ]; "
                 "then cat \"$f\"; fi")
        r = runner.on(topo.head.host, fresh,
                      timeout=topo.head.host.connect_timeout + 15, mutating=False)
        data["ray_nodes"], data["ray_gpus"] = nd.parse_ray_status(r.stdout)
    endpoint = topo.endpoint()
    api_key = secret_value(cfg, "API_KEY")
    code, _ = _http(f"{endpoint}/health", "")
    models_code, models = _http(f"{endpoint}/v1/models", api_key)
    served = [m.get("id") for m in models.get("data", [])] if models_code == 200 and isinstance(models, dict) else []
    data.update(endpoint=endpoint, healthy=code == 200, served_models=served)
    data["engine"] = engine_numbers(endpoint, api_key)  # its /metrics: queue, KV use, prefix hits
    return data


def format_text(data: dict) -> str:
    state = f"running ({data['mode']})" if data["running"] else "not running"
    if data["errors"] and not data["running"]:
        state = "unknown (could not look at every node)"
    lines = [f"cluster {data['cluster']}: {state}"]
    for n in data["nodes"]:
        if n["error"]:
            lines.append(f"  {n['node']}: ERROR {n['error']}")
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
    if data.get("engine"):
        lines.append(engine_text(data["engine"]))
    return "\n".join(lines) + "\n"

