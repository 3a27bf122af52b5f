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
       "default: 127.0.0.1:VLLM_PORT)."),
    _f("model", "--model", str, "", "Model name to request (default: the first of /v1/models)."),
    _f("endpoint", "--endpoint", str, "", "API path (default: from --backend)."),
    _f("backend", "--backend", str, "openai", "openai (/v1/completions) or openai-chat."),
    _f("dataset_name", "--dataset-name", str, "random", "random, sharegpt, prefix-repetition, custom."),
    _f("dataset_path", "--dataset-path", str, "", "Local file for sharegpt (JSON) or custom (JSONL)."),
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
    _f("num_warmups", "--num-warmups", int, 0, "Warm-up requests at the target concurrency first."),
    _f("goodput", "--goodput", list[str], None, "SLOs, e.g. ttft:500 tpot:50 e2el:10000 (ms)."),
    _f("percentile_metrics", "--percentile-metrics", str, "ttft,tpot,itl,e2el", "Metrics to report percentiles for."),
    _f("metric_percentiles", "--metric-percentiles", str, "50,90,95,99", "Percentiles (vLLM's own default is 99 "
       "alone)."),
    _f("save_result", "--save-result", bool, False, "Save the JSON (+ per-request JSONL).", option=False),
    _f("result_dir", "--result-dir", str, "", "Where to save (default: RESULTS_DIR).", option=False),
    _f("result_filename", "--result-filename", str, "", "File name (default: vLLM's scheme).", option=False),
    _f("label", "--label", str, "", "Label for the result (file name prefix)."),
    _f("metadata", "--metadata", list[str], None, "KEY=VALUE pairs recorded in the result."),
    _f("request_timeout_s", "--request-timeout", float, 600.0, "Seconds one request may take."),
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

    save_result: bool = False
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
    values["base_url"] = values["base_url"] or default_base_url
    values["metadata"] = key_values(values["metadata"], "--metadata", "variant=fp8-kv")
    values["goodput"] = metrics.parse_goodput(values["goodput"] or [])
    values["percentile_metrics"] = metrics.parse_percentile_metrics(values["percentile_metrics"])
    values["metric_percentiles"] = metrics.parse_percentiles(values["metric_percentiles"])
    command_flags = CommandFlags(**{f.name: flags[f.name] for f in FLAGS if not f.option})
    return RunOptions(**values), command_flags
