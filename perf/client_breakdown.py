#!/usr/bin/env python3
"""Where does our client's TTFT error go? Per request, against perf/truth_server.py, on one clock.

Usage: perf/client_breakdown.py [--concurrency 128] [--tokens 128] [--ttft-ms 200] [--itl-ms 20] [--realtime]

Runs `sparkhelpers bench run`'s load generator in this process (pinned to CPU 0) against the truth server
(pinned to the last CPU). Both stamp with time.perf_counter (CLOCK_MONOTONIC, one clock on this machine),
so each measured request's TTFT splits into: send (our stamp -> the server read its first bytes: the
kernel, and the server's queue when many land at once), server (read -> first token written; its
lateness is that minus the truth) and delivery (first token written -> our timestamp). The same for the
last token (TPOT). Requests are matched by order: our sends sorted, the server's arrivals sorted (the
warm-ups, which come first, are dropped).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import client_error  # noqa: E402  (perf/client_error.py: the truth server's start)

from sparkhelpers.bench import client, run  # noqa: E402


def load(port: int, c: int, tokens: int) -> tuple[list, client.Health]:
    o = run.RunOptions(base_url=f"http://127.0.0.1:{port}", model="truth", random_input_len=512,
                       random_output_len=tokens, num_prompts=2 * c, max_concurrency=c, num_warmups=c,
                       engine_metrics=False, node_memory=False)
    o.validate()
    warm = run.make_prompts(run.RunOptions(**{**run.asdict(o), "seed": 7919, "num_prompts": 1}))
    spec = client.LoadSpec(o.base_url, "truth", **{**o.load_shape(), "ignore_eos": True})
    records, _, health = asyncio.run(client.run_load(spec, run.make_prompts(o), warmup_prompts=warm))
    return records, health


def breakdown(records: list, health: client.Health, served: list[dict], c: int, ttft_ms: float,
              itl_ms: float) -> dict:
    """Pure: the per-request split (means, ms) from our records and the server's, matched by order."""
    served = sorted(served, key=lambda s: s["arrival"])[c:]
    ours = sorted((r for r in records if r.success), key=lambda r: r.start)
    n = min(len(served), len(ours))
    mean = statistics.fmean
    sends = [(s["arrival"] - (health.origin + r.start)) * 1000 for r, s in zip(ours[:n], served[:n], strict=True)]
    server = [(s["first"] - s["arrival"]) * 1000 for s in served[:n]]
    ttft = [r.ttft * 1000 for r in ours[:n]]
    tpot_ours = [r.tpot() * 1000 for r in ours[:n] if r.output_tokens > 1]
    tpot_srv = [(s["last"] - s["first"]) * 1000 / (s["tokens"] - 1) for s in served[:n] if s["tokens"] > 1]
    return {"requests": n, "ttft_err_ms": mean(ttft) - ttft_ms, "send_ms": mean(sends),
            "server_late_ms": mean(server) - ttft_ms, "delivery_ms": mean(ttft) - mean(sends) - mean(server),
            "tpot_err_ms": mean(tpot_ours) - itl_ms, "tpot_server_late_ms": mean(tpot_srv) - itl_ms,
            "tpot_client_ms": mean(tpot_ours) - mean(tpot_srv), "cpu_pct": health.summary()["cpu_pct"],
            "send_lag_p99_ms": health.summary()["send_lag_p99_ms"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--ttft-ms", type=float, default=200.0)
    ap.add_argument("--itl-ms", type=float, default=20.0)
    ap.add_argument("--port", type=int, default=8198)
    ap.add_argument("--realtime", action="store_true", help="SCHED_FIFO for the server and this client (root)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    client_error.REALTIME[0] = args.realtime
    server = client_error.start_server(args.port, args.ttft_ms, args.itl_ms, cpu=(os.cpu_count() or 1) - 1)
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {0})
    if args.realtime:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    try:
        records, health = load(args.port, args.concurrency, args.tokens)
        served = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{args.port}/requests", timeout=10).read())
    finally:
        server.terminate()
        server.wait(timeout=10)
    b = breakdown(records, health, served, args.concurrency, args.ttft_ms, args.itl_ms)
    if args.json:
        print(json.dumps(b))
        return
    print(f"c={args.concurrency}, {b['requests']} requests, {args.tokens} tokens; client CPU {b['cpu_pct']}%, "
          f"send lag p99 {b['send_lag_p99_ms']} ms (POST called -> body on the socket; not in TTFT)")
    print(f"TTFT error {b['ttft_err_ms']:+.2f} ms = send {b['send_ms']:+.2f} (kernel + the server's read queue) "
          f"+ server {b['server_late_ms']:+.2f} + delivery {b['delivery_ms']:+.2f} (write -> our timestamp)")
    print(f"TPOT error {b['tpot_err_ms']:+.4f} ms = server {b['tpot_server_late_ms']:+.4f} "
          f"+ client {b['tpot_client_ms']:+.4f}")


if __name__ == "__main__":
    main()
