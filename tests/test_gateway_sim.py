"""The gateway on the emulated cluster (2 nodes) with real recipes: each model runs as
``sparkhelpers cluster run --recipe R --nodes ...`` (the foreground mode), placed per node.

One gateway on spark1 for the module (the tests run in file order and build on each other, to keep the
number of engine starts at four): a on the head and b on the worker served at once (two simultaneous first
requests for a start it once); pair on both nodes stops both; a rank of pair killed mid-stream gives the
client a clean error and the next request restarts pair; pair's ttl ends it and leaves no container.
"""

from __future__ import annotations

import json
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_cluster_sim import ROOT, cli, env_for, ours, seed_model, state_dir

from sparkhelpers.sim.cluster import exec_argv

pytestmark = [pytest.mark.sim, pytest.mark.engine, pytest.mark.slow]
PORT = 4400
KIT = str(ROOT / "tests" / "gatewaykit.py")
PY = str(ROOT / ".venv" / "bin" / "python")


def recipe(c, path: str, nodes: int) -> None:
    text = (f"recipe: 1\nname: gw-{nodes}\nmodel: Qwen/Qwen3-0.6B\nimage: {c.image}\nnodes: {nodes}\n"
            "launch: native\nengine_args:\n  max_model_len: 2048\n  max_num_seqs: 4\n  enforce_eager: true\n")
    c.exec("spark1", f"cat >{path}", input=text).check("writing a recipe")


