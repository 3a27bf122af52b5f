#!/usr/bin/env python3
"""How wrong is each benchmark client? Side by side against perf/truth_server.py, in one run.

Usage: perf/client_error.py [--levels 1,16,128] [--clients sparkhelpers,vllm,llama-benchy] [--tokens 128]
                            [--ttft-ms 200] [--itl-ms 20] [--requests-per-slot 2] [--vllm PATH] [--json FILE]
                            [--nice -10 | --realtime] [--open-loop 50,100,200]

Starts the ground-truth server (TTFT 200 ms, one token every 20 ms, deadlines absolute from arrival) on
127.0.0.1, pinned to the last CPU, then runs each client as its own process pinned to CPU 0, at each
concurrency (warm-up at that concurrency first, as each client does it):
- sparkhelpers: `sparkhelpers bench run` (this project's client);
- vllm: `vllm bench serve` (vLLM's own client; the real-vllm side venv, `--vllm PATH` or `vllm` on PATH);
- llama-benchy: the `make side-venvs` venv, else installed by name into perf/.venv-benchy.
For each it prints the mean and p50 TTFT error and the TPOT error against the truth, split into the
server's own lateness (the truth server records when it actually wrote each first and each token) and the
client's share (the rest), and the client's CPU during its load (sampled from /proc between the server's
first arrival and last write) and in total. A client that is not installed is skipped with the reason.
Nothing leaves 127.0.0.1; nothing is downloaded but llama-benchy's package.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHY_VENV = HERE / ".venv-benchy"
# `make side-venvs` builds this one (cached between CI runs); else llama-benchy installs into BENCHY_VENV.
BENCHY_SIDE_VENV = Path(os.environ.get("SIDE_VENV_ROOT", "/var/cache/sparkhelpers")) / "llama-benchy-0.4.0"
VLLM_SIDE_VENV = Path("/var/cache/sparkhelpers/real-vllm/vllm-0.32.0/bin/vllm")
CLIENTS = ("sparkhelpers", "vllm", "llama-benchy")
NICE = [0]  # --nice: the server's and each client's niceness increment (root may give a negative one)
REALTIME = [False]  # --realtime: SCHED_FIFO 1 for the server and each client (root; others keep 5% by the RT limit)


def _priority() -> None:
    """In the child before exec: the niceness, or real-time FIFO scheduling, asked for."""
    if NICE[0]:
        os.nice(NICE[0])
    if REALTIME[0]:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
TOKENIZER_SNIPPET = """
import sys
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
vocab = {f"w{i}": i for i in range(997)}
vocab.update({".": 997, "[UNK]": 998})
tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
tok.pre_tokenizer = pre_tokenizers.Whitespace()
tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces, so a decode re-encodes the same
tok.save(sys.argv[1])
"""
TOKENIZER_CONFIG = {"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "[UNK]", "model_max_length": 1 << 20}
# Run llama-benchy in-process so an API key would never be on a command line (none is needed here).
BENCHY_SNIPPET = "import sys; from llama_benchy.__main__ import main; sys.argv[0] = 'llama-benchy'; main()"


@dataclass
class Setup:
    port: int
    ttft_ms: float
    itl_ms: float
    tokens: int
    input_len: int
    workdir: Path
    per_slot: int = 2
    vllm: str = ""
    benchy_py: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def prompts(self, c: int) -> int:
        return max(4, self.per_slot * c) if c > 1 else 4 * self.per_slot


@dataclass
class Outcome:
    client: str
    concurrency: int
    ttft_mean_ms: float | None = None
    ttft_p50_ms: float | None = None
    tpot_mean_ms: float | None = None
    server: dict = field(default_factory=dict)
    cpu_load_pct: float | None = None
    cpu_total_s: float | None = None
    wall_s: float = 0.0
    error: str = ""


# ---- the server ----------------------------------------------------------------------------------

def start_server(port: int, ttft_ms: float, itl_ms: float, cpu: int) -> subprocess.Popen:
    """The truth server pinned to ``cpu`` (with --nice/--realtime), once it answers."""
    proc = subprocess.Popen([sys.executable, str(HERE / "truth_server.py"), "--port", str(port), "--ttft-ms",
                             str(ttft_ms), "--itl-ms", str(itl_ms), "--cpu", str(cpu)], preexec_fn=_priority)
    for _ in range(150):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=1).read()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    sys.exit("truth server did not start")


def server_call(s: Setup, path: str, post: bool = False) -> dict:
    req = urllib.request.Request(f"{s.url}/{path}", method="POST" if post else "GET")
    return json.loads(urllib.request.urlopen(req, timeout=10).read())


# ---- CPU of a client process ----------------------------------------------------------------------

class CpuSampler:
    """utime+stime of a process (all its threads) every 50 ms, with perf_counter timestamps."""

    def __init__(self, pid: int) -> None:
        self.pid, self.samples = pid, []
        self._tick = os.sysconf("SC_CLK_TCK")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def read(self) -> float | None:
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / self._tick

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            cpu = self.read()
            if cpu is not None:
                self.samples.append((time.perf_counter(), cpu))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


def cpu_in_window(samples: list[tuple[float, float]], start: float, end: float) -> float | None:
    """CPU % of one core between ``start`` and ``end`` (linear between samples)."""
    if end <= start or len(samples) < 2:
        return None

    def at(t: float) -> float:
        prev = samples[0]
        for cur in samples:
            if cur[0] >= t:
                if cur[0] == prev[0]:
                    return cur[1]
                return prev[1] + (cur[1] - prev[1]) * (t - prev[0]) / (cur[0] - prev[0])
            prev = cur
        return samples[-1][1]

    return 100.0 * (at(end) - at(start)) / (end - start)


def run_client(argv: list[str], env: dict | None = None, timeout: float = 1800) -> tuple[subprocess.CompletedProcess,
                                                                                         CpuSampler, float]:
    """Run a client pinned to CPU 0; its CPU is sampled while it runs."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: os.sched_setaffinity(0, {0}) or _priority())
    sampler = CpuSampler(proc.pid)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    final = sampler.read()
    sampler.stop()
    if final is not None:
        sampler.samples.append((time.perf_counter(), final))
    return subprocess.CompletedProcess(argv, proc.returncode, out, err), sampler, time.perf_counter() - t0


