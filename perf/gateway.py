#!/usr/bin/env python3
"""What does the gateway cost? TTFT and throughput direct vs through the gateway vs through LiteLLM, one run.

Usage: perf/gateway.py [--levels 1,16,64] [--ttft-ms 100] [--itl-ms 10] [--tokens 64] [--rounds 2]
                       [--no-litellm] [--no-floor] [--json FILE]

Starts `sparkhelpers gateway run` on 127.0.0.1 with one model, the ground-truth server (perf/truth_server.py:
known TTFT, one token every ITL ms; pinned to the last CPU), and, unless --no-litellm, the real LiteLLM proxy
1.82.6 (side venv from `make side-venvs`) with `gateway export --litellm --per-engine` (LiteLLM straight to the
same server, so each path is one hop). Unless --no-floor, two more paths show what the hop itself costs on this
host, whatever the proxy does: `hop` (perf/hop.py: bytes copied both ways on uvloop, nothing parsed) and `socat`
(a C byte copier, when socat is installed). The client (`sparkhelpers bench run`'s, pinned to CPU 0) runs each
concurrency level on each path, paths interleaved per round; figures are medians over rounds. Added TTFT is the
path's minus direct's, at p50 and p99; the throughput ratio is the path's output tok/s over direct's. The
proxy's own CPU (user and system, from /proc) is printed per request and per token, whatever the load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import yaml  # noqa: E402

from sparkhelpers.bench.run import RunOptions, execute  # noqa: E402
from sparkhelpers.gateway import keys  # noqa: E402

LITELLM = Path(os.environ.get("SIDE_VENV_ROOT", "/var/cache/sparkhelpers")) / "litellm-1.82.6" / "bin" / "litellm"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(url: str, proc: subprocess.Popen, timeout: float, headers: dict | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{url}: the process exited with {proc.returncode}")
        try:
            urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=2).read()
            return
        except OSError:
            time.sleep(0.3)
    sys.exit(f"{url} did not answer in {timeout:g} s")


def start_gateway(work: Path, args, cpu: int) -> tuple[subprocess.Popen, str, str, str]:  # noqa: ANN001
    state = work / "state"
    port, engine_port = free_port(), free_port()
    truth = [sys.executable, str(HERE / "truth_server.py"), "--port", "${PORT}", "--ttft-ms", str(args.ttft_ms),
             "--itl-ms", str(args.itl_ms), "--cpu", str(cpu)]
    models = work / "models.yaml"
    models.write_text(yaml.safe_dump({"listen": f"127.0.0.1:{port}", "start_port": engine_port, "models": {
        "truth": {"cmd": truth, "health": "/v1/models", "concurrency": 1024}}}))
    store = keys.Store(keys.db_path(state))
    _, key = store.create("perf")
    store.close()
    env = {**os.environ, "SPARK_STATE_DIR": str(state), "GATEWAY_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([sys.executable, "-m", "sparkhelpers", "gateway", "run", "--models", str(models)],
                            env=env, stdout=subprocess.DEVNULL, stderr=open(work / "gateway.log", "wb"))  # noqa: SIM115
    url = f"http://127.0.0.1:{port}"
    wait(url + "/health", proc, 30)
    return proc, url, key, f"http://127.0.0.1:{engine_port}"


def start_litellm(work: Path, models: Path, env: dict) -> tuple[subprocess.Popen, str]:
    config = work / "litellm.yaml"
    subprocess.run([sys.executable, "-m", "sparkhelpers", "gateway", "export", "--litellm", "--per-engine",
                    "--models", str(models), "--key-env", "SPARK_ENGINE_KEY", "-o", str(config)], env=env,
                   check=True, capture_output=True)
    port = free_port()
    lenv = {**os.environ, "SPARK_ENGINE_KEY": "unused", "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_MASTER_KEY": "sk-perf-litellm", "LITELLM_LOG": "ERROR", "DISABLE_ADMIN_UI": "True"}
    proc = subprocess.Popen([str(LITELLM), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
                             "--num_workers", "1"], env=lenv, cwd=work, stdout=subprocess.DEVNULL,
                            stderr=open(work / "litellm.log", "wb"))  # noqa: SIM115
    url = f"http://127.0.0.1:{port}"
    wait(url + "/health/liveliness", proc, 300)
    return proc, url


def start_floors(work: Path, direct_url: str, procs: list) -> dict[str, tuple[subprocess.Popen, str]]:
    """The bare hops (perf/hop.py, and socat when installed) in front of the same server; each process joins
    ``procs`` as it starts, so the caller ends it even when a later one fails."""
    direct_port = urllib.parse.urlsplit(direct_url).port
    cmds = {"hop": lambda p: [sys.executable, str(HERE / "hop.py"), str(p), str(direct_port)]}
    if shutil.which("socat"):
        cmds["socat"] = lambda p: ["socat", f"TCP-LISTEN:{p},bind=127.0.0.1,reuseaddr,fork,nodelay",
                                   f"TCP:127.0.0.1:{direct_port},nodelay"]
    else:
        print("socat is not installed: no C floor (fix: sudo apt-get install -y socat)", file=sys.stderr)
    floors = {}
    for name, cmd in cmds.items():
        port = free_port()
        proc = subprocess.Popen(cmd(port), stdout=subprocess.DEVNULL, stderr=open(work / f"{name}.log", "wb"))  # noqa: SIM115
        procs.append(proc)
        floors[name] = (proc, f"http://127.0.0.1:{port}")
        wait(floors[name][1] + "/v1/models", proc, 30)
    return floors


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process (the proxy's own work, whatever the load)."""
    if not pid:
        return 0.0, 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    # with the children it has reaped: socat forks one per connection, and they end with the level's connections
    return (int(fields[11]) + int(fields[13])) / tick, (int(fields[12]) + int(fields[14])) / tick


