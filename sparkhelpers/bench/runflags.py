"""The flags of ``sparkhelpers bench run``, named as ``vllm bench serve`` names them, as one table.

The table is the one home of each flag (declaration, default, help); ``command`` turns it into the Typer
command's signature, and ``to_options`` turns the parsed values into ``RunOptions`` plus what only the
command itself uses (output, saving, the other frameworks).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import typer

from sparkhelpers.errors import UsageError


@dataclass(frozen=True)
class Flag:
    name: str  # the RunOptions field (or a command-only key)
    decls: tuple[str, ...]
    type: Any
    default: Any
    help: str
    option: bool = True  # False: command-only, not a RunOptions field


def _f(name: str, decl: str | tuple[str, ...], type_: Any, default: Any, help_text: str, *,
       option: bool = True) -> Flag:
    return Flag(name, (decl,) if isinstance(decl, str) else decl, type_, default, help_text, option)


FLAGS: tuple[Flag, ...] = (
    _f("base_url", "--base-url", str, "", "Server root, e.g. http://127.0.0.1:8000 (a trailing /v1 is accepted; "
       "default: the cluster's endpoint)."),
    _f("host", "--host", str, "", "Server host when --base-url is not given (vLLM's; default 127.0.0.1).",
       option=False),
    _f("port", "--port", int | None, None, "Server port when --base-url is not given (default: VLLM_PORT).",
       option=False),
    _f("model", "--model", str, "", "Model name to request (default: the first of /v1/models)."),
    _f("served_model_name", "--served-model-name", str, "", "Name sent in requests when it differs from --model."),
    _f("tokenizer", "--tokenizer", str, "", "Local tokenizer (model directory or tokenizer.json): exact prompt "
       "lengths. Nothing is downloaded."),
    _f("endpoint", "--endpoint", str, "", "API path (default: from --backend)."),
    _f("backend", "--backend", str, "openai", "openai (/v1/completions) or openai-chat."),
    _f("dataset_name", "--dataset-name", str, "random", "random, sharegpt, prefix-repetition, custom."),
    _f("dataset_path", "--dataset-path", str, "", "Local file for sharegpt (JSON) or custom (JSONL)."),
    _f("input_len", "--input-len", int | None, None, "Input length for any dataset (sets --random-input-len).",
       option=False),
    _f("output_len", "--output-len", int | None, None, "Output length for any dataset (sets the random, sharegpt, "
       "custom and prefix-repetition output lengths).", option=False),
    _f("random_input_len", "--random-input-len", int, 1024, "Prompt length (approx. tokens)."),
    _f("random_output_len", "--random-output-len", int, 128, "Output tokens (max_tokens)."),
    _f("random_range_ratio", "--random-range-ratio", float, 0.0, "Lengths uniform in [L(1-r), L(1+r)], 0 <= r < 1."),
    _f("random_prefix_len", "--random-prefix-len", int, 0, "Shared prefix before each prompt."),
    _f("sharegpt_output_len", "--sharegpt-output-len", int | None, None, "Override ShareGPT reply lengths."),
    _f("custom_output_len", "--custom-output-len", int, 256, "Output tokens for custom prompts."),
    _f("prefix_repetition_prefix_len", "--prefix-repetition-prefix-len", int, 256, "prefix-repetition: prefix."),
    _f("prefix_repetition_suffix_len", "--prefix-repetition-suffix-len", int, 256, "prefix-repetition: suffix."),
    _f("prefix_repetition_num_prefixes", "--prefix-repetition-num-prefixes", int, 10, "prefix-repetition: prefixes."),
    _f("prefix_repetition_output_len", "--prefix-repetition-output-len", int, 128, "prefix-repetition: output."),
    _f("num_prompts", "--num-prompts", int, 1000, "Requests in the measured run."),
    _f("max_concurrency", "--max-concurrency", int | None, None, "Closed loop: requests in flight at most."),
    _f("request_rate", "--request-rate", float, math.inf, "Open loop: requests/s (inf = all at t=0)."),
    _f("burstiness", "--burstiness", float, 1.0, "Gamma shape of the gaps; 1.0 = Poisson."),
    _f("seed", "--seed", int, 0, "Seed for prompts and arrivals."),
    _f("ignore_eos", "--ignore-eos", bool, False, "Generate max tokens (always on for random)."),
    _f("temperature", "--temperature", float, 0.0, "Sampling temperature."),
    _f("top_p", "--top-p", float | None, None, "Sampling top-p (default: the server's)."),
    _f("extra_body", "--extra-body", str, "", "JSON object merged into every request body, e.g. "
       "'{\"top_k\": 20}'."),
    _f("headers", "--header", list[str], None, "KEY=VALUE HTTP header sent with every request (repeat it); the "
       "API key comes from API_KEY, never a flag."),
    _f("num_warmups", "--num-warmups", int, 0, "Warm-up requests at the target concurrency first."),
    _f("goodput", "--goodput", list[str], None, "SLO in ms, METRIC:MS (ttft, tpot, e2el); repeat it or quote a "
       "list: --goodput ttft:500 --goodput tpot:50, or --goodput 'ttft:500 tpot:50'."),
    _f("percentile_metrics", "--percentile-metrics", str, "ttft,tpot,itl,e2el", "Metrics to report percentiles for."),
    _f("metric_percentiles", "--metric-percentiles", str, "50,90,95,99", "Percentiles (vLLM's own default is 99 "
       "alone)."),
    _f("save_result", "--save-result", bool, False, "Save the JSON (+ per-request JSONL).", option=False),
    _f("save_detailed", "--save-detailed", bool, False, "Put vLLM's per-request lists (ttfts, itls, input_lens, "
       "output_lens, generated_texts, errors) in the result.", option=False),
    _f("result_dir", "--result-dir", str, "", "Where to save (default: RESULTS_DIR).", option=False),
    _f("result_filename", "--result-filename", str, "", "File name (default: vLLM's scheme).", option=False),
    _f("label", "--label", str, "", "Label for the result (file name prefix)."),
    _f("metadata", "--metadata", list[str], None, "KEY=VALUE pairs recorded in the result."),
    _f("request_timeout_s", "--request-timeout", float, 600.0, "Seconds one request may take."),
    _f("ready_check_timeout_s", "--ready-check-timeout-sec", float, 0.0, "Wait up to this long for the server's "
       "/v1/models first (vLLM waits 600; 0 = fail at once)."),
    _f("engine_metrics", ("--engine-metrics/--no-engine-metrics",), bool, True, "Read the engine's Prometheus "
       "/metrics around the run (prefix-cache hit rate, preemptions, peak KV use and queue) into the result."),
    _f("node_memory", ("--node-memory/--no-node-memory",), bool, True, "Sample every cluster node's MemAvailable "
       "during the run (one SSH session per node; when the cluster serves the URL) for its low-water mark."),
    _f("disable_tqdm", "--disable-tqdm", bool, False, "No progress bar (there is none off a terminal anyway).",
       option=False),
    _f("framework", "--framework", str, "sparkhelpers", "sparkhelpers (this client), vllm (vllm bench serve in the "
       "head container) or llama-benchy (when installed).", option=False),
    _f("dry_run", "--dry-run", bool, False, "Print the workload (or the other framework's command), send nothing.",
       option=False),
    _f("as_json", "--json", bool, False, "Print the result document as JSON.", option=False),
)


def command(func: Callable[..., None]) -> Callable[..., None]:
    """Give ``func(**flags)`` the Typer signature of FLAGS (Typer reads ``__signature__``)."""
    params = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=f.type,
                                default=typer.Option(f.default, *f.decls, help=f.help)) for f in FLAGS]
    func.__signature__ = inspect.Signature(params, return_annotation=None)  # type: ignore[attr-defined]
    func.__annotations__ = {f.name: f.type for f in FLAGS} | {"return": None}
    return func


@dataclass
class CommandFlags:
    """What ``bench run`` itself uses beyond the RunOptions."""

    host: str = ""
    port: int | None = None
    input_len: int | None = None
    output_len: int | None = None
    save_result: bool = False
    save_detailed: bool = False
    disable_tqdm: bool = False
    result_dir: str = ""
    result_filename: str = ""
    framework: str = "sparkhelpers"
    dry_run: bool = False
    as_json: bool = False


def key_values(items: list[str] | None, flag: str, example: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{flag} {item!r} is not KEY=VALUE", fix=f"for example {flag} {example}")
        out[key] = value
    return out


def to_options(flags: dict[str, Any], default_base_url: str):  # noqa: ANN201
    """(RunOptions, CommandFlags) from the parsed flag values."""
    from sparkhelpers.bench import metrics
    from sparkhelpers.bench.run import RunOptions

    values = {f.name: flags[f.name] for f in FLAGS if f.option}
    command_flags = CommandFlags(**{f.name: flags[f.name] for f in FLAGS if not f.option})
    values["base_url"] = values["base_url"] or base_url(command_flags, default_base_url)
    values.update(_lengths(command_flags))
    values["metadata"] = key_values(values["metadata"], "--metadata", "variant=fp8-kv")
    values["headers"] = key_values(values["headers"], "--header", "X-Request-Source=bench")
    if any(k.lower() == "authorization" for k in values["headers"]):
        raise UsageError("--header Authorization would put the API key on the command line (visible in ps)",
                         fix="set API_KEY or API_KEY_FILE instead")
    values["extra_body"] = _json_object(values["extra_body"])
    values["goodput"] = metrics.parse_goodput(values["goodput"] or [])
    values["percentile_metrics"] = metrics.parse_percentile_metrics(values["percentile_metrics"])
    values["metric_percentiles"] = metrics.parse_percentiles(values["metric_percentiles"])
    return RunOptions(**values), command_flags


def base_url(cmd: CommandFlags, default: str) -> str:
    """--host/--port (vLLM's pair) when given, else the configured endpoint."""
    if not cmd.host and cmd.port is None:
        return default
    port = cmd.port if cmd.port is not None else int(default.rsplit(":", 1)[-1].split("/")[0])
    host = cmd.host or "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _lengths(cmd: CommandFlags) -> dict[str, int]:
    out = {}
    if cmd.input_len is not None:
        out["random_input_len"] = cmd.input_len
    if cmd.output_len is not None:
        out.update(random_output_len=cmd.output_len, sharegpt_output_len=cmd.output_len,
                   custom_output_len=cmd.output_len, prefix_repetition_output_len=cmd.output_len)
    return out


def _json_object(text: str) -> dict:
    import json

    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--extra-body is not JSON ({exc.msg} at column {exc.colno})",
                         fix="""quote it for the shell, e.g. --extra-body '{"top_k": 20}'""") from None
    if not isinstance(value, dict):
        raise UsageError("--extra-body must be a JSON object", fix="""e.g. --extra-body '{"top_k": 20}'""")
    return value
