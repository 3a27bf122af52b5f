"""`vllm` stand-in (test infrastructure): `vllm serve MODEL [flags]` and `vllm --version`.

Parses the flags against the flag set of the emulated vLLM version (../flags/vllm-VERSION.json,
generated from the real vLLM parser; the version is the image's SPARKSIM_VLLM_VERSION; unknown flag
or bad value: exit 2, like argparse), checks what vLLM checks before serving (model in the HF cache
when offline; tensor x pipeline parallel size against the GPUs of the real Ray cluster, or the ranks
of a --nnodes launch meeting at --master-addr:--master-port), then serves SmolLM2 via xllamacpp under
the served model name, with the tuning levers mapped onto llama.cpp (levers.py). Engine faults
(crash-load, hang-load, crash-after N) come from common.fault().
On the Ray backend it claims its GPUs through the real Ray as vLLM does: a placement group of one GPU
bundle per rank and a worker actor on each. Like real vLLM (native multi-node and Ray), rank 0 keeps
answering /health 200 after a rank is lost; the next request fails with HTTP 500, then /health
answers 503 and the server exits.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import sys
import threading
import time
from pathlib import Path

from sparksim_engine import levers
from sparksim_engine.common import MODEL_FILE, fault, keepalive, local_ipv4, log, model_snapshot

FLAGS_DIR = Path(os.environ.get("SPARKSIM_VLLM_FLAGS_DIR", str(Path(__file__).resolve().parent.parent / "flags")))
DEFAULT_VERSION = "0.19.0"
RENDEZVOUS_TIMEOUT_S = float(os.environ.get("SPARKSIM_RENDEZVOUS_TIMEOUT_S", "600"))
GPUS_PER_NODE = 1  # a DGX Spark has one GB10
RAY_TMP = Path(os.environ.get("SPARKSIM_RAY_TMP", "/tmp/ray"))  # Ray's default temp dir
PG_WAIT_TIMEOUT_S = float(os.environ.get("SPARKSIM_PG_WAIT_TIMEOUT_S", "1800"))  # vLLM's PG_WAIT_TIMEOUT
RAY_PING_TIMEOUT_S = 30.0


def emulated_version() -> str:
    return os.environ.get("SPARKSIM_VLLM_VERSION") or DEFAULT_VERSION


def load_flags(version: str | None = None) -> dict:
    version = version or emulated_version()
    path = Path(os.environ["SPARKSIM_VLLM_FLAGS"]) if os.environ.get("SPARKSIM_VLLM_FLAGS") else \
        FLAGS_DIR / f"vllm-{version}.json"
    try:
        return json.loads(path.read_text())
    except OSError:
        have = sorted(p.stem.removeprefix("vllm-") for p in FLAGS_DIR.glob("vllm-*.json"))
        print(f"sparksim vllm: no flag set for vLLM {version} (have: {', '.join(have)})", file=sys.stderr)
        raise SystemExit(2) from None


def _size(text: str) -> str:
    if not re.fullmatch(r"-?\d+(\.\d+)?[kKmMgGtT]?", text):
        raise argparse.ArgumentTypeError(f"invalid size value: {text!r}")
    return text


def _json(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        if "=" in text or "." in text:  # vLLM also accepts key=value / dotted forms for some configs
            return text
        raise argparse.ArgumentTypeError(f"invalid JSON: {text!r}") from None


def _with_extra(conv, extra: list[str]):  # noqa: ANN001, ANN202
    def convert(text: str) -> object:
        return text if text in extra else conv(text)
    convert.__name__ = getattr(conv, "__name__", "value")
    return convert


def build_parser(spec: dict) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vllm serve", usage="vllm serve [model_tag] [options]", allow_abbrev=False)
    p.add_argument("model_tag", nargs="?")
    types = {"str": str, "int": int, "float": float, "json": _json, "size": _size}
    for flag, meta in spec["flags"].items():
        names = [flag, *meta.get("aliases", [])]
        dest = meta.get("dest") or flag.lstrip("-").replace("-", "_")
        kind = meta["type"]
        if kind == "store_true":
            p.add_argument(*names, dest=dest, action="store_true")
        elif kind == "bool_optional":
            p.add_argument(*names, dest=dest, action=argparse.BooleanOptionalAction, default=None)
        elif kind == "choice":
            p.add_argument(*names, dest=dest, choices=meta["choices"], nargs=meta.get("nargs"))
        elif kind == "list":
            p.add_argument(*names, dest=dest, nargs="+")
        else:
            conv = _with_extra(types[kind], meta["also"]) if meta.get("also") else types[kind]
            p.add_argument(*names, dest=dest, type=conv, nargs="?" if meta.get("optional_value") else None)
    return p


def normalize(argv: list[str], spec: dict) -> list[str]:
    """What vLLM's FlexibleArgumentParser does first: ``--max_model_len`` is ``--max-model-len``,
    ``--compilation-config.mode 3`` sets one key of a config-valued flag, ``-O3`` is the compilation mode."""
    out: list[str] = []
    flags = spec["flags"]
    bare = ("store_true", "bool_optional")
    it = iter(argv)
    for arg in it:
        if arg.startswith("-O") and not arg.startswith("--") and "--compilation-config" in flags:
            level = arg[2:].lstrip("=") or next(it, "")
            out += ["--compilation-config", json.dumps({"mode": int(level)}) if level.isdigit() else level]
            continue
        if arg.startswith("--") and len(arg) > 2:
            name, eq, value = arg.partition("=")
            name = "--" + name[2:].replace("_", "-")
            base, dot, key = name.partition(".")
            if dot and base in flags and flags[base]["type"] not in bare:
                out.append(base)
                out.append(f"{key}={value if eq else next(it, '')}")
                continue
            arg = name + eq + value
        out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    version = emulated_version()
    spec = load_flags(version)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: vllm [-h] [-v] {serve} ...\n(sparksim test stand-in; only `serve` is emulated)")
        return 0
    if argv[0] in ("-v", "--version"):
        print(version)
        return 0
    if argv[0] != "serve":
        print(f"vllm: error: argument subparser: invalid choice: '{argv[0]}' (sparksim emulates only 'serve')",
              file=sys.stderr)
        return 2
    args = build_parser(spec).parse_args(normalize(argv[1:], spec))  # exits 2 on unknown flags or bad values
    model = args.model_tag or args.model
    if not model:
        print("vllm serve: error: the model is required (positional MODEL or --model)", file=sys.stderr)
        return 2
    return serve(args, model, version)


def serve(args: argparse.Namespace, model: str, version: str) -> int:
    log("INFO", "Automatically detected platform cuda.")
    log("INFO", f"vLLM API server version {version}")
    given = {k: v for k, v in vars(args).items() if v not in (None, False) and k != "api_key"}
    log("INFO", f"non-default args: {given}")
    log("INFO", "sparksim engine (test infrastructure): real generation by SmolLM2-135M via xllamacpp")
    offline = os.environ.get("HF_HUB_OFFLINE", "") in ("1", "true", "True", "YES", "yes")
    if model_snapshot(model) is None:
        if offline:  # what huggingface_hub raises inside vLLM's config lookup (real vLLM: rc 1 after ~13 s)
            log("ERROR", "huggingface_hub.errors.LocalEntryNotFoundError: Cannot find an appropriate cached "
                         "snapshot folder for the specified revision on the local disk and outgoing traffic has "
                         "been disabled. To enable repo look-ups and downloads online, pass "
                         f"'local_files_only=False' as input. (model {model}: no models--"
                         f"{model.replace('/', '--')} snapshot in the Hugging Face cache)")
            return 1
        log("ERROR", f"OSError: {model} is not in the Hugging Face cache and the emulated cluster cannot download "
                     "(no internet in the sim). Put it under $HF_CACHE/hub first.")
        return 1
    try:
        lv = levers.from_vllm(args)  # the scheduler/cache flags, checked as vLLM's config does, before any load
    except levers.LeverError as exc:
        log("ERROR", f"ValueError: {exc}")
        return 1
    tp = args.tensor_parallel_size or 1
    pp = args.pipeline_parallel_size or 1
    world = tp * pp
    kind, count = fault()
    holders: list = []
    if args.nnodes and args.nnodes > 1:
        rc = rendezvous(args, world, holders)
        if rc:
            return rc
        if args.headless or (args.node_rank or 0) > 0:
            log("INFO", f"Headless rank {args.node_rank} joined; serving no API (rank 0 does).")
            block_until_lost(holders)
            return 1
    elif world > GPUS_PER_NODE or args.distributed_executor_backend == "ray":
        rc = claim_ray_gpus(args, world, holders)
        if rc:
            return rc
    if world > 1:
        nccl_lines(world)
    log("INFO", f"Starting to load model {model}...")
    if kind == "crash-load":
        log("ERROR", "EngineCore failed to start: RuntimeError: sparksim fault: crash during model load")
        return 1
    if kind == "hang-load":
        log("INFO", "Loading safetensors checkpoint shards:   0% Completed | 0/4 [00:00<?, ?it/s]")
        while True:
            time.sleep(3600)
    from sparksim_engine.backend import Backend
    from sparksim_engine.backend import serve as http_serve

    t0 = time.monotonic()
    if lv.spec_ignored:
        log("WARNING", f"sparksim: speculative method {lv.spec_ignored!r} is accepted but not emulated (no draft "
                       "model in the sim); only 'ngram' changes decoding here")
    log("INFO", f"sparksim levers: {lv.describe()}")
    backend = Backend(str(MODEL_FILE), threads=1, levers=lv)
    log("INFO", f"Loading weights took {time.monotonic() - t0:.2f} seconds")
    util = args.gpu_memory_utilization or 0.9
    log("INFO", f"Available KV cache memory: {util * 119.7 - 1.5:.2f} GiB")
    names = args.served_model_name or [model]
    host = args.host or "0.0.0.0"
    port = args.port or 8000
    api_key = (args.api_key or [os.environ.get("VLLM_API_KEY", "")])[0]
    lost = RankLost()  # set when a rank is gone; the next request then fails
    if holders:
        threading.Thread(target=watch_peers, args=(holders, lost), daemon=True).start()

    def ready() -> None:
        log("INFO", f"Starting vLLM API server 0 on http://{host}:{port}")
        print(f"INFO:     Started server process [{os.getpid()}]\nINFO:     Waiting for application startup.\n"
              "INFO:     Application startup complete.", file=sys.stderr, flush=True)

    try:
        http_serve(backend, host=host, port=port, served_names=names, flavor="vllm",
                   crash_after=count if kind == "crash-after" else 0, api_key=api_key,
                   max_model_len=lv.max_model_len, on_ready=ready, engine_lost=lost)
    except OSError as exc:
        log("ERROR", f"OSError: [Errno {exc.errno}] error while attempting to bind on address ('{host}', {port}): "
                     f"{exc.strerror}")
        return 1
    return 0


def ray_address() -> str | None:
    """The Ray cluster this container belongs to (what ``ray.init(address="auto")`` finds), or None."""
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    current = RAY_TMP / "ray_current_cluster"
    return current.read_text().strip().splitlines()[0] if current.is_file() else None


def claim_ray_gpus(args: argparse.Namespace, world: int, holders: list) -> int:
    """Ray backend, as vLLM does it with the real Ray: connect, check the cluster's GPUs, create a placement
    group of one GPU bundle per rank (the first on this node), start one worker actor on each bundle and
    hold them while we serve."""
    address = ray_address()
    if not address:
        if world > GPUS_PER_NODE:
            log("ERROR", f"ValueError: The number of required GPUs ({world}) exceeds the total number of available "
                         f"GPUs ({GPUS_PER_NODE}) in this node. If you meant a multi-node run, start Ray first "
                         "(ray start --head / --address) and use --distributed-executor-backend ray.")
            return 1
        return 0
    try:
        import ray
    except ImportError as exc:
        log("ERROR", f"ImportError: {exc}: Ray is not installed in this image (tools/real-ray.sh, sim build --force)")
        return 1
    log("INFO", f"Connecting to existing Ray cluster at address: {address}...")
    try:
        ray.init(address="auto", logging_level="ERROR", log_to_driver=False, namespace="vllm")
    except (ConnectionError, RuntimeError) as exc:
        log("ERROR", f"ConnectionError: {exc}")
        return 1
    here = ray.util.get_node_ip_address()
    total = ray.cluster_resources().get("GPU", 0)
    if world > total:
        log("ERROR", "ValueError: The number of required GPUs exceeds the total number of available GPUs in the "
                     f"placement group. (required {world}, the Ray cluster has {total:.0f})")
        return 1
    if _node_gpus(ray, here) < 1:
        log("ERROR", f"ValueError: Current node has no GPU available. current_node_resource={_node_gpus(ray, here)} "
                     "GPU. vLLM engine cannot start without GPU. Make sure you have at least 1 GPU available in "
                     "a node.")
        return 1
    workers = _place_workers(ray, world, here)
    if workers is None:
        return 1
    holders.append(("ray", address, world, workers))
    return 0


def _node_gpus(ray, ip: str) -> float:  # noqa: ANN001
    return sum(n["Resources"].get("GPU", 0) for n in ray.nodes() if n["Alive"] and n["NodeManagerAddress"] == ip)


def _place_workers(ray, world: int, here: str) -> list | None:  # noqa: ANN001
    """The placement group (waiting like vLLM, with a log line each doubling interval) and its actors."""
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    specs = [{"GPU": 1.0} for _ in range(world)]
    specs[0][f"node:{here}"] = 0.001  # the driver's node holds rank 0
    pg = placement_group(specs, strategy="PACK")
    t0, interval, ready = time.monotonic(), 10.0, pg.ready()
    while not ray.wait([ready], timeout=min(interval, max(PG_WAIT_TIMEOUT_S - (time.monotonic() - t0), 0.1)))[0]:
        if time.monotonic() - t0 >= PG_WAIT_TIMEOUT_S:
            log("ERROR", f"ValueError: Cannot provide a placement group of placement_group_specs={specs} within "
                         f"{PG_WAIT_TIMEOUT_S:.0f} seconds. See `ray status` and `ray list nodes` to make sure the "
                         "cluster has enough resources.")
            return None
        interval *= 2
        log("INFO", f"Waiting for creating a placement group of specs for {time.monotonic() - t0:.0f} seconds. "
                    f"specs={specs}. Check `ray status` and `ray list nodes` to see if you have enough resources.")
    wrapper = ray.remote(num_cpus=0, num_gpus=1, max_restarts=0)(RayWorkerWrapper)
    workers = [wrapper.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
        placement_group=pg, placement_group_bundle_index=i)).remote() for i in range(world)]
    where = ray.get([w.where.remote() for w in workers], timeout=PG_WAIT_TIMEOUT_S)
    log("INFO", f"Ray placement group of {world} GPU bundle(s) ready; workers on {[ip for ip, _gpu in where]} "
                f"(CUDA_VISIBLE_DEVICES {[gpu for _ip, gpu in where]})")
    return list(zip(workers, [ip for ip, _gpu in where], strict=True))


class RayWorkerWrapper:
    """One rank's Ray actor (vLLM's worker class name): it holds the bundle's GPU and answers pings."""

    def where(self) -> tuple[str, str]:
        import ray

        return ray.util.get_node_ip_address(), os.environ.get("CUDA_VISIBLE_DEVICES", "")

    def ping(self) -> bool:
        return True


