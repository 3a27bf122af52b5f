"""`ray` stand-in (test infrastructure): start --head / start --address / status / stop, --version.

The head runs a small GCS-like daemon on a real TCP port; a worker joins only if it can really
reach that address (its "raylet" keeps a connection and heartbeats). A node that stops heartbeating,
however it died, leaves `Active:` after DEAD_AFTER_S and its resources leave the totals after
RESOURCES_AFTER_S, as measured with real Ray 2.x here (16 s and 26 s). `ray status` prints the text
of the Ray version claimed (2.49: Total Usage / Total Constraints / Total Demands).
Wire format: one JSON object per line.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from pathlib import Path

from sparksim_engine.common import can_connect, keepalive, local_ipv4

VERSION = "2.49.2"
RAY_TMP = Path(os.environ.get("SPARKSIM_RAY_TMP", "/tmp/ray"))  # Ray's default temp dir
RUN_DIR = RAY_TMP / "sparksim"
CURRENT = RAY_TMP / "ray_current_cluster"
HEARTBEAT_S = 1.0
DEAD_AFTER_S = float(os.environ.get("SPARKSIM_RAY_DEAD_AFTER_S", "16"))
RESOURCES_AFTER_S = max(DEAD_AFTER_S, float(os.environ.get("SPARKSIM_RAY_RESOURCES_AFTER_S", "26")))
CONNECT_TIMEOUT_S = float(os.environ.get("SPARKSIM_RAY_CONNECT_TIMEOUT_S", "10"))


def send(sock_file, obj: dict) -> None:  # noqa: ANN001
    sock_file.write((json.dumps(obj) + "\n").encode())
    sock_file.flush()


def request(address: str, obj: dict, timeout: float = 5.0) -> dict:
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        f = s.makefile("rwb")
        send(f, obj)
        return json.loads(f.readline() or b"{}")


# ---- the GCS-like daemon on the head ----

class Gcs:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.nodes: dict[str, dict] = {}
        self.claims: dict[str, float] = {}

    def status(self) -> dict:
        """Active nodes (heartbeat within DEAD_AFTER_S) and the resources of every node still counted."""
        now = time.monotonic()
        with self.lock:
            for nid in [n for n, v in self.nodes.items() if now - v["seen"] > RESOURCES_AFTER_S and not v["head"]]:
                del self.nodes[nid]
            view = [{k: v for k, v in n.items() if k != "seen"}
                    | {"id": nid, "alive": n["head"] or now - n["seen"] <= DEAD_AFTER_S}
                    for nid, n in self.nodes.items()]
            used = sum(self.claims.values())
        return {"nodes": [n for n in view if n["alive"]], "counted": view, "gpus_used": used}


def run_gcs(port: int, head: dict, dashboard: tuple[str, int] | None) -> None:
    gcs = Gcs()
    gcs.nodes[head["id"]] = {**head, "seen": time.monotonic(), "head": True}

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            node_id = claim_id = None
            try:
                for raw in self.rfile:
                    msg = json.loads(raw)
                    op = msg.get("op")
                    if op == "register":
                        node_id = msg["node"]["id"]
                        with gcs.lock:
                            gcs.nodes[node_id] = {**msg["node"], "seen": time.monotonic(), "head": False}
                        send(self.wfile, {"ok": True})
                    elif op == "heartbeat" and node_id:
                        with gcs.lock:
                            if node_id in gcs.nodes:
                                gcs.nodes[node_id]["seen"] = time.monotonic()
                    elif op == "status":
                        send(self.wfile, gcs.status())
                    elif op == "claim":  # a vLLM placement group: held while the connection lives
                        st = gcs.status()
                        total = sum(n["gpus"] for n in st["nodes"])  # only live nodes take new bundles
                        if total - st["gpus_used"] >= msg["gpus"]:
                            claim_id = secrets.token_hex(4)
                            with gcs.lock:
                                gcs.claims[claim_id] = msg["gpus"]
                            send(self.wfile, {"ok": True, "total": total})
                        else:
                            send(self.wfile, {"ok": False, "total": total, "used": st["gpus_used"]})
            except (OSError, ValueError):
                pass
            finally:  # a node whose connection drops is not forgotten at once: its heartbeats stop
                with gcs.lock:
                    if claim_id:
                        gcs.claims.pop(claim_id, None)

    class Server(socketserver.ThreadingTCPServer):
        allow_reuse_address = True
        daemon_threads = True

    server = Server(("0.0.0.0", port), Handler)
    if dashboard:
        threading.Thread(target=run_dashboard, args=(dashboard,), daemon=True).start()
    server.serve_forever()


def run_dashboard(addr: tuple[str, int]) -> None:
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class H(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            raw = json.dumps({"ray_version": VERSION, "version": "4"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *args) -> None:  # noqa: ANN002
            pass

    try:
        HTTPServer(addr, H).serve_forever()
    except OSError as exc:
        print(f"sparksim ray: dashboard not started on {addr[0]}:{addr[1]}: {exc}", file=sys.stderr)


# ---- the worker's raylet: keeps the registration alive ----

def run_raylet(address: str, node: dict) -> None:
    host, port = address.rsplit(":", 1)
    sock = keepalive(socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S))
    sock.settimeout(DEAD_AFTER_S)
    f = sock.makefile("rwb")
    send(f, {"op": "register", "node": node})
    f.readline()
    while True:
        time.sleep(HEARTBEAT_S)
        try:
            send(f, {"op": "heartbeat"})
        except OSError:
            print("sparksim raylet: lost the connection to the GCS; exiting", file=sys.stderr)
            sys.exit(1)


# ---- CLI ----

def node_record(ip: str, args: argparse.Namespace) -> dict:
    return {"id": secrets.token_hex(28), "ip": ip, "hostname": socket.gethostname(),
            "gpus": float(1 if args.num_gpus is None else args.num_gpus),
            "cpus": float(args.num_cpus or os.cpu_count() or 1),
            "object_store_memory": int(args.object_store_memory or 2 * 1024**3)}


def spawn(kind: str, payload: dict) -> int:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    log = open(RUN_DIR / f"{kind}.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen([sys.executable, "-m", "sparksim_engine.ray_cli", f"__{kind}", json.dumps(payload)],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    (RUN_DIR / f"{kind}-{proc.pid}.pid").write_text(str(proc.pid))
    return proc.pid


def cmd_start(args: argparse.Namespace) -> int:
    ip = args.node_ip_address or socket.gethostbyname(socket.gethostname())
    if ip not in local_ipv4():
        print(f"ValueError: The node IP address {ip} is not an address of this machine "
              f"(--node-ip-address must be one of this node's IPs).", file=sys.stderr)
        return 1
    node = node_record(ip, args)
    if args.head:
        port = args.port or 6379
        if can_connect("127.0.0.1", port, 0.5):
            print(f"ConnectionError: Ray is already running at port {port}; run `ray stop` first.", file=sys.stderr)
            return 1
        dash = (args.dashboard_host, args.dashboard_port) if args.include_dashboard != "false" else None
        payload = {"port": port, "head": node, "dashboard": dash}
        CURRENT.parent.mkdir(parents=True, exist_ok=True)
        CURRENT.write_text(f"{ip}:{port}")
        if args.block:
            print_started(ip, port, head=True)
            return serve_blocking(lambda: run_gcs(port, node, tuple(dash) if dash else None))
        spawn("gcs", payload)
        for _ in range(100):
            if can_connect("127.0.0.1", port, 0.2):
                break
            time.sleep(0.05)
        print_started(ip, port, head=True)
        return 0
    if not args.address:
        print("ValueError: ray start needs --head or --address", file=sys.stderr)
        return 1
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    host, _, port_text = args.address.rpartition(":")
    while not can_connect(host, int(port_text), 1.0):
        if time.monotonic() > deadline:
            print(f"ConnectionError: Unable to connect to GCS at {args.address}. Check that (1) Ray GCS with "
                  "matching version started successfully at the specified address, and (2) there is no "
                  "firewall setting preventing access.", file=sys.stderr)
            return 1
        time.sleep(0.5)
    CURRENT.parent.mkdir(parents=True, exist_ok=True)
    CURRENT.write_text(args.address)
    if args.block:
        print_started(ip, 0, head=False)
        return serve_blocking(lambda: run_raylet(args.address, node))
    spawn("raylet", {"address": args.address, "node": node})
    time.sleep(0.3)
    print_started(ip, 0, head=False)
    return 0


def serve_blocking(target) -> int:  # noqa: ANN001
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    print("--block\nThis command will now block forever until terminated by a signal.", flush=True)
    target()
    return 0


def print_started(ip: str, port: int, head: bool) -> None:
    print(f"Local node IP: {ip}\n\n--------------------\nRay runtime started.\n--------------------\n")
    if head:
        print(f"Next steps\n  To add another node to this Ray cluster, run\n    ray start --address='{ip}:{port}'\n"
              "\n  To terminate the Ray runtime, run\n    ray stop", flush=True)
    else:
        print("To terminate the Ray runtime, run\n  ray stop", flush=True)


def current_address(arg: str | None) -> str | None:
    if arg and arg != "auto":
        return arg
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    return CURRENT.read_text().strip() if CURRENT.is_file() else None


def cluster_status(address: str | None) -> dict | None:
    if not address:
        return None
    try:
        return request(address, {"op": "status"})
    except OSError:
        return None


def cmd_status(args: argparse.Namespace) -> int:
    st = cluster_status(current_address(args.address))
    if st is None:
        print("ConnectionError: Could not find any running Ray instance. Please specify the one to connect to "
              "by setting `--address` flag or `RAY_ADDRESS` environment variable.", file=sys.stderr)
        return 1
    print(status_text(st))
    return 0


def status_text(st: dict) -> str:
    """`ray status` as Ray 2.49 prints it (resources of nodes not yet dropped still count)."""
    gib = 1024**3
    counted = st.get("counted", st["nodes"])
    cpus = sum(n["cpus"] for n in counted)
    gpus = sum(n["gpus"] for n in counted)
    store = sum(n["object_store_memory"] for n in counted) / gib
    dead = [n for n in counted if not n.get("alive", True)]
    lines = [f"======== Autoscaler status: {time.strftime('%Y-%m-%d %H:%M:%S')}.000000 ========",
             "Node status", "-" * 63, "Active:"]
    lines += [f" 1 node_{n['id']}" for n in st["nodes"]]
    lines += ["Pending:", " (no pending nodes)", "Recent failures:"]
    lines += [f" node_{n['id']}: NodeTerminated (ip: {n['ip']})" for n in dead] or [" (no failures)"]
    lines += ["", "Resources", "-" * 63, "Total Usage:", f" 0.0/{cpus:.1f} CPU",
              f" {st['gpus_used']:.1f}/{gpus:.1f} GPU", f" 0B/{store * 2:.2f}GiB memory",
              f" 0B/{store:.2f}GiB object_store_memory", "", "Total Constraints:",
              " (no request_resources() constraints)", "Total Demands:", " (no resource demands)"]
    return "\n".join(lines)


def cmd_stop(args: argparse.Namespace) -> int:
    stopped = 0
    for pid_file in sorted(RUN_DIR.glob("*.pid")) if RUN_DIR.is_dir() else []:
        try:
            os.kill(int(pid_file.read_text()), signal.SIGKILL if args.force else signal.SIGTERM)
            stopped += 1
        except (ProcessLookupError, ValueError):
            pass
        pid_file.unlink(missing_ok=True)
    CURRENT.unlink(missing_ok=True)
    print(f"Stopped all {stopped} Ray processes." if stopped else "Did not find any active Ray processes.")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ray")
    p.add_argument("--version", action="version", version=f"ray, version {VERSION}")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("start")
    s.add_argument("--head", action="store_true")
    s.add_argument("--address")
    s.add_argument("--port", type=int)
    s.add_argument("--node-ip-address")
    s.add_argument("--num-cpus", type=int)
    s.add_argument("--num-gpus", type=int)
    s.add_argument("--object-store-memory", type=int)
    s.add_argument("--memory", type=int)
    s.add_argument("--resources")
    s.add_argument("--dashboard-host", default="127.0.0.1")
    s.add_argument("--dashboard-port", type=int, default=8265)
    s.add_argument("--include-dashboard", default="true")
    s.add_argument("--disable-usage-stats", action="store_true")
    s.add_argument("--block", action="store_true")
    s.add_argument("--temp-dir")
    s.add_argument("--node-manager-port", type=int)
    s.add_argument("--object-manager-port", type=int)
    s.add_argument("--min-worker-port", type=int)
    s.add_argument("--max-worker-port", type=int)
    st = sub.add_parser("status")
    st.add_argument("--address")
    sp = sub.add_parser("stop")
    sp.add_argument("--force", "-f", action="store_true")
    sp.add_argument("--grace-period", type=int)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("__gcs", "__raylet"):
        payload = json.loads(argv[1])
        if argv[0] == "__gcs":
            run_gcs(payload["port"], payload["head"], tuple(payload["dashboard"]) if payload["dashboard"] else None)
        else:
            run_raylet(payload["address"], payload["node"])
        return 0
    args = parser().parse_args(argv)
    return {"start": cmd_start, "status": cmd_status, "stop": cmd_stop}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
