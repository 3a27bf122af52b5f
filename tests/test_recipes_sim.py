"""A recipe starts on the emulated cluster (2 nodes, native and Ray), answers a chat, carries its id, and
runs what `recipe render` showed; the foreground mode (`cluster run --recipe`) stops cleanly on SIGTERM and
exits non-zero when a rank dies."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
from test_cluster_sim import (
    ROOT,
    cli,
    container_blocks,
    env_for,
    no_containers_left,
    ours,
    script,
    seed_model,
    shown_by_dry_run,
    state_dir,
    stream_chat,
)

from sparkhelpers.sim.cluster import exec_argv

pytestmark = [pytest.mark.sim, pytest.mark.engine]
RECIPE_FILE = "/root/pair.yaml"


def write_recipe(c, launch: str) -> str:
    text = (f"recipe: 1\nname: qwen3-small-pair\nmodel: Qwen/Qwen3-0.6B\nimage: {c.image}\nnodes: 2\n"
            f"launch: {launch}\nengine_args:\n  max_model_len: 2048\n  max_num_seqs: 4\n  enforce_eager: true\n"
            "env:\n  VLLM_LOGGING_LEVEL: INFO\n")
    c.exec("spark1", f"cat >{RECIPE_FILE}", input=text).check("writing the recipe")
    r = cli(c, "recipe", "hash", RECIPE_FILE)
    assert r.ok, r.stderr
    return r.stdout.strip()


def labels(c, node: str) -> dict:
    r = c.exec(node, f"docker inspect --format '{{{{json .Config.Labels}}}}' sparkhelpers-sim-{c.name}-"
                     f"{0 if node == 'spark1' else 1}")
    assert r.ok, r.stderr
    return json.loads(r.stdout)


def test_recipe_native_start_render_equals_what_ran(sim_cluster):
    c = sim_cluster
    seed_model(c)
    rid = write_recipe(c, "native")
    try:
        shown = cli(c, "recipe", "render", RECIPE_FILE)
        assert shown.ok, shown.stderr
        assert ours(c, "spark1") == [] and ours(c, "spark2") == [], "render touched no host"
        r = script(c, "start_cluster.sh", "--recipe", RECIPE_FILE)
        assert r.ok, f"{r.stdout}\n{r.stderr}"
        assert "native, 2 node(s)" in r.stdout
        executed = Path(state_dir(c), f"run/sim-{c.name}/last-start.txt").read_text()
        ran, dry = container_blocks(executed), container_blocks(shown.stdout)
        assert len(ran) == len(dry) == 2
        for block, dry_block in zip(ran, dry, strict=True):
            assert shown_by_dry_run(block, dry_block), (block, dry_block)
        assert "--max-num-seqs 4" in executed and "--enforce-eager" in executed
        assert "--env VLLM_LOGGING_LEVEL=INFO" in executed
        for node in ("spark1", "spark2"):
            assert labels(c, node)["sparkhelpers.recipe"] == rid
        text, usage = stream_chat(c)
        assert text.strip() and usage["completion_tokens"] > 0
    finally:
        script(c, "stop_cluster.sh")
    no_containers_left(c, ("spark1", "spark2"))


def run_in_background(c, *args: str) -> subprocess.Popen:
    cmd = ["env", *env_for(c), "bash", "-c", 'echo $$ >/root/run.pid; exec "$@"', "run",
           str(ROOT / ".venv/bin/sparkhelpers"), "cluster", "run", "--recipe", RECIPE_FILE, *args]
    return subprocess.Popen(exec_argv(c.node("spark1"), cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_ready(proc: subprocess.Popen, timeout: float = 300) -> str:
    """The foreground run's ready line (printed once start, health and the smoke chat are done)."""
    import select

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 2)
        if ready:
            line = proc.stdout.readline()
            if " is ready: " in line:
                return line
            assert line or proc.poll() is None, proc.communicate()
        assert proc.poll() is None, proc.communicate()
    raise AssertionError("the foreground run did not become ready")


def test_foreground_ray_run_stops_cleanly_on_sigterm(sim_cluster):
    c = sim_cluster
    seed_model(c)
    rid = write_recipe(c, "ray")
    proc = run_in_background(c)
    try:
        wait_ready(proc)
        text, _ = stream_chat(c)
        assert text.strip()
        assert labels(c, "spark2")["sparkhelpers.recipe"] == rid and labels(c, "spark1")["sparkhelpers.mode"] == "ray"
        c.exec("spark1", "kill -TERM $(cat /root/run.pid)").check("SIGTERM to the foreground run")
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert "SIGTERM: stopping every rank" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            script(c, "stop_cluster.sh")
    no_containers_left(c, ("spark1", "spark2"))


def test_foreground_run_exits_nonzero_when_a_rank_dies(sim_cluster):
    c = sim_cluster
    seed_model(c)
    write_recipe(c, "native")
    proc = run_in_background(c)
    try:
        wait_ready(proc)
        c.exec("spark2", f"docker kill sparkhelpers-sim-{c.name}-1").check("killing the worker rank")
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 1, err
        assert re.search(r"rank 1 \(\S+\) is exited", err) and "stopped serving" in err
    finally:
        if proc.poll() is None:
            proc.kill()
        script(c, "stop_cluster.sh")
    no_containers_left(c, ("spark1", "spark2"))
