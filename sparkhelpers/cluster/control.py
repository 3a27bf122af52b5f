"""Start and stop as functions: what `cluster start|stop`, `cluster switch` and the sweep call in-process.

The callers hold the cluster lock (sparkhelpers.locking); these functions assume it. ``cfg`` is the whole
configuration, variant overrides included (``Config.with_overrides``), so nothing travels through the
environment.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from sparkhelpers.appkit import info, warn
from sparkhelpers.config import Config
from sparkhelpers.models.catalog import ModelSpec
from sparkhelpers.secrets import secret_value


@dataclass
class StartOutcome:
    plan: object  # cluster.plan.ClusterPlan
    report: object | None  # lifecycle.StartReport; None for a dry run
    dry_run_text: str = ""


def model_spec(cfg: Config) -> ModelSpec:
    from sparkhelpers.models.catalog import resolve_model

    return resolve_model(cfg)


def start_cluster(cfg: Config, *, nodes: int | None = None, solo: bool = False, replace: bool = False,
                  keep_on_failure: bool = False, timeout: int | None = None, dry_run: bool = False,
                  runner=None, say: Callable[[str], None] = info,  # noqa: ANN001
                  spec: ModelSpec | None = None, node_names: list[str] | None = None) -> StartOutcome:
    """Preflight, image, model, containers, health, one chat request (or, with ``dry_run``, the commands;
    a dry run opens no connection: what it would ask a node is printed as such). ``node_names``: serve on
    this node set (``topology.node_set``: the first is rank 0) instead of the configured cluster."""
    from sparkhelpers.cluster import lifecycle, render
    from sparkhelpers.cluster.fabric import native_supported, resolve_fabric
    from sparkhelpers.cluster.plan import build_plan
    from sparkhelpers.config import state_dir
    from sparkhelpers.runner import Runner
    from sparkhelpers.topology import layout_for, node_set

    runner = runner or Runner(dry_run=dry_run)
    spec = spec or model_spec(cfg)
    topo = node_set(cfg, node_names or [])
    lay = layout_for(cfg, spec, nodes=nodes, solo=solo, topo=topo)
    # the workers' fabric connections (the model check's) open while discovery and the preflight run
    runner.open_early([dataclasses.replace(n.host, address=n.fabric_ip) for n in topo.workers[: lay.nodes - 1]
                       if n.fabric_ip and n.fabric_ip != n.host.address])
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=1) as pool:  # the nodes answer while this process reads the secrets
        early = None if dry_run else pool.submit(look_first, cfg, spec, runner, topo, nodes=nodes, solo=solo)
        api_key, hf_token = secret_value(cfg, "API_KEY"), secret_value(cfg, "HF_TOKEN")  # (HF's own import)
        looks = early.result() if early else {}
    fabric = resolve_fabric(cfg, runner, lay.nodes, topo, looks)  # reads the looks; asks only what they lack
    discovery_s = time.monotonic() - t0
    native = None
    if lay.nodes > 1 and cfg.get("LAUNCH_MODE", "auto") == "auto" and cfg.get("RUNTIME", "vllm") == "vllm":
        native = native_supported(runner, spec.image or cfg.get("VLLM_IMAGE"), state_dir(cfg) / "image-probe.json",
                                  probe=not dry_run, head=topo.head.host)
    plan = build_plan(cfg, spec, nodes=nodes, solo=solo, timeout_s=timeout, fabric=fabric, native_supported=native,
                      topo=topo)
    if native is False:
        say("the image's vLLM is older than 0.10.2 (no Ray-less multi-node launch): using Ray")
    if lay.why == "the preset" and len(topo.nodes) != lay.nodes:
        say(f"preset {spec.name} runs on {lay.nodes} node(s); use --nodes N to spread it over more")
    secrets = {}
    if api_key:
        secrets["LLAMA_API_KEY" if plan.mode == "llama-cpp" else "VLLM_API_KEY"] = api_key
    if hf_token:
        secrets["HF_TOKEN"] = hf_token
    if dry_run:
        config_hash = lifecycle.config_id(plan, secrets)
        return StartOutcome(plan, None, render.describe(plan, render.start_phases(plan, config_hash, secrets),
                                                        config_hash))
    starter = lifecycle.Starter(plan, runner, spec=spec, secrets=secrets, replace=replace,
                                keep_on_failure=keep_on_failure, drop_caches=cfg.get_bool("DROP_CACHES", False),
                                api_key=api_key, say=say, stop_all=lambda: stop_cluster(cfg, runner),
                                fabric_mtu=cfg.get_int("FABRIC_MTU", 9000), looks=looks)
    if looks:
        starter.report.phases["discovery"] = discovery_s  # printed first: it ran before the preflight
    return StartOutcome(plan, starter.start())


def look_first(cfg: Config, spec: ModelSpec, runner, topo, *, nodes: int | None,  # noqa: ANN001
               solo: bool) -> dict:
    """A multi-node Ray or native start's first round trip per node (``fabric.look_all``): the facts its
    fabric gate and discovery read, with its preflight probe beside them. {} otherwise, or when the
    configuration does not make a plan yet (the real plan, after discovery, reports that)."""
    from sparkhelpers.cluster import lifecycle
    from sparkhelpers.cluster.fabric import look_all, placeholders
    from sparkhelpers.cluster.plan import build_plan, fabric_from_config
    from sparkhelpers.errors import SparkError
    from sparkhelpers.topology import layout_for

    count = layout_for(cfg, spec, nodes=nodes, solo=solo, topo=topo).nodes
    try:  # the probe reads no fabric fact: the plan without discovery's answers writes the same script
        draft = build_plan(cfg, spec, nodes=nodes, solo=solo, topo=topo,
                           fabric=placeholders(fabric_from_config(topo, cfg, count)))
    except SparkError:
        return {}
    if len(draft.nodes) < 2 or draft.mode not in ("ray", "native"):
        return {}
    probes = {n.rank: lifecycle.preflight_script(draft, n) for n in draft.nodes}
    return look_all(runner, topo.nodes[: len(draft.nodes)], probes)


def stop_cluster(cfg: Config, runner=None, *, force: bool = False, local_only: bool = False,  # noqa: ANN001
                 quiet: bool = False) -> list:
    """Remove this cluster's containers on every node in parallel; one result per node."""
    from sparkhelpers.cluster import lifecycle
    from sparkhelpers.config import state_dir
    from sparkhelpers.runner import Runner
    from sparkhelpers.topology import topology
    from sparkhelpers.validate import cluster_name

    runner = runner or Runner()
    cluster = cluster_name(cfg.get("CLUSTER_NAME", "spark"))
    hosts = [(n.name, n.host) for n in topology(cfg).nodes[: 1 if local_only else None]]
    results = lifecycle.stop_nodes(runner, cluster, f"{state_dir(cfg)}/run/{cluster}", hosts, force=force,
                                   grace_s=cfg.get_int("STOP_TIMEOUT", 20))
    if not quiet:
        for r in results:
            if r.ok:
                info(f"{r.node}: {r.removed} container(s) of cluster {cluster} removed" if r.removed
                     else f"{r.node}: nothing of cluster {cluster} running")
            else:
                warn(f"{r.node}: could not stop (unreachable?): {r.error}")
    return results


def close_ssh(cfg: Config, runner=None) -> int:  # noqa: ANN001
    """End the shared SSH connections (masters) of this state directory and remove their control
    directory; what `cluster stop` does last. Returns how many masters were running."""
    from sparkhelpers.config import state_dir
    from sparkhelpers.runner import Runner, control_dir

    return (runner or Runner()).close_masters(control_dir(state_dir(cfg)))


def stop_failures(results: list) -> list[str]:
    return [r.node for r in results if not r.ok]
