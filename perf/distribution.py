#!/usr/bin/env python3
"""Distribution of a model and of the engine image to 1, 2 and 3 workers: the old fan-out against the
relay, on the emulated cluster with the head's fabric twins shaped with tc; and relay over both twins
against a raw single-stream copy over one twin. One run prints everything side by side.

Usage: perf/distribution.py [--rate 100mbit] [--model-mib 1024] [--image-mib 256] [--workers 1,2,3]
                            [--cipher aes128-gcm@openssh.com] [--skip-model|--skip-image]   (as root: the sim)

- Cluster: 4 emulated nodes (spark1 head, 3 workers), each with two fabric twins; `sim fault spark1
  slow-fabric RATE` puts a tc tbf of RATE on *each* of the head's twins (inside the sim's namespaces).
  Workers' links are not shaped: on Sparks every port is as fast as the head's, and here the limit must
  be the head's link, not the workers' (which share this machine's CPU for SSH crypto; see the note).
- Model: MODEL_MIB of generated safetensors (8 sparse shards; the wire carries every byte). Fan-out is
  `models sync --method fanout` (rsync from the head to every worker at once, one twin); relay is
  `models sync` (default). Each worker's copy is removed before each run; times are wall times of the
  whole command (preflight, copy, verify).
- Image: an IMAGE_MIB image of random data built on the head (docker import). Fan-out is `docker save |
  ssh worker docker load` to every worker at once (over twin 1, as before); relay is the start's image step
  (save once, relay, docker load on each worker, IDs checked). `docker rmi` on the workers between runs.
  The relay's phases (save, relay, load) are timed apart: here the workers' loads share 2 cores and a disk.
- Twins: the relay's 1-worker model time against `ssh worker 'cat > file' < shard` of the same bytes over
  twin 1 (one stream), both through the shaped link.
SSH_BULK_CIPHER=CIPHER for both methods alike (every copy is a bulk ssh call; AES-GCM is the cheapest here).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "perf"))
from model_sync import bench_cluster, link_mb_s, write_model  # noqa: E402

PY = str(Path(sys.executable))
EXE = str(Path(sys.executable).parent / "sparkhelpers")
IMAGE = "perfdist/image:1"
REPO = "perf/dist"

IMAGE_DRIVER = """
import json, sys, time
from sparkhelpers.relay.image import ImageNode, distribute_image
from sparkhelpers.runner import Host, LOCAL, Runner
from sparkhelpers.topology import topology
from sparkhelpers.config import load_config
image, image_id, method, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
topo = topology(load_config())
nodes = [ImageNode(n.name, n.host, tuple(Host(ip, user=n.host.user, key=n.host.key, options=n.host.options)
                                        for ip in n.twin_ips), "/raid/hf-cache") for n in topo.workers[:count]]
t0 = time.monotonic()
marks = {}  # when each phase began: the save's script, the relay's first line, the first load's script

def say(m):
    marks.setdefault("relay", time.monotonic())
    print(m, file=sys.stderr)

def record(script):
    marks.setdefault("load" if "load the relayed image" in script else "save", time.monotonic())

failed = distribute_image(Runner(), image, image_id, LOCAL, "/raid/hf-cache", nodes, method=method,
                          say=say, warn=lambda m: print(m, file=sys.stderr), record=record)
end = time.monotonic()
phases = {}
if method == "relay" and len(marks) == 3:
    phases = {"save": marks["relay"] - marks["save"], "relay": marks["load"] - marks["relay"],
              "load": end - marks["load"]}