# ---- the clients ----------------------------------------------------------------------------------

def ours_argv(s: Setup, c: int) -> list[str]:
    exe = shutil.which("sparkhelpers", path=str(Path(sys.executable).parent)) or "sparkhelpers"
    return [exe, "bench", "run", "--base-url", s.url, "--model", "truth", "--backend", "openai",
            "--dataset-name", "random", "--random-input-len", str(s.input_len), "--random-output-len",
            str(s.tokens), "--num-prompts", str(s.prompts(c)), "--max-concurrency", str(c), "--num-warmups",
            str(c), "--no-engine-metrics", "--no-node-memory", "--disable-tqdm", "--json"]


def parse_ours(stdout: str, _s: Setup) -> tuple[float, float, float]:
    doc = json.loads(stdout)
    if doc.get("failed"):
        raise ValueError(f"{doc['failed']} request(s) failed")
    return doc["mean_ttft_ms"], doc["median_ttft_ms"], doc["mean_tpot_ms"]


def vllm_argv(s: Setup, c: int) -> list[str]:
    return [s.vllm, "bench", "serve", "--backend", "openai", "--base-url", s.url, "--endpoint", "/v1/completions",
            "--model", "truth", "--tokenizer", str(s.workdir / "tokenizer"), "--dataset-name", "random",
            "--random-input-len", str(s.input_len), "--random-output-len", str(s.tokens), "--num-prompts",
            str(s.prompts(c)), "--max-concurrency", str(c), "--num-warmups", str(c), "--ignore-eos",
            "--ready-check-timeout-sec", "0", "--disable-tqdm", "--percentile-metrics", "ttft,tpot,itl,e2el",
            "--metric-percentiles", "50,99", "--save-result", "--result-dir", str(s.workdir),
            "--result-filename", f"vllm-c{c}.json"]


def parse_vllm(_stdout: str, s: Setup, c: int) -> tuple[float, float, float]:
    doc = json.loads((s.workdir / f"vllm-c{c}.json").read_text())
    if doc.get("failed"):
        raise ValueError(f"{doc['failed']} request(s) failed")
    return doc["mean_ttft_ms"], doc["median_ttft_ms"], doc["mean_tpot_ms"]