def ray_rank_lost(workers: list) -> tuple[str, str]:
    """("", "") while every worker actor answers; else (what the Ray driver logs, the node) for the first lost."""
    import ray

    for actor, ip in workers:
        try:
            ray.get(actor.ping.remote(), timeout=RAY_PING_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            return (f"ray.exceptions.GetTimeoutError: the RayWorkerWrapper on {ip} did not answer within "
                    f"{RAY_PING_TIMEOUT_S:.0f} s"), ip
        except ray.exceptions.RayActorError as exc:
            first = (str(exc).strip().splitlines() or ["The actor died."])[0]
            return f"ray.exceptions.{type(exc).__name__}: {first} (RayWorkerWrapper on {ip})", ip
    return "", ""


def rendezvous(args: argparse.Namespace, world: int, holders: list) -> int:
    """--nnodes N: rank 0 listens on --master-addr:--master-port and waits for ranks 1..N-1."""
    nnodes, rank = args.nnodes, args.node_rank or 0
    addr, port = args.master_addr or "127.0.0.1", args.master_port or 29501
    if world > nnodes * GPUS_PER_NODE:
        log("ERROR", f"ValueError: World size ({world}) is larger than the number of available GPUs "
                     f"({nnodes * GPUS_PER_NODE}) across {nnodes} node(s).")
        return 1
    if not 0 <= rank < nnodes:
        log("ERROR", f"ValueError: node_rank {rank} is out of range for nnodes {nnodes}")
        return 1
    deadline = time.monotonic() + RENDEZVOUS_TIMEOUT_S
    if rank == 0:
        if addr not in local_ipv4() and addr != "0.0.0.0":
            log("ERROR", f"RuntimeError: master_addr {addr} is not an address of this node (rank 0 must own it)")
            return 1
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            srv.bind((addr, port))
        except OSError as exc:
            log("ERROR", f"RuntimeError: cannot listen on {addr}:{port}: {exc.strerror}")
            return 1
        srv.listen(16)
        ranks: dict[int, socket.socket] = {}
        log("INFO", f"Waiting for {nnodes - 1} node(s) to join at {addr}:{port}")
        while len(ranks) < nnodes - 1:
            srv.settimeout(max(deadline - time.monotonic(), 0.1))
            try:
                conn, peer = srv.accept()
            except OSError:
                log("ERROR", f"RuntimeError: timed out after {RENDEZVOUS_TIMEOUT_S:.0f}s waiting for ranks "
                             f"{sorted(set(range(1, nnodes)) - set(ranks))} at {addr}:{port}")
                return 1
            conn.settimeout(5)
            try:
                hello = json.loads(conn.makefile("rb").readline() or b"{}")
            except (OSError, ValueError):
                conn.close()
                continue
            r = int(hello.get("rank", -1))
            if r in ranks or not 0 < r < nnodes or hello.get("nnodes") != nnodes:
                log("WARNING", f"rejected a join from {peer[0]}: rank {r}, nnodes {hello.get('nnodes')}")
                conn.close()
                continue
            conn.settimeout(None)
            ranks[r] = keepalive(conn)
            log("INFO", f"node rank {r} joined from {peer[0]}")
        for conn in ranks.values():
            conn.sendall(b'{"go": true}\n')
        holders += [("rank", str(r), 1, c) for r, c in ranks.items()]
        return 0
    while True:
        try:
            conn = socket.create_connection((addr, port), timeout=3)
            break
        except OSError:
            if time.monotonic() > deadline:
                log("ERROR", f"RuntimeError: could not reach the master at {addr}:{port} within "
                             f"{RENDEZVOUS_TIMEOUT_S:.0f}s")
                return 1
            time.sleep(0.5)
    conn.sendall((json.dumps({"rank": rank, "nnodes": nnodes}) + "\n").encode())
    conn.settimeout(None)
    reply = conn.makefile("rb").readline()
    if not reply:
        log("ERROR", "RuntimeError: the master closed the rendezvous (rank rejected?)")
        return 1
    holders.append(("master", f"{addr}:{port}", 1, keepalive(conn)))
    return 0


def nccl_lines(world: int) -> None:
    if os.environ.get("NCCL_DEBUG", "").upper() not in ("INFO", "TRACE"):
        return
    hcas = [h for h in os.environ.get("NCCL_IB_HCA", "").lstrip("=^").split(",") if h]
    ib = Path("/dev/infiniband").is_dir() and hcas and os.environ.get("NCCL_IB_DISABLE", "0") != "1"
    host = socket.gethostname()
    if ib:
        used = " ".join(f"[{i}]{h.split(':')[0]}:1/RoCE" for i, h in enumerate(hcas))
        print(f"{host}:{os.getpid()}:{os.getpid()} [0] NCCL INFO NET/IB : Using {used} ; OOB "
              f"{os.environ.get('NCCL_SOCKET_IFNAME', 'eth0')}", file=sys.stderr)
        via = "NET/IB/0"
    else:
        print(f"{host}:{os.getpid()}:{os.getpid()} [0] NCCL INFO NET/Socket : Using "
              f"[0]{os.environ.get('NCCL_SOCKET_IFNAME', 'eth0')}", file=sys.stderr)
        via = "NET/Socket/0"
    print(f"{host}:{os.getpid()}:{os.getpid()} [0] NCCL INFO Channel 00/0 : 0[0] -> 1[0] [send] via {via}",
          file=sys.stderr, flush=True)


class RankLost(threading.Event):
    peer = ""  # which rank went away


def watch_peers(holders: list, lost: RankLost) -> None:
    """Notice a vanished NCCL/gloo peer or Ray worker. Like real vLLM, nothing happens at once: the API server
    keeps answering /health 200 until the next request reaches the broken engine (backend.serve)."""
    while not lost.is_set():
        time.sleep(2)
        for kind, what, _world, held in holders:
            why, peer = ray_rank_lost(held) if kind == "ray" else ("", what if peer_closed(held) else "")
            if why:  # the Ray driver logs the dead actor at once; the engine fails on its next step
                log("ERROR", why)
            if peer:
                lost.peer = peer
                lost.set()  # the error surfaces with the next request (RuntimeError from gloo/NCCL)
                break


def peer_closed(sock: socket.socket) -> bool:
    try:
        sock.setblocking(False)
        data = sock.recv(1, socket.MSG_PEEK)
        return data == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.setblocking(True)


def block_until_lost(holders: list) -> None:
    while True:
        time.sleep(1)
        for _kind, what, _world, sock in holders:
            if peer_closed(sock):
                log("ERROR", f"NCCL error: the master {what} went away; exiting")
                return


if __name__ == "__main__":
    sys.exit(main())
