"""The relay's pure rules, and its agent run for real as local processes (a chain of "nodes" that are
directories here; the hops are local commands instead of ssh, everything else is the shipped code)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sparkhelpers.relay import engine, plan
from sparkhelpers.relay.engine import Payload, Target
from sparkhelpers.runner import Host

MIB = 1 << 20


def test_chain_for_few_workers_tree_for_more():
    assert plan.relay_tree(["a"]) == {"": ["a"], "a": []}
    assert plan.relay_tree(["a", "b", "c", "d"]) == {"": ["a"], "a": ["b"], "b": ["c"], "c": ["d"], "d": []}
    tree = plan.relay_tree([f"w{i}" for i in range(1, 8)])
    assert tree[""] == ["w1"]  # the head always sends one copy
    assert tree["w1"] == ["w2", "w3"] and tree["w2"] == ["w4", "w5"] and tree["w3"] == ["w6", "w7"]
    assert plan.depth(tree) == 3 and plan.depth(plan.relay_tree(["a", "b", "c", "d"])) == 4
    every = [c for kids in tree.values() for c in kids]
    assert sorted(every) == sorted(f"w{i}" for i in range(1, 8))  # each worker fed exactly once
    assert plan.relay_tree([]) == {"": []}


def test_chunks_lanes_and_what_is_still_needed():
    items = plan.chunks([40 * MIB, 0, 5], chunk=16 * MIB)
    assert items == [(0, 0, 16 * MIB), (0, 16 * MIB, 16 * MIB), (0, 32 * MIB, 8 * MIB), (2, 0, 5)]
    one, two = plan.lanes(items, 2)
    assert one == [items[0], items[2]] and two == [items[1], items[3]]
    assert sum(n for *_, n in one) + sum(n for *_, n in two) == 40 * MIB + 5
    paths = ["big", "empty", "small"]
    held = [{"big": "all", "small": [0]}, {"big": [0, 16 * MIB], "small": []}]
    assert plan.still_needed(items, paths, held) == [items[2], items[3]]
    assert plan.height({"": ["a"], "a": ["b"], "b": []}, "a") == 2


def test_hop_commands_nest_and_wait_longer_upstream():
    by_name = {n: Target(n, (Host(f"10.0.1.{i}"), Host(f"10.0.2.{i}")), f"/raid/{n}") for i, n in
               enumerate(["a", "b", "c"], start=2)}
    tree = plan.relay_tree(["a", "b", "c"])
    header = engine.lane_header(Payload("/src", ({"path": "f", "size": 3},)), [(0, 0, 3)], 1, tree, by_name,
                                stall_s=10, bwlimit=0)
    first = header["node"]["children"][0]
    assert first["name"] == "a" and first["wait_s"] == 30 and first["children"][0]["wait_s"] == 20
    assert "10.0.2.2" in first["ssh"] and "10.0.2.3" in first["children"][0]["ssh"]  # lane 2 = twin 2
    assert header["read_s"] == 40 and header["lane"] == 2
    assert engine.describe(tree) == "head -> a -> b -> c"


def _local_hop(name: str, root: Path, children: list[dict], wait_s: float = 10, argv: list[str] | None = None) -> dict:
    return {"name": name, "root": str(root), "wait_s": wait_s, "children": children,
            "ssh": argv or engine.agent_argv("recv", None, sys.executable)}


def _send(src: Path, files: list[dict], node: dict, chunk: int = plan.CHUNK, lane: int = 1,
          items: list | None = None) -> dict:
    header = {"lane": lane, "chunk": chunk, "staging": ".relay", "src": str(src), "files": files,
              "chunks": items if items is not None else plan.chunks([f["size"] for f in files], chunk),
              "read_s": 20, "bwlimit": 0, "progress": False, "node": {"name": "head", "children": [node]}}
    r = subprocess.run(engine.agent_argv("send", None, sys.executable), input=json.dumps(header), text=True,
                       capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def _finalize(root: Path, files: list[dict], **extra) -> dict:
    args = {"root": str(root), "staging": ".relay", "files": files, "chunk": plan.CHUNK, **extra}
    r = subprocess.run(engine.agent_argv("finalize", args, sys.executable), capture_output=True, text=True,
                       timeout=60)
    return json.loads(r.stdout)


@pytest.fixture
def source(tmp_path):
    src = tmp_path / "src"
    (src / "blobs").mkdir(parents=True)
    data = {"blobs/w": os.urandom(3 * MIB + 123), "blobs/cfg": b'{"a": 1}', "blobs/empty": b""}
    for path, blob in data.items():
        (src / path).write_bytes(blob)
    return src, data, [{"path": p, "size": len(b)} for p, b in data.items()]


def test_a_chain_writes_every_node_and_renames_only_at_the_end(tmp_path, source):
    src, data, files = source
    nodes = [tmp_path / n for n in ("a", "b", "c")]
    chain = _local_hop("c", nodes[2], [])
    chain = _local_hop("b", nodes[1], [chain])
    chain = _local_hop("a", nodes[0], [chain])
    status = _send(src, files, chain, chunk=MIB)
    seen = engine.flatten(status)
    assert all(seen[n][0]["ok"] for n in "abc"), status
    for root in nodes:
        assert not (root / "blobs").exists()  # nothing in place before finalize: all under .relay/
        assert sorted(p.name for p in (root / ".relay").iterdir() if p.suffix == ".part") == [
            "blobs%cfg.part", "blobs%w.part"]
        fin = _finalize(root, files, links=[{"path": "snap/w", "target": "../blobs/w"}],
                        writes=[{"path": "refs/main", "data": "abc"}])
        assert fin["complete"], fin
        assert {p: (root / p).read_bytes() for p in data} == data
        assert os.readlink(root / "snap" / "w") == "../blobs/w" and (root / "refs" / "main").read_text() == "abc"
        assert not (root / ".relay").exists()


def test_a_dead_middle_node_is_named_and_the_rest_is_resumed(tmp_path, source):
    src, data, files = source
    a, c = tmp_path / "a", tmp_path / "c"
    dies = [sys.executable, "-c", "import sys; sys.exit(3)"]
    dead = _local_hop("b", tmp_path / "b", [_local_hop("c", c, [])], argv=dies)
    status = _send(src, files, _local_hop("a", a, [dead], wait_s=5), chunk=MIB)
    seen = engine.flatten(status)
    assert seen["a"][0]["ok"] and not seen["b"][0]["ok"] and "c" not in seen
    assert "exit 3" in seen["b"][0]["error"] or "connection lost" in seen["b"][0]["error"]
    assert _finalize(a, files)["complete"]
    # c got nothing; a second pass straight from the head completes it (what the engine's next round does)
    assert _send(src, files, _local_hop("c", c, []), chunk=MIB)["children"][0]["ok"]
    assert _finalize(c, files)["complete"] and (c / "blobs" / "w").read_bytes() == data["blobs/w"]


def test_an_interrupted_relay_resumes_from_the_journal(tmp_path, source):
    src, data, files = source
    node = tmp_path / "a"
    items = plan.chunks([f["size"] for f in files], MIB)
    _send(src, files, _local_hop("a", node, []), chunk=MIB, items=items[:2])  # "interrupted" after 2 chunks
    fin = _finalize(node, files)
    assert not fin["complete"] and "blobs/w" in fin["missing"] and not (node / "blobs" / "w").exists()
    args = {"root": str(node), "staging": ".relay", "files": files, "chunk": MIB}
    r = subprocess.run(engine.agent_argv("probe", args, sys.executable), capture_output=True, text=True, timeout=60)
    have = json.loads(r.stdout)["have"]
    assert have["blobs/w"] == [0, MIB]
    rest = plan.still_needed(items, [f["path"] for f in files], [have])
    assert rest == items[2:]
    status = _send(src, files, _local_hop("a", node, []), chunk=MIB, items=rest)
    assert status["children"][0]["wrote"] == sum(n for *_, n in rest)  # only what was missing
    assert _finalize(node, files)["complete"] and (node / "blobs" / "w").read_bytes() == data["blobs/w"]


def test_listing_a_hub_snapshot(tmp_path):
    model = tmp_path / "models--a--b"
    (model / "blobs").mkdir(parents=True)
    (model / "blobs" / "x").write_bytes(b"12345")
    snap = model / "snapshots" / ("c" * 40)
    snap.mkdir(parents=True)
    (snap / "config.json").symlink_to("../../blobs/x")
    (snap / "tokenizer.json").write_bytes(b"{}")  # a plain file in the snapshot is moved as itself
    args = {"model_dir": str(model), "commit": "c" * 40, "ref": "main"}
    r = subprocess.run(engine.agent_argv("list", args, sys.executable), capture_output=True, text=True, timeout=60)
    out = json.loads(r.stdout)
    assert {f["path"]: f["size"] for f in out["files"]} == {"blobs/x": 5, f"snapshots/{'c' * 40}/tokenizer.json": 2}
    assert out["links"] == [{"path": f"snapshots/{'c' * 40}/config.json", "target": "../../blobs/x"}]
    assert out["writes"] == [{"path": "refs/main", "data": "c" * 40}]


def test_image_scripts_save_once_under_a_temp_name_and_load_then_remove():
    from sparkhelpers.relay import image

    assert image.archive_name("sha256:" + "ab" * 32) == "ab" * 32 + ".tar"
    save = image.save_script("vllm/x:1", "/raid/hf-cache/.sparkhelpers-images/a.tar")
    assert "docker save -o /raid/hf-cache/.sparkhelpers-images/a.tar.tmp vllm/x:1" in save
    assert save.index("[ -s") < save.index("docker save") < save.index("mv ")  # kept archive reused
    load = image.load_script("/raid/c/.sparkhelpers-images/a.tar", "vllm/x:1")
    assert load.index("docker load -i") < load.index("rm -f") < load.index("docker image inspect")


def test_second_twin_addresses_come_from_the_topology():
    from sparkhelpers.config import load_config
    from sparkhelpers.errors import SparkError
    from sparkhelpers.models.sync import workers_from_config
    from sparkhelpers.topology import topology

    flags = {"WORKER_HOST": "spark2 spark3", "WORKER_IB_IP": "10.0.1.2 10.0.1.3", "WORKER_IB_IP2": "10.0.2.2 10.0.2.3",
             "HEAD_IP": "10.0.1.1", "HEAD_IP2": "10.0.2.1", "HF_CACHE": "/raid/hf-cache"}
    topo = topology(load_config(flags=flags))
    assert topo.head.twin_ips == ("10.0.1.1", "10.0.2.1")
    assert [n.twin_ips for n in topo.workers] == [("10.0.1.2", "10.0.2.2"), ("10.0.1.3", "10.0.2.3")]
    w = workers_from_config(load_config(flags=flags))
    assert [x.host2.address for x in w] == ["10.0.2.2", "10.0.2.3"] and w[0].host2.user == w[0].host.user
    no2 = workers_from_config(load_config(flags={**flags, "WORKER_IB_IP2": ""}))
    assert all(x.host2 is None for x in no2)
    with pytest.raises(SparkError, match="WORKER_IB_IP2 has 1 entries but WORKER_HOST has 2"):
        topology(load_config(flags={**flags, "WORKER_IB_IP2": "10.0.2.2"}))
    with pytest.raises(SparkError, match="WORKER_IB_IP2"):
        topology(load_config(flags={**flags, "WORKER_IB_IP2": "10.0.2.2 10.0.2.300"}))