def benchy_argv(s: Setup, c: int) -> list[str]:
    return [s.benchy_py, "-c", BENCHY_SNIPPET, "--base-url", f"{s.url}/v1", "--model", "truth", "--tokenizer",
            str(s.workdir / "tokenizer" / "tokenizer.json"), "--pp", str(s.input_len), "--tg", str(s.tokens),
            "--runs", str(max(1, s.prompts(c) // c)), "--concurrency", str(c), "--book-url", f"{s.url}/book.txt",
            "--skip-coherence", "--no-adapt-prompt", "--save-result", str(s.workdir / f"benchy-c{c}.json"),
            "--format", "json"]


def parse_benchy(_stdout: str, s: Setup, c: int) -> tuple[float, float | None, float]:
    """llama-benchy reports means per concurrency: e2e_ttft (to the first token) and per-request tokens/s."""
    data = json.loads((s.workdir / f"benchy-c{c}.json").read_text())
    rows = [b for b in data.get("benchmarks", []) if not b.get("is_context_prefill_phase")]
    if not rows:
        raise ValueError("no benchmark rows in llama-benchy's result")
    b = rows[-1]
    ttft = (b.get("e2e_ttft") or {}).get("mean")
    tg = (b.get("tg_req_throughput") or b.get("tg_throughput") or {}).get("mean")
    if ttft is None or not tg:
        raise ValueError(f"llama-benchy's result lacks e2e_ttft/tg means: {sorted(b)}")
    return ttft, (b.get("e2e_ttft") or {}).get("median"), 1000.0 / tg


def benchy_env(s: Setup) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "XDG_CACHE_HOME": str(s.workdir / "cache"), "HOME": str(s.workdir)}


def ours_env(s: Setup) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("API_KEY", "API_KEY_FILE")}
    cfg = s.workdir / "empty.env"
    cfg.touch()
    return {**env, "SPARK_CONFIG": str(cfg), "NO_COLOR": "1"}


def measure(name: str, s: Setup, c: int) -> Outcome:
    """One client at one concurrency: its figures, the server's own timing of the same load, its CPU."""
    argv, env, parse = {
        "sparkhelpers": (ours_argv(s, c), ours_env(s), lambda out: parse_ours(out, s)),
        "vllm": (vllm_argv(s, c), None, lambda out: parse_vllm(out, s, c)),
        "llama-benchy": (benchy_argv(s, c), benchy_env(s), lambda out: parse_benchy(out, s, c)),
    }[name]
    server_call(s, "reset", post=True)
    res, sampler, wall = run_client(argv, env)
    o = Outcome(name, c, wall_s=round(wall, 1), server=server_call(s, "stats"))
    o.cpu_total_s = round(sampler.samples[-1][1], 2) if sampler.samples else None
    o.cpu_load_pct = cpu_in_window(sampler.samples, o.server["window_start"], o.server["window_end"])
    if res.returncode != 0:
        o.error = f"exit {res.returncode}: {(res.stderr or res.stdout).strip()[-300:]}"
        return o
    try:
        o.ttft_mean_ms, o.ttft_p50_ms, o.tpot_mean_ms = parse(res.stdout)
    except (ValueError, KeyError, OSError) as exc:
        o.error = f"{type(exc).__name__}: {exc}"[:300]
    return o


# ---- setting up the other clients -------------------------------------------------------------------

def find_vllm(explicit: str) -> tuple[str, str]:
    """(path, "") or ("", why not)."""
    for cand in (explicit, str(VLLM_SIDE_VENV), shutil.which("vllm") or ""):
        if cand and Path(cand).exists():
            return cand, ""
    return "", "vllm is not installed (tools/real-vllm.sh builds its side venv; or pass --vllm PATH)"


def ensure_benchy() -> tuple[str, str]:
    """perf/.venv-benchy/bin/python with llama-benchy, installed by name once; or ("", why not)."""
    for py in (BENCHY_SIDE_VENV / "bin" / "python", BENCHY_VENV / "bin" / "python"):
        if py.exists() and subprocess.run([str(py), "-c", "import llama_benchy"], capture_output=True).returncode == 0:
            return str(py), ""
    py = BENCHY_VENV / "bin" / "python"
    print(f"installing llama-benchy into {BENCHY_VENV} (once) ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(BENCHY_VENV)], check=True)
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "llama-benchy"], capture_output=True, text=True)
    if r.returncode != 0:
        return "", f"llama-benchy did not install: {(r.stderr.strip().splitlines() or ['?'])[-1]}"
    return str(py), ""


