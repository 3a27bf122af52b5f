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


def rank_problems(per_node: list[dict]) -> list[str]:
    """Why an engine may be broken although its /health answers 200: real vLLM (native multi-node) keeps
    answering 200 for minutes after a rank died. Every rank of the launch (label sparkhelpers.nodes) must
    have a running container."""
    found = [(n["node"], c) for n in per_node for c in n.get("containers", [])]
    running = [c for _, c in found if c["state"] == "running"]
    if not running:
        return []
    problems = [f"rank {c['rank']} on {node} is {c['state']} ({c['status']})" for node, c in found
                if c["state"] != "running"]
    want = max((int(c["nodes"]) for c in running if str(c.get("nodes", "")).isdigit()), default=1)
    seen = {c["rank"] for _, c in found}
    problems += [f"rank {r} has no container" for r in map(str, range(want)) if r not in seen]
    return problems


def request_problem(endpoint: str, api_key: str, model: str, timeout: float = 30) -> str:
    """One cheap real request (1 token); "" when it is answered, else why not. /health alone cannot tell
    a multi-node engine whose rank died: the request reaches the dead rank and fails (HTTP 500)."""
    import requests

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        r = requests.post(f"{endpoint}/v1/completions", headers=headers, timeout=timeout,
                          json={"model": model, "prompt": "ping", "max_tokens": 1})
    except requests.RequestException as exc:
        return f"a 1-token test request failed: {type(exc).__name__}"
    if r.status_code != 200:
        return f"a 1-token test request got HTTP {r.status_code}: {r.text.strip()[:160]}"
    return ""


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
                            "config": c.config, "nodes": c.nodes, "status": c.status} for c in p.containers],
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
    problems = rank_problems(per_node)
    if code == 200 and not problems and mode in ("native", "ray") and served:
        problems += [p for p in [request_problem(endpoint, api_key, served[0])] if p]
    data.update(endpoint=endpoint, healthy=code == 200 and not problems, served_models=served, problems=problems,
                health_code=code, api_status=models_code,
                warnings=api_warnings(cfg.get("VLLM_HOST", "0.0.0.0"), api_key, models_code, bool(running)))
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
    verdict = "healthy" if data["healthy"] else "not answering"
    if data.get("problems"):
        verdict = f"BROKEN ({'; '.join(data['problems'])})"
        verdict += ", although /health answers 200" if data.get("health_code") == 200 else ""
    lines.append(f"  API {data['endpoint']}: {verdict}; serving {served}")
    if data.get("engine"):
        lines.append(engine_text(data["engine"]))
    lines += [f"  WARNING: {w}" for w in data.get("warnings", [])]
    return "\n".join(lines) + "\n"


# ---- what monitoring acts on ------------------------------------------------------------------------

def api_warnings(listen: str, api_key: str, models_code: int, running: bool) -> list[str]:
    """The API's problems a healthy /health hides: a 401 with the configured key, no key beyond loopback."""
    from sparkhelpers.secrets import exposure_warning

    out = []
    if models_code == 401:
        out.append("the API answered HTTP 401 to /v1/models: " + (
            "the key in API_KEY_FILE (or API_KEY) is not the one the engine was started with (fix: use that key, "
            "or run ./start_cluster.sh to apply the new one)" if api_key else
            "no API key is configured here, but the engine wants one (fix: set API_KEY_FILE to a 0600 file with "
            "the engine's key)"))
    exposed = exposure_warning(listen, api_key) if running and models_code == 200 else ""
    if exposed:
        out.append(exposed)
    return out


def exit_code(data: dict) -> int:
    """0 running and healthy (the API answers with the configured key), 1 not, 2 a node could not be
    asked: an unreachable node (2) outranks a cluster that is down or unhealthy (1)."""
    if any(not n.get("reachable", True) for n in data["nodes"]):
        return 2
    usable = data["running"] and data["healthy"] and data.get("api_status", 200) == 200
    return 0 if usable and not data.get("errors") else 1
