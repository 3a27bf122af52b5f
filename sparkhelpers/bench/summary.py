"""What ``bench run`` prints: the progress line while it runs and vllm bench serve's result block after."""

from __future__ import annotations

import sys
import time


class ProgressBar:
    """``label [#####.....]  45/100  12.3 req/s  ETA 0:04`` redrawn in place on stderr, at most 5 times a second."""

    def __init__(self, label: str, stream=None, width: int = 24) -> None:  # noqa: ANN001
        self.label, self.stream, self.width = label, stream or sys.stderr, width
        self.started = time.monotonic()
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self.last < 0.2:
            return
        self.last = now
        elapsed = max(now - self.started, 1e-9)
        rate = done / elapsed
        eta = (total - done) / rate if rate > 0 else 0.0
        filled = self.width * done // max(total, 1)
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r\033[K{self.label} [{bar}] {done:>{len(str(total))}}/{total}  {rate:.1f} req/s  "
                          f"ETA {int(eta) // 60}:{int(eta) % 60:02d}")
        if done == total:
            self.stream.write("\n")
        self.stream.flush()


def progress(label: str, disabled: bool = False) -> ProgressBar | None:
    """A progress bar on a terminal only (never in a log, a pipe or cron's mail)."""
    return ProgressBar(label) if not disabled and sys.stderr.isatty() else None


def format_summary(doc: dict) -> str:
    """A block like vllm bench serve's 'Serving Benchmark Result', plus validity and token sources."""
    lines = ["{:=^60}".format(" Serving Benchmark Result ")]

    def row(name: str, value, fmt: str = "{:<40} {:<10.2f}") -> None:
        if value is None:
            return
        lines.append(fmt.format(name, value) if isinstance(value, float) else f"{name:<40} {value:<10}")

    row("Successful requests:", doc["completed"])
    row("Failed requests:", doc["failed"])
    row("Maximum request concurrency:", doc.get("max_concurrency"))
    row("Benchmark duration (s):", doc["duration"])
    row("Total input tokens:", doc["total_input_tokens"])
    row("Total generated tokens:", doc["total_output_tokens"])
    row("Request throughput (req/s):", doc["request_throughput"])
    row("Request goodput (req/s):", doc.get("request_goodput"))
    row("Output token throughput (tok/s):", doc["output_throughput"])
    row("Peak output token throughput (tok/s):", doc["max_output_tokens_per_s"])
    row("Peak concurrent requests:", doc["max_concurrent_requests"])
    row("Total token throughput (tok/s):", doc["total_token_throughput"])
    titles = {"ttft": "Time to First Token", "tpot": "Time per Output Token (excl. 1st token)",
              "itl": "Inter-token Latency", "e2el": "End-to-end Latency"}
    for name, title in titles.items():
        keys = [k for k in doc if k.endswith(f"_{name}_ms") and not k.startswith("std_")]
        if not keys:
            continue
        lines.append(f"{title:-^60}")
        for k in keys:
            stat = k.split("_")[0]
            label = {"mean": "Mean", "median": "Median"}.get(stat, stat.upper().replace("P", "P", 1))
            row(f"{label} {name.upper()} (ms):", doc[k])
    extra = doc.get("extra", {})
    content = extra.get("ttft_content_ms", {})
    if content:
        lines.append("{:-^60}".format("First content token (not in vLLM)"))
        row("Mean TTFT to first content (ms):", content.get("mean"))
        row("Median TTFT to first content (ms):", content.get("median"))
    engine_and_nodes(doc, lines, row)
    lines.append("{:-^60}".format("Client"))
    client = extra.get("client", {})
    row("Token counts from:", extra.get("token_count_source") or "-")
    row("Client CPU (% of one core):", client.get("cpu_pct"))
    row("Event-loop lag p99 (ms):", client.get("event_loop_lag_p99_ms"))
    row("Send lag p99 (ms, not in TTFT):", client.get("send_lag_p99_ms"))
    row("Dispatch lag p99 (ms, open loop):", client.get("dispatch_lag_p99_ms"))
    row("Valid:", "yes" if doc["run"]["valid"] else "NO")
    lines.append("=" * 60)
    return "\n".join(lines)


def engine_and_nodes(doc: dict, lines: list[str], row) -> None:  # noqa: ANN001
    """The engine's /metrics block and the nodes' memory block, when the run has them."""
    engine = doc.get("engine_metrics") or {}
    if engine.get("available"):
        lines.append("{:-^60}".format("Engine (its /metrics, this run)"))
        rate = engine.get("prefix_cache_hit_rate")
        row("Prefix cache hit rate (%):", None if rate is None else round(100.0 * rate, 1))
        row("Preemptions:", None if engine.get("preemptions") is None else int(engine["preemptions"]))
        kv = engine.get("peak_kv_cache_usage")
        row("Peak KV cache usage (%):", None if kv is None else round(100.0 * kv, 1))
        row("Peak waiting requests:", None if engine.get("peak_requests_waiting") is None
            else int(engine["peak_requests_waiting"]))
        row("Server mean TTFT (ms):", engine.get("server_mean_ttft_ms"))
        rate = engine.get("spec_decode_acceptance_rate")
        row("Spec decode acceptance (%):", None if rate is None else round(100.0 * rate, 1))
    memory = doc.get("node_memory") or {}
    if memory.get("available"):
        lines.append("{:-^60}".format("Nodes (MemAvailable during the run)"))
        for name, n in memory["nodes"].items():
            low = n.get("mem_available_min_gib")
            row(f"{name[:22]} lowest (GiB):", "-" if low is None else
                f"{low:.2f} of {n.get('mem_total_gib') or '?'} ({n['samples']} samples)")


def failure_lines(doc: dict, causes: int = 5) -> list[str]:
    """The first errors by cause: one line per cause with its count and its first message(s)."""
    extra = doc.get("extra", {})
    lines = []
    for cause, count in list(extra.get("error_counts", {}).items())[:causes]:
        examples = extra.get("error_examples", {}).get(cause) or [""]
        lines.append(f"{count:>5} x {cause}: {examples[0]}")
        lines += [f"{'':>9}{e}" for e in examples[1:]]
    return lines