def make_tokenizer(s: Setup) -> None:
    """A local word-level tokenizer (the truth server ignores prompt content; vLLM and llama-benchy want one)."""
    tok = s.workdir / "tokenizer"
    tok.mkdir(parents=True, exist_ok=True)
    py = s.benchy_py or sys.executable
    subprocess.run([py, "-c", TOKENIZER_SNIPPET, str(tok / "tokenizer.json")], check=True)
    (tok / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG))


def prepare(s: Setup, clients: list[str], vllm: str) -> dict[str, str]:
    """Find or install each client; returns {client: why it is skipped}."""
    skipped = {}
    if "vllm" in clients:
        s.vllm, why = find_vllm(vllm)
        if why:
            skipped["vllm"] = why
    if "llama-benchy" in clients:
        s.benchy_py, why = ensure_benchy()
        if why:
            skipped["llama-benchy"] = why
    make_tokenizer(s)
    return skipped


# ---- report -------------------------------------------------------------------------------------------

def split(o: Outcome, s: Setup) -> dict:
    """Errors against the truth, and how much of each is the server's own lateness."""
    srv = o.server
    out = {"client": o.client, "concurrency": o.concurrency, "error": o.error, "cpu_load_pct": o.cpu_load_pct,
           "cpu_total_s": o.cpu_total_s, "wall_s": o.wall_s, "server_requests": srv.get("requests")}
    if o.ttft_mean_ms is not None:
        out.update(ttft_mean_err_ms=o.ttft_mean_ms - s.ttft_ms, ttft_server_late_ms=srv["ttft_late_mean_ms"],
                   ttft_client_ms=o.ttft_mean_ms - srv["ttft_mean_ms"],
                   tpot_err_ms=o.tpot_mean_ms - s.itl_ms, tpot_server_late_ms=srv["tpot_late_mean_ms"],
                   tpot_client_ms=o.tpot_mean_ms - srv["tpot_mean_ms"])
        if o.ttft_p50_ms is not None:
            out.update(ttft_p50_err_ms=o.ttft_p50_ms - s.ttft_ms, ttft_p50_client_ms=o.ttft_p50_ms - srv["ttft_p50_ms"])
    return out


def table(rows: list[dict]) -> str:
    def f(v, spec: str = "+.2f") -> str:  # noqa: ANN001
        return "-" if v is None else format(v, spec)

    head = (f"{'c':>4} {'client':<13}| {'TTFT mean err':>13} {'= server':>9} {'+ client':>9} | {'p50 err':>8} "
            f"{'client':>7} | {'TPOT err':>8} {'= server':>9} {'+ client':>9} | {'CPU % load':>10} {'CPU s':>6}")
    lines = [head, "-" * len(head)]
    for r in rows:
        if r["error"] and "ttft_mean_err_ms" not in r:
            lines.append(f"{r['concurrency']:>4} {r['client']:<13}| FAILED: {r['error'][:90]}")
            continue
        lines.append(f"{r['concurrency']:>4} {r['client']:<13}| {f(r['ttft_mean_err_ms']):>13} "
                     f"{f(r['ttft_server_late_ms']):>9} {f(r['ttft_client_ms']):>9} | {f(r.get('ttft_p50_err_ms')):>8} "
                     f"{f(r.get('ttft_p50_client_ms')):>7} | {f(r['tpot_err_ms'], '+.3f'):>8} "
                     f"{f(r['tpot_server_late_ms'], '+.3f'):>9} {f(r['tpot_client_ms'], '+.3f'):>9} | "
                     f"{f(r['cpu_load_pct'], '.1f'):>10} {f(r['cpu_total_s'], '.1f'):>6}")
    return "\n".join(lines)