print(json.dumps({"seconds": end - t0, "failed": failed, "phases": phases}))
"""


def make_image(cluster, mib: int) -> str:  # noqa: ANN001
    script = (f"set -e; d=$(mktemp -d); head -c {mib}M /dev/urandom > $d/blob; tar -C $d -cf - . | "
              f"docker import - {IMAGE} >/dev/null; rm -rf $d; docker image inspect --format '{{{{.Id}}}}' {IMAGE}")
    return cluster.exec("spark1", script, timeout=600).check("building the test image").stdout.strip()


def timed(cluster, argv, env: dict, what: str, timeout: float = 3600) -> float:  # noqa: ANN001
    t0 = time.monotonic()
    r = cluster.exec("spark1", argv, env=env, timeout=timeout)
    if not r.ok:
        raise SystemExit(f"{what} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return time.monotonic() - t0


def model_runs(cluster, env: dict, counts: list[int]) -> dict:  # noqa: ANN001
    out = {}
    for method in ("fanout", "relay"):
        for n in counts:
            for w in cluster.workers:
                shutil.rmtree(cluster.node_dir(w.name) / "raid" / "hf-cache" / "hub", ignore_errors=True)
            to = [a for w in cluster.workers[:n] for a in ("--to", w.mgmt_ip)]
            out[(method, n)] = timed(cluster, [EXE, "models", "sync", REPO, "--method", method, *to], env,
                                     f"models sync --method {method} to {n}")
            print(f"  model {method:<6} {n} worker(s): {out[(method, n)]:6.1f} s", flush=True)
    return out


def image_runs(cluster, env: dict, image_id: str, counts: list[int]) -> dict:  # noqa: ANN001
    out = {}
    for method in ("fanout", "relay"):
        for n in counts:
            for w in cluster.workers:
                cluster.exec(w.name, f"docker rmi -f {IMAGE} >/dev/null 2>&1; true", timeout=300)
            t0 = time.monotonic()
            r = cluster.exec("spark1", [PY, "-c", IMAGE_DRIVER, IMAGE, image_id, method, str(n)], env=env,
                             timeout=3600)
            done = json.loads(r.stdout.strip().splitlines()[-1]) if r.ok else {}
            if not r.ok or done["failed"]:
                raise SystemExit(f"image {method} to {n} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
            out[(method, n)] = time.monotonic() - t0
            if done.get("phases"):
                out[("phases", n)] = done["phases"]
            parts = " (" + ", ".join(f"{k} {v:.1f}" for k, v in done["phases"].items()) + ")" \
                if done.get("phases") else ""
            print(f"  image {method:<6} {n} worker(s): {out[(method, n)]:6.1f} s{parts}", flush=True)
    return out


def image_phases(image: dict, counts: list[int]) -> None:
    """The relay's phases, and what they make on machines of their own: there every worker's docker load
    runs on its own CPU and disk, so the N-worker time would be save + relay(N) + load(1)."""
    got = [(n, image[("phases", n)]) for n in counts if ("phases", n) in image]
    if len(got) < 2:
        return
    for n, p in got:
        print(f"image relay phases, {n} worker(s): save+probe {p['save']:.1f} s, relay {p['relay']:.1f} s, "
              f"docker load (all at once) {p['load']:.1f} s")
    (n1, one), (nn, last) = got[0], got[-1]
    alone = one["save"] + one["relay"] + one["load"]
    apart = last["save"] + last["relay"] + one["load"]
    print(f"  relay phase {nn}/{n1}: {last['relay'] / one['relay']:.2f}x; load phase {nn}/{n1}: "
          f"{last['load'] / one['load']:.2f}x (the loads share this machine's cores and disk)")
    print(f"  derived, not measured: with each load on its own machine, {nn}/{n1} = "
          f"{apart / alone:.2f}x ({apart:.1f} / {alone:.1f} s)")


def raw_copy(cluster, model: Path, cipher: str) -> float:  # noqa: ANN001
    """Every shard, back to back, through one ssh stream over twin 1 (one TCP connection, one handshake)."""
    head = cluster.node_dir("spark1") / "raid" / "hf-cache"
    worker = cluster.workers[0]
    shards = " ".join("/raid/hf-cache/" + str(p.relative_to(head))
                      for p in sorted((model / "blobs").iterdir()) if p.name.startswith("shard"))
    t0 = time.monotonic()
    cluster.exec("spark1", f"cat {shards} | ssh -c {cipher} -o BatchMode=yes -i /root/.ssh/id_ed25519 "
                           f"root@{worker.fabric_ip} 'cat > /raid/raw.bin'", timeout=3600).check("raw copy")
    seconds = time.monotonic() - t0
    cluster.exec(worker.name, "rm -f /raid/raw.bin")
    return seconds


def report(args, model: dict, image: dict, raw_s: float, counts: list[int]) -> None:  # noqa: ANN001
    print(f"\nhead's two fabric twins shaped to {args.rate} each (tc tbf); cipher {args.cipher}; "
          f"model {args.model_mib} MiB, image {args.image_mib} MiB; wall seconds of the whole command")
    print(f"{'':18}" + "".join(f"{n} worker(s)".rjust(13) for n in counts) + f"{'N/1 at ' + str(counts[-1]):>12}")
    for label, data in (("model", model), ("image", image)):
        for method in ("fanout", "relay"):
            row = [data[(method, n)] for n in counts]
            print(f"{label + ' ' + method:<18}" + "".join(f"{v:13.1f}" for v in row) + f"{row[-1] / row[0]:12.2f}x")
    mb = args.model_mib * (1 << 20) / 1e6
    one = model[("relay", counts[0])]
    print(f"twins: relay to 1 worker (both twins) {one:.1f} s = {mb / one:.1f} MB/s; raw single stream over "
          f"twin 1 {raw_s:.1f} s = {mb / raw_s:.1f} MB/s; ratio {raw_s / one:.2f}x (aim >= 1.7x)")
    image_phases(image, counts)
    link = link_mb_s(args.rate)
    if link:
        print(f"link: {link:.1f} MB/s per twin; the raw copy reached {mb / raw_s / link:.0%} of it")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", default="100mbit", help="tc rate of each of the head's fabric twins")
    ap.add_argument("--model-mib", type=int, default=1024)
    ap.add_argument("--image-mib", type=int, default=256)
    ap.add_argument("--workers", default="1,2,3", help="worker counts to measure (max 3)")
    ap.add_argument("--cipher", default="aes128-gcm@openssh.com")
    ap.add_argument("--skip-image", action="store_true")
    ap.add_argument("--skip-model", action="store_true", help="the image runs only (no model or raw copy)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("perf/distribution.py: needs root (the emulated cluster); fix: run it as root")
    from sparkhelpers.sim import faults

    counts = [int(x) for x in args.workers.split(",")]
    t_all = time.monotonic()
    with bench_cluster("dist", 4) as cluster:
        faults.inject(cluster, "spark1", "slow-fabric", args.rate)
        env = {"SPARK_CONFIG": cluster.profile, "SPARK_HOME": str(ROOT), "SSH_BULK_CIPHER": args.cipher}
        model = write_model(cluster.node_dir("spark1") / "raid" / "hf-cache", REPO,
                            args.model_mib * (1 << 20) // 8, 8, sparse=True)
        print(f"4-node emulated cluster {cluster.name}; head twins at {args.rate}; measuring", flush=True)
        if args.skip_model:
            models, raw_s = {(m, n): float("nan") for m in ("fanout", "relay") for n in counts}, float("nan")
        else:
            models = model_runs(cluster, env, counts)
            raw_s = raw_copy(cluster, model, args.cipher)
            print(f"  raw single stream over twin 1: {raw_s:6.1f} s", flush=True)
        if args.skip_image:
            images = {k: float("nan") for k in models}
        else:
            images = image_runs(cluster, env, make_image(cluster, args.image_mib), counts)
        report(args, models, images, raw_s, counts)
        print(f"(whole benchmark: {time.monotonic() - t_all:.0f} s; load average {os.getloadavg()[0]:.1f})")

if __name__ == "__main__":
    main()