class SimGateway:
    def __init__(self, c) -> None:  # noqa: ANN001
        self.c, self.state = c, Path(state_dir(c))
        self.worker = c.workers[0].mgmt_ip
        self.log = self.state / "gateway-sim.log"
        self.url = f"http://127.0.0.1:{PORT}"

    def start(self) -> None:
        models = {"a": {"recipe": "/root/gw-solo.yaml", "placement": [["head"]]},
                  "b": {"recipe": "/root/gw-solo.yaml", "placement": [[self.worker]]},
                  "pair": {"recipe": "/root/gw-pair.yaml", "placement": [["head", self.worker]], "ttl": 25}}
        doc = {"listen": f"127.0.0.1:{PORT}", "start_port": 8100, "start_timeout": 400, "stop_timeout": 90,
               "cold_start_wait": 500, "models": models}
        self.state.mkdir(parents=True, exist_ok=True)
        self.models_file = self.state / "gateway-sim.yaml"
        self.models_file.write_text(yaml.safe_dump(doc, sort_keys=False))
        made = cli(self.c, "keys", "create", "sim")
        assert made.ok, made.stderr
        self.key = made.stdout.strip()
        cmd = ["env", *env_for(self.c), "bash", "-c", f'exec "$@" >>{self.log} 2>&1', "gw",
               str(ROOT / ".venv/bin/sparkhelpers"), "gateway", "run", "--models", str(self.models_file)]
        self.proc = subprocess.Popen(exec_argv(self.c.node("spark1"), cmd))
        deadline = time.monotonic() + 60
        while "gateway listening" not in self.log_text():
            assert self.proc.poll() is None and time.monotonic() < deadline, self.log_text()[-2000:]
            time.sleep(0.5)

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def client(self, *args: str, key: str = "", timeout: float = 600) -> list[str]:
        r = self.c.exec("spark1", [PY, KIT, *args], input=(key or self.key) + "\n", timeout=timeout)
        assert r.ok, f"{r.stdout}\n{r.stderr}"
        return r.stdout.splitlines()

    def popen_client(self, *args: str) -> subprocess.Popen:
        proc = subprocess.Popen(exec_argv(self.c.node("spark1"), [PY, KIT, *args]), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        proc.stdin.write(self.key + "\n")
        proc.stdin.close()
        proc.stdin = None  # communicate() would flush it
        return proc

    def chat(self, model: str, n: int = 1, max_tokens: int = 8) -> list[dict]:
        return [json.loads(line) for line in
                self.client("chat", self.url + "/v1/chat/completions", model, str(n), str(max_tokens))]

    def running(self) -> list[dict]:
        control = (self.state / "gateway" / "control.key").read_text().strip()
        return json.loads(self.client("get", self.url + "/running", key=control)[0])["running"]

    def starts(self, model: str) -> int:
        return len(re.findall(rf"starting {re.escape(model)} \(pid", self.log_text()))

    def stop(self) -> None:
        pid = (self.state / "gateway" / "gateway.pid").read_text().strip()
        self.c.exec("spark1", f"kill -TERM {pid}")
        assert self.proc.wait(180) == 0, self.log_text()[-3000:]


@pytest.fixture(scope="module")
def gw(sim_cluster):
    c = sim_cluster
    for node in ("spark1", "spark2"):
        seed_model(c, node)
    recipe(c, "/root/gw-solo.yaml", 1)
    recipe(c, "/root/gw-pair.yaml", 2)
    g = SimGateway(c)
    g.start()
    try:
        yield g
    finally:
        if g.proc.poll() is None:
            g.stop()
        for node in ("spark1", "spark2"):  # whatever a failed test left: the cluster is shared
            c.exec(node, f"docker ps -aq --filter label=sparkhelpers.cluster=sim-{c.name} | xargs -r docker rm -f")
    assert not [ln for node in ("spark1", "spark2") for ln in ours(c, node, running_only=True)]


def containers(g: SimGateway) -> dict[str, list[str]]:
    return {node: ours(g.c, node, running_only=True) for node in ("spark1", "spark2")}


def test_two_models_on_two_nodes_at_once_and_simultaneous_first_requests_start_once(gw):
    a = gw.popen_client("chat", gw.url + "/v1/chat/completions", "a", "2", "8")  # two first requests at once
    b = gw.chat("b", 1, 8)
    out, err = a.communicate(timeout=600)
    assert a.returncode == 0, err
    answers = [json.loads(line) for line in out.splitlines()] + b
    assert [r["status"] for r in answers] == [200, 200, 200], answers
    assert all(r["body"]["usage"]["completion_tokens"] == 8 for r in answers)
    assert gw.starts("a") == 1 and gw.starts("b") == 1
    running = {r["model"]: r for r in gw.running()}
    assert set(running) == {"a", "b"} and {r["state"] for r in running.values()} == {"ready"}
    assert running["a"]["nodes"] == ["head"] and running["b"]["nodes"] == [gw.worker]
    assert len(containers(gw)["spark1"]) == 1 and len(containers(gw)["spark2"]) == 1
    assert [r["status"] for r in gw.chat("a") + gw.chat("b")] == [200, 200]  # both still serve


def test_a_model_on_their_nodes_stops_both_and_starts(gw):
    r = gw.chat("pair", 1, 8)
    assert r[0]["status"] == 200, r
    assert [(x["model"], x["state"]) for x in gw.running()] == [("pair", "ready")]
    log = gw.log_text()
    assert "stopping a (swap for pair)" in log and "stopping b (swap for pair)" in log
    held = containers(gw)
    assert [ln.split()[0] for ln in held["spark2"]] == [f"sparkhelpers-sim-{gw.c.name}-1"]  # pair's rank 1
    assert len(held["spark1"]) == 1


def test_a_rank_killed_mid_stream_is_a_clean_error_and_the_next_request_restarts(gw):
    stream = gw.popen_client("stream", gw.url + "/v1/chat/completions", "pair", "400")
    events: list[str] = []
    deadline = time.monotonic() + 120
    while sum('"content"' in e for e in events) < 3:
        assert time.monotonic() < deadline and stream.poll() is None, (events, stream.stderr.read())
        if select.select([stream.stdout], [], [], 1)[0]:
            events.append(stream.stdout.readline().strip())
    gw.c.exec("spark2", f"docker kill sparkhelpers-sim-{gw.c.name}-1").check("killing pair's rank 1")
    out, err = stream.communicate(timeout=180)
    events += out.splitlines()
    assert events[-1] == "END 200", (events[-3:], err)
    last = json.loads(events[-2].removeprefix("data: "))
    assert last["error"]["code"] == "engine_failed" and "retry" in last["error"]["message"]
    assert sum('"content"' in e for e in events) < 400
    first = gw.starts("pair")
    r = gw.chat("pair", 1, 8)
    assert r[0]["status"] == 200, r
    assert gw.starts("pair") == first + 1
    run_log = (gw.state / "gateway" / "logs" / "pair.log").read_text()
    assert re.search(r"rank 1 \(\S+\) is exited", run_log)  # the foreground run named the dead rank


def test_ttl_expiry_empties_running_and_ends_the_containers(gw):
    deadline = time.monotonic() + 180
    while gw.running():
        assert time.monotonic() < deadline, gw.running()
        time.sleep(3)
    assert "stopping pair (ttl expired)" in gw.log_text()
    assert containers(gw) == {"spark1": [], "spark2": []}


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))