def measure(url: str, key: str, c: int, tokens: int, proxy_pid: int) -> dict:
    n = {1: 20}.get(c, 4 * c)
    opts = RunOptions(base_url=url, model="truth", random_input_len=64, random_output_len=tokens, num_prompts=n,
                      max_concurrency=c, num_warmups=min(c, 8))
    (u0, s0) = cpu_seconds(proxy_pid)
    doc, _ = execute(opts, api_key=key)
    (u1, s1) = cpu_seconds(proxy_pid)
    reqs = n + opts.num_warmups  # the CPU includes the warm-ups: per request and token over all of them
    per_req = 1000.0 * (u1 - u0 + s1 - s0) / reqs
    return {"p50": doc["median_ttft_ms"], "p99": doc["p99_ttft_ms"], "tput": doc["output_throughput"],
            "failed": doc["failed"], "valid": doc["run"]["valid"], "cpu": doc["extra"]["client"]["cpu_pct"],
            "proxy_cpu_ms_per_req": per_req, "proxy_user_us_per_token": 1e6 * (u1 - u0) / (reqs * tokens),
            "proxy_sys_us_per_token": 1e6 * (s1 - s0) / (reqs * tokens)}


def run(args) -> dict:  # noqa: ANN001
    ncpu = os.cpu_count() or 1
    results: dict[str, dict[int, list[dict]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        gw, gw_url, key, direct_url = start_gateway(work, args, cpu=ncpu - 1)
        procs = [gw]
        try:
            first = json.dumps({"model": "truth", "prompt": "x", "max_tokens": 1}).encode()
            urllib.request.urlopen(urllib.request.Request(  # the cold start, through the gateway (not measured)
                gw_url + "/v1/completions", data=first,
                headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"}), timeout=60).read()
            paths = {"direct": (direct_url, "", 0), "gateway": (gw_url, key, gw.pid)}
            if not args.no_floor:
                for name, (proc, url) in start_floors(work, direct_url, procs).items():
                    paths[name] = (url, "", proc.pid)
            if not args.no_litellm:
                if not LITELLM.exists():
                    sys.exit(f"{LITELLM} is missing (fix: make side-venvs, or pass --no-litellm)")
                env = {**os.environ, "SPARK_STATE_DIR": str(work / "state")}
                lproc, lurl = start_litellm(work, work / "models.yaml", env)
                procs.append(lproc)
                paths["litellm"] = (lurl, "sk-perf-litellm", lproc.pid)
            if ncpu > 1:
                os.sched_setaffinity(0, {0})
            for r in range(args.rounds):
                for c in args.levels:
                    for name, (url, k, pid) in paths.items():
                        print(f"round {r + 1}/{args.rounds} c={c} {name} ...", file=sys.stderr, flush=True)
                        results.setdefault(name, {}).setdefault(c, []).append(measure(url, k, c, args.tokens, pid))
        finally:
            for p in reversed(procs):
                p.terminate()
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
    return results


def med(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def report(results: dict, args) -> None:  # noqa: ANN001
    e2el = args.ttft_ms + (args.tokens - 1) * args.itl_ms
    print(f"truth server: TTFT {args.ttft_ms:g} ms, ITL {args.itl_ms:g} ms, {args.tokens} tokens (E2EL {e2el:g} ms); "
          f"{args.rounds} round(s), medians; {os.cpu_count()} CPUs, client on CPU 0, server on the last; "
          f"load average {os.getloadavg()[0]:.1f}")
    head = (f"{'c':>3} {'path':<8} | {'TTFT p50':>8} {'p99':>7} | {'added p50':>9} {'p99':>7} | {'out tok/s':>9} "
            f"{'vs direct':>9} | {'failed':>6} {'client cpu%':>11} | {'proxy CPU ms/req':>16} {'us/token usr/sys':>16}")
    print(head)
    print("-" * len(head))
    for c in args.levels:
        base = results["direct"][c]
        for name in results:
            runs = results[name][c]
            p50, p99, tput = med(runs, "p50"), med(runs, "p99"), med(runs, "tput")
            added = "" if name == "direct" else f"{p50 - med(base, 'p50'):>+9.2f} {p99 - med(base, 'p99'):>+7.2f}"
            ratio = "" if name == "direct" else f"{100 * tput / med(base, 'tput'):>8.1f}%"
            print(f"{c:>3} {name:<8} | {p50:>8.2f} {p99:>7.2f} | {added:>17} | {tput:>9.0f} {ratio:>9} | "
                  f"{sum(r['failed'] for r in runs):>6} {med(runs, 'cpu'):>11.0f} | "
                  f"{med(runs, 'proxy_cpu_ms_per_req') if name != 'direct' else 0:>16.2f} "
                  f"{_per_token(runs) if name != 'direct' else '':>16}")


def _per_token(runs: list[dict]) -> str:
    return f"{med(runs, 'proxy_user_us_per_token'):.0f} / {med(runs, 'proxy_sys_us_per_token'):.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", default="1,16,64")
    ap.add_argument("--ttft-ms", type=float, default=100.0)
    ap.add_argument("--itl-ms", type=float, default=10.0)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-litellm", action="store_true")
    ap.add_argument("--no-floor", action="store_true", help="leave out the bare hops (perf/hop.py, socat)")
    ap.add_argument("--json", default="", help="also write the raw figures to this file")
    args = ap.parse_args()
    args.levels = [int(x) for x in args.levels.split(",")]
    results = run(args)
    report(results, args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
