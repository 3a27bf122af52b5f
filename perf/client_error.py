#!/usr/bin/env python3
"""How wrong is our benchmark client? Measured vs true TTFT and TPOT against perf/truth_server.py.

Usage: perf/client_error.py [--levels 1,4,16,64] [--ttft-ms 200] [--itl-ms 20] [--tokens 128]
                             [--no-llama-benchy] [--port 8199]

Starts the ground-truth server (known TTFT, one token every ITL ms, deadlines absolute from arrival) on
127.0.0.1, pinned to the last CPU, runs `sparkhelpers bench run`'s client in this process pinned to CPU 0 at
each concurrency (warm-up at the target concurrency first), and prints measured vs true figures side by side.
When llama-benchy can be installed (PyPI) it is installed into perf/.venv-benchy (not a project
dependency) and run against the same server with a local word-level tokenizer and the server's own
/book.txt, so nothing is fetched from outside.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from sparkhelpers.bench.run import RunOptions, execute  # noqa: E402

BENCHY_VENV = HERE / ".venv-benchy"
TOKENIZER_SNIPPET = """
import sys
from tokenizers import Tokenizer, models, pre_tokenizers
vocab = {f"w{i}": i for i in range(997)}
vocab.update({".": 997, "[UNK]": 998})
tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
tok.pre_tokenizer = pre_tokenizers.Whitespace()
tok.save(sys.argv[1])
"""
# Run llama-benchy in-process so an API key would never be on a command line (none is needed here).
BENCHY_SNIPPET = "import sys; from llama_benchy.__main__ import main; sys.argv[0] = 'llama-benchy'; main()"


def start_server(port: int, ttft_ms: float, itl_ms: float, cpu: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, str(HERE / "truth_server.py"), "--port", str(port), "--ttft-ms",
                             str(ttft_ms), "--itl-ms", str(itl_ms), "--cpu", str(cpu)])
    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=1).read()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    sys.exit("truth server did not start")


def server_stats(port: int, reset: bool = False) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/{'reset' if reset else 'stats'}",
                                 method="POST" if reset else "GET")
    return json.loads(urllib.request.urlopen(req, timeout=5).read())


def ensure_benchy() -> Path | None:
    py = BENCHY_VENV / "bin" / "python"
    if py.exists():
        return py
    probe = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "llama-benchy"],
                           capture_output=True, text=True)
    if "llama-benchy (" not in probe.stdout:
        print("llama-benchy is not on the package index here: skipping it", file=sys.stderr)
        return None
    print(f"installing llama-benchy into {BENCHY_VENV} (once) ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(BENCHY_VENV)], check=True)
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "llama-benchy"], capture_output=True, text=True)
    if r.returncode != 0:
        print(f"llama-benchy install failed: {r.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return py


def run_benchy(py: Path, port: int, levels: list[int], tokens: int, runs: int, workdir: Path) -> dict[int, dict]:
    tokenizer = workdir / "tokenizer.json"
    subprocess.run([str(py), "-c", TOKENIZER_SNIPPET, str(tokenizer)], check=True)
    out = workdir / "benchy.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "XDG_CACHE_HOME": str(workdir / "cache"),
           "HOME": str(workdir)}
    cmd = [str(py), "-c", BENCHY_SNIPPET, "--base-url", f"http://127.0.0.1:{port}/v1", "--model", "truth",
           "--tokenizer", str(tokenizer), "--pp", "512", "--tg", str(tokens), "--runs", str(runs),
           "--concurrency", *map(str, levels), "--book-url", f"http://127.0.0.1:{port}/book.txt",
           "--skip-coherence", "--no-adapt-prompt", "--save-result", str(out), "--format", "json"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if r.returncode != 0 or not out.exists():
        print(f"llama-benchy failed (exit {r.returncode}): {r.stderr.strip()[-400:]}", file=sys.stderr)
        return {}
    data = json.loads(out.read_text())
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "llama-benchy-truth.json").write_text(json.dumps(data, indent=2))
    by_c = {}
    for b in data.get("benchmarks", []):
        if b.get("is_context_prefill_phase"):
            continue
        by_c[b["concurrency"]] = {
            "ttfr": (b.get("ttfr") or {}).get("mean"), "e2e_ttft": (b.get("e2e_ttft") or {}).get("mean"),
            "tg_req": (b.get("tg_req_throughput") or b.get("tg_throughput") or {}).get("mean"),
        }
    return by_c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", default="1,4,16,64")
    ap.add_argument("--ttft-ms", type=float, default=200.0)
    ap.add_argument("--itl-ms", type=float, default=20.0)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--port", type=int, default=8199)
    ap.add_argument("--benchy-runs", type=int, default=3)
    ap.add_argument("--no-llama-benchy", action="store_true")
    ap.add_argument("--open-loop", default="", help="also Poisson arrivals at these rates (req/s), 16-token replies")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    ncpu = os.cpu_count() or 1
    server = start_server(args.port, args.ttft_ms, args.itl_ms, cpu=ncpu - 1)
    if ncpu > 1:
        os.sched_setaffinity(0, {0})
    true_tpot = args.itl_ms
    true_e2el = args.ttft_ms + (args.tokens - 1) * args.itl_ms
    rows = []
    try:
        for c in levels:
            server_stats(args.port, reset=True)
            n = {1: 8, 4: 16}.get(c, 2 * c)
            opts = RunOptions(base_url=f"http://127.0.0.1:{args.port}", model="truth", random_input_len=512,
                              random_output_len=args.tokens, num_prompts=n, max_concurrency=c, num_warmups=c)
            doc, _ = execute(opts)
            srv = server_stats(args.port)
            rows.append((c, doc, srv))
        open_rows = []
        for rate in [float(x) for x in args.open_loop.split(",") if x]:
            opts = RunOptions(base_url=f"http://127.0.0.1:{args.port}", model="truth", random_input_len=64,
                              random_output_len=16, num_prompts=int(rate * 5), request_rate=rate, num_warmups=8)
            doc, _ = execute(opts)
            open_rows.append((rate, doc))
        benchy = {}
        if not args.no_llama_benchy:
            py = ensure_benchy()
            if py:
                with tempfile.TemporaryDirectory() as tmp:
                    benchy = run_benchy(py, args.port, levels, args.tokens, args.benchy_runs, Path(tmp))
    finally:
        server.terminate()
        server.wait(timeout=10)

    print(f"truth: TTFT {args.ttft_ms:g} ms, TPOT = ITL {args.itl_ms:g} ms, E2EL {true_e2el:g} ms, "
          f"{args.tokens} tokens; {ncpu} CPUs (server pinned to CPU {ncpu - 1}, client to CPU 0)")
    head = (f"{'c':>3} | {'TTFT mean':>9} {'p99':>7} {'err ms':>7} {'err %':>6} | {'TPOT':>6} {'err %':>6} | "
            f"{'E2EL':>7} | {'out tok/s':>9} {'truth':>6} | {'cpu %':>5} {'loop p99':>8} | {'srv late p99':>12} "
            f"| valid")
    if benchy:
        head += f" || {'benchy e2e_ttft':>15} {'err ms':>7} {'ttfr':>7} {'tg t/s/req':>10} {'err %':>6}"
    print(head)
    print("-" * len(head))
    for c, d, srv in rows:
        ttft, tpot = d["mean_ttft_ms"], d["mean_tpot_ms"]
        truth_tput = c * args.tokens * 1000.0 / true_e2el  # closed loop, zero gap between requests
        line = (f"{c:>3} | {ttft:>9.1f} {d['p99_ttft_ms']:>7.1f} {ttft - args.ttft_ms:>+7.1f} "
                f"{100 * (ttft - args.ttft_ms) / args.ttft_ms:>+6.1f} | {tpot:>6.2f} "
                f"{100 * (tpot - true_tpot) / true_tpot:>+6.2f} | {d['mean_e2el_ms']:>7.0f} | "
                f"{d['output_throughput']:>9.0f} {truth_tput:>6.0f} | {d['extra']['client']['cpu_pct']:>5.0f} "
                f"{d['extra']['client']['event_loop_lag_p99_ms']:>8.1f} | {srv['late_p99_ms']:>12.1f} | "
                f"{'yes' if d['run']['valid'] else 'NO: ' + '; '.join(d['run']['invalid_reasons'])}")
        b = benchy.get(c)
        if b and b["e2e_ttft"] is not None:
            tg = b["tg_req"] or 0.0
            true_tg = 1000.0 / args.itl_ms
            line += (f" || {b['e2e_ttft']:>15.1f} {b['e2e_ttft'] - args.ttft_ms:>+7.1f} {b['ttfr'] or 0:>7.1f} "
                     f"{tg:>10.2f} {100 * (tg - true_tg) / true_tg:>+6.2f}")
        print(line)

    if open_rows:
        print(f"\nopen loop (Poisson), 16-token replies, 5 s per rate: truth TTFT {args.ttft_ms:g} ms")
        print(f"{'rate':>6} | {'achieved req/s':>14} | {'dispatch lag p99':>16} | {'TTFT bias mean':>14} "
              f"{'p99':>7} | {'cpu %':>5} | valid")
        for rate, d in open_rows:
            c = d["extra"]["client"]
            verdict = "yes" if d["run"]["valid"] else "NO: " + "; ".join(d["run"]["invalid_reasons"])
            print(f"{rate:>6g} | {d['request_throughput']:>14.1f} | {c['dispatch_lag_p99_ms']:>13.1f} ms | "
                  f"{d['mean_ttft_ms'] - args.ttft_ms:>+11.1f} ms {d['p99_ttft_ms'] - args.ttft_ms:>+7.1f} | "
                  f"{c['cpu_pct']:>5.0f} | {verdict}")


if __name__ == "__main__":
    main()