def open_loop(s: Setup, rates: list[float]) -> list[str]:
    """Our client in open loop (Poisson arrivals, 16-token replies, 5 s per rate): dispatch lag and TTFT bias."""
    lines = [f"\nopen loop (sparkhelpers, Poisson), 16-token replies, 5 s per rate: truth TTFT {s.ttft_ms:g} ms",
             f"{'rate':>6} | {'achieved req/s':>14} | {'dispatch lag p99':>16} | {'TTFT bias mean':>14} | "
             f"{'cpu %':>5} | valid"]
    for rate in rates:
        argv = ours_argv(s, 1)
        i = argv.index("--max-concurrency")
        argv[i:i + 2] = ["--request-rate", f"{rate:g}"]
        argv[argv.index("--num-prompts") + 1] = str(int(rate * 5))
        argv[argv.index("--random-output-len") + 1] = "16"
        argv[argv.index("--num-warmups") + 1] = "8"
        res, _, _ = run_client(argv, ours_env(s))
        if res.returncode != 0:
            lines.append(f"{rate:>6g} | FAILED: {res.stderr.strip()[-120:]}")
            continue
        d = json.loads(res.stdout)
        c = d["extra"]["client"]
        verdict = "yes" if d["run"]["valid"] else "NO: " + "; ".join(d["run"]["invalid_reasons"])
        lines.append(f"{rate:>6g} | {d['request_throughput']:>14.1f} | {c['dispatch_lag_p99_ms']:>13.1f} ms | "
                     f"{d['mean_ttft_ms'] - s.ttft_ms:>+11.1f} ms | {c['cpu_pct']:>5.0f} | {verdict}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", default="1,16,128")
    ap.add_argument("--clients", default=",".join(CLIENTS))
    ap.add_argument("--ttft-ms", type=float, default=200.0)
    ap.add_argument("--itl-ms", type=float, default=20.0)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--input-len", type=int, default=512)
    ap.add_argument("--requests-per-slot", type=int, default=2, help="requests per concurrency slot (c=1: 4x)")
    ap.add_argument("--port", type=int, default=8199)
    ap.add_argument("--vllm", default="", help="the vllm executable (default: the real-vllm side venv, PATH)")
    ap.add_argument("--open-loop", default="", help="also our client in open loop at these rates (req/s)")
    ap.add_argument("--json", default="", help="also write the rows to this file")
    ap.add_argument("--nice", type=int, default=0, help="niceness increment of the server and the clients "
                    "(as root, e.g. -10 on a machine other jobs share)")
    ap.add_argument("--realtime", action="store_true", help="SCHED_FIFO for the server and the clients (root): "
                    "the figures of a shared machine come close to an idle one's")
    args = ap.parse_args()
    NICE[0], REALTIME[0] = args.nice, args.realtime
    clients = [c for c in args.clients.split(",") if c]
    unknown = set(clients) - set(CLIENTS)
    if unknown:
        sys.exit(f"unknown client(s) {', '.join(sorted(unknown))}: choose from {', '.join(CLIENTS)}")
    levels = [int(x) for x in args.levels.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        s = Setup(args.port, args.ttft_ms, args.itl_ms, args.tokens, args.input_len, Path(tmp),
                  per_slot=args.requests_per_slot)
        skipped = prepare(s, clients, args.vllm)
        rates = [float(x) for x in args.open_loop.split(",") if x]
        rows, extra = run_all(s, [c for c in clients if c not in skipped], levels, rates)
    ncpu = os.cpu_count() or 1
    print(f"truth: TTFT {s.ttft_ms:g} ms, TPOT {s.itl_ms:g} ms, {s.tokens} tokens, {s.input_len}-token prompts; "
          f"server pinned to CPU {ncpu - 1}, each client to CPU 0; "
          f"{'SCHED_FIFO' if REALTIME[0] else f'nice {NICE[0]:+d}'}; "
          f"load average {os.getloadavg()[0]:.1f}")
    print("error = client's figure - truth = the server's own lateness + the client's share (all ms, means)\n")
    print(table(rows))
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    print("\n".join(extra))
    if args.json:
        Path(args.json).write_text(json.dumps({"truth": {"ttft_ms": s.ttft_ms, "itl_ms": s.itl_ms,
                                                         "tokens": s.tokens}, "rows": rows,
                                               "skipped": skipped}, indent=1))


def run_all(s: Setup, clients: list[str], levels: list[int], rates: list[float]) -> tuple[list[dict], list[str]]:
    ncpu = os.cpu_count() or 1
    server = start_server(s.port, s.ttft_ms, s.itl_ms, cpu=ncpu - 1)
    rows, extra = [], []
    try:
        for c in levels:
            for name in clients:
                print(f"c={c} {name} ...", file=sys.stderr, flush=True)
                rows.append(split(measure(name, s, c), s))
        if rates:
            extra = open_loop(s, rates)
    finally:
        server.terminate()
        server.wait(timeout=10)
    return rows, extra


if __name__ == "__main__":
    main()
