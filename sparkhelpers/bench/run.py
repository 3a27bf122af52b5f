"""One benchmark run: options (named as vllm bench serve names them) -> prompts -> load -> result document."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sparkhelpers.bench import client, datasets, engine_metrics, metrics, node_memory, results, tokenizer
from sparkhelpers.errors import SparkError, UsageError
from sparkhelpers.runner import Host

DATASETS = ("random", "sharegpt", "prefix-repetition", "custom")
# Datasets whose prompts are built to a target length (a --tokenizer makes it exact).
EXACT_LENGTH = ("random", "prefix-repetition")


@dataclass
class RunOptions(client.LoadShape):
    base_url: str
    model: str = ""
    served_model_name: str = ""  # the name sent in requests when it differs from --model
    tokenizer: str = ""  # a local tokenizer (directory or tokenizer.json): exact prompt lengths
    ready_check_timeout_s: float = 0.0  # wait this long for /v1/models to answer first (0 = do not wait)
    engine_metrics: bool = True  # read the engine's /metrics around the run
    node_memory: bool = True  # sample the cluster nodes' MemAvailable during the run (when nodes are given)
    dataset_name: str = "random"
    dataset_path: str = ""
    random_input_len: int = 1024
    random_output_len: int = 128
    random_range_ratio: float = 0.0
    random_prefix_len: int = 0
    sharegpt_output_len: int | None = None
    custom_output_len: int = 256
    prefix_repetition_prefix_len: int = 256
    prefix_repetition_suffix_len: int = 256
    prefix_repetition_num_prefixes: int = 10
    prefix_repetition_output_len: int = 128
    num_prompts: int = 1000
    goodput: dict[str, float] = field(default_factory=dict)
    percentile_metrics: list[str] = field(default_factory=lambda: list(metrics.DEFAULT_PERCENTILE_METRICS))
    metric_percentiles: list[float] = field(default_factory=lambda: list(metrics.DEFAULT_PERCENTILES))
    label: str = ""
    metadata: dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        self.dataset_name = self.dataset_name.lower().replace("_", "-")  # vLLM spells it prefix_repetition
        if self.dataset_name not in DATASETS:
            raise UsageError(f"--dataset-name {self.dataset_name!r} is not supported",
                             fix=f"choose one of {', '.join(DATASETS)}")
        if self.dataset_name in ("sharegpt", "custom") and not self.dataset_path:
            raise UsageError(f"--dataset-name {self.dataset_name} needs --dataset-path FILE",
                             fix="point --dataset-path at a local file (nothing is downloaded)")
        if self.num_prompts < 1:
            raise UsageError("--num-prompts must be at least 1", fix="for example --num-prompts 100")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise UsageError("--max-concurrency must be at least 1", fix="omit it for no limit")
        if self.request_rate <= 0:
            raise UsageError("--request-rate must be positive (inf = send all at once)", fix="--request-rate 10")
        if self.burstiness <= 0:
            raise UsageError("--burstiness must be positive (1.0 = Poisson)", fix="--burstiness 1.0")
        self.backend = client.normalize_backend(self.backend)
        self.base_url = client.normalize_base_url(self.base_url)


def make_prompts(o: RunOptions) -> list[datasets.Prompt]:
    if o.dataset_name == "random":
        return datasets.random_prompts(o.num_prompts, o.random_input_len, o.random_output_len,
                                       o.random_range_ratio, o.random_prefix_len, o.seed)
    if o.dataset_name == "prefix-repetition":
        return datasets.prefix_repetition_prompts(o.num_prompts, o.prefix_repetition_prefix_len,
                                                  o.prefix_repetition_suffix_len, o.prefix_repetition_num_prefixes,
                                                  o.prefix_repetition_output_len, o.seed)
    if o.dataset_name == "sharegpt":
        return datasets.sharegpt_prompts(Path(o.dataset_path), o.num_prompts, o.sharegpt_output_len, o.seed)
    return datasets.custom_prompts(Path(o.dataset_path), o.num_prompts, o.custom_output_len)


def workload_section(o: RunOptions, ignore_eos: bool) -> dict:
    w = {"endpoint": o.endpoint or client.BACKEND_ENDPOINTS[o.backend], "backend": o.backend,
         "dataset": o.dataset_name, "num_prompts": o.num_prompts, "seed": o.seed, "ignore_eos": ignore_eos,
         "temperature": o.temperature, "request_rate": "inf" if math.isinf(o.request_rate) else o.request_rate,
         "burstiness": o.burstiness, "max_concurrency": o.max_concurrency, "num_warmups": o.num_warmups}
    if o.dataset_name == "random":
        w.update(input_len=o.random_input_len, output_len=o.random_output_len, range_ratio=o.random_range_ratio,
                 prefix_len=o.random_prefix_len)
    elif o.dataset_name == "prefix-repetition":
        w.update(input_len=o.prefix_repetition_prefix_len + o.prefix_repetition_suffix_len,
                 output_len=o.prefix_repetition_output_len, prefix_len=o.prefix_repetition_prefix_len,
                 num_prefixes=o.prefix_repetition_num_prefixes)
    else:
        w.update(dataset_path=o.dataset_path)
    if o.goodput:
        w["goodput_slo_ms"] = o.goodput
    return w


async def fetch_models(base_url: str, api_key: str, timeout_s: float = 10.0) -> list[str]:
    import aiohttp

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    url = base_url + "/v1/models"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s), trust_env=False) as s, \
                s.get(url, headers=headers) as resp:
            if resp.status == 401:
                raise SparkError(f"{url} refused our API key (HTTP 401)",
                                 fix="set API_KEY or API_KEY_FILE to the key the server expects")
            if resp.status != 200:
                raise SparkError(f"{url} answered HTTP {resp.status}", fix="check the server's log")
            data = await resp.json(content_type=None)
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        raise SparkError(f"cannot reach {url}: {type(exc).__name__} {exc}".strip(),
                         fix="start the server (start_cluster.sh) or pass the right --base-url") from None
    except ValueError:  # HTML from a proxy, a login page, another service on the port
        raise SparkError(f"{url} did not answer JSON: is this an OpenAI-compatible server?",
                         fix="check --base-url (the server root, e.g. http://127.0.0.1:8000) or pass --model") from None
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise SparkError(f"{url} answered JSON without a model list (no \"data\": [...])",
                         fix="check --base-url points at an OpenAI-compatible server, or pass --model")
    return [m.get("id") for m in data["data"] if isinstance(m, dict) and m.get("id")]


def wait_ready(base_url: str, api_key: str, timeout_s: float, interval_s: float = 1.0) -> None:
    """vLLM's --ready-check-timeout-sec: wait until /v1/models answers (a starting engine refuses or 503s)."""
    import time

    deadline, last = time.monotonic() + timeout_s, ""
    while True:
        try:
            asyncio.run(fetch_models(base_url, api_key, timeout_s=min(10.0, timeout_s)))
            return
        except SparkError as exc:
            last = exc.message
        if time.monotonic() + interval_s > deadline:
            raise SparkError(f"{base_url} was not ready within {timeout_s:g} s (last: {last})",
                             fix="start the server, or raise --ready-check-timeout-sec")
        time.sleep(interval_s)


def discover_model(base_url: str, api_key: str) -> str:
    models = asyncio.run(fetch_models(base_url, api_key))
    if not models:
        raise SparkError(f"{base_url}/v1/models lists no model", fix="pass --model NAME")
    return models[0]


def execute(o: RunOptions, *, api_key: str = "", target: dict | None = None, run_info: dict | None = None,
            progress=None, deadline_s: float | None = None,
            nodes: Sequence[tuple[str, Host]] = ()) -> tuple[dict, list[metrics.RequestRecord]]:
    """Run the load and build the result document (not saved). Raises TimeoutError after ``deadline_s``.
    ``nodes`` (name, host) are sampled for their memory low-water mark during the run
    (``node_memory.cluster_nodes`` gives the configured cluster's when it serves ``base_url``)."""
    o.validate()
    tok = tokenizer.load(o.tokenizer) if o.tokenizer else None
    if o.ready_check_timeout_s > 0:
        wait_ready(o.base_url, api_key, o.ready_check_timeout_s)
    if not o.model:
        o.model = discover_model(o.base_url, api_key)
    prompts = tokenizer.fit_prompts(make_prompts(o), tok, exact=o.dataset_name in EXACT_LENGTH) if tok else \
        make_prompts(o)
    warmups = []
    if o.num_warmups:  # drawn with another seed, so the measured prompts are not already in a prefix cache
        warm_opts = RunOptions(**{**asdict(o), "seed": o.seed + 7919, "num_prompts": 1})
        warmups = make_prompts(warm_opts)
    ignore_eos = o.ignore_eos or o.dataset_name == "random"  # as vLLM: forced on for random
    spec = client.LoadSpec(o.base_url, o.served_model_name or o.model, api_key=api_key,
                           **{**o.load_shape(), "ignore_eos": ignore_eos})
    watcher = engine_metrics.Watcher(o.base_url, api_key=api_key) if o.engine_metrics else None
    memory = node_memory.Watcher(nodes) if nodes and o.node_memory else None
    if memory:
        memory.start(first_sample_s=max(h.connect_timeout for _, h in nodes) + 2.0)
    load = client.run_load(spec, prompts, progress=progress, warmup_prompts=warmups,
                           on_measure=watcher.start if watcher else None)
    try:
        records, duration, health = asyncio.run(asyncio.wait_for(load, deadline_s) if deadline_s else load)
    finally:
        engine = watcher.stop() if watcher else {"available": False, "reason": "--no-engine-metrics"}
        mem = memory.stop() if memory else {"available": False, "reason": "--no-node-memory" if nodes else
                                            "no cluster nodes serve this URL"}
    doc = build_document(o, records, duration, health.summary(), ignore_eos=ignore_eos, target=target,
                         run_info=run_info, prompts=prompts)
    doc["engine_metrics"] = engine
    doc["node_memory"] = mem
    return doc, records


def build_document(o: RunOptions, records, duration: float, health: dict, *, ignore_eos: bool,
                   target: dict | None, run_info: dict | None, prompts=()) -> dict:
    """Pure: the result document from the records (used by tests with hand-made records)."""
    doc = results.vllm_header(backend=o.backend, endpoint=o.endpoint, label=o.label, model=o.model,
                              num_prompts=o.num_prompts, request_rate=o.request_rate, burstiness=o.burstiness,
                              max_concurrency=o.max_concurrency, metadata=o.metadata)
    doc["tokenizer_id"] = o.tokenizer or None
    doc.update(metrics.compute_metrics(records, duration, percentiles=o.metric_percentiles,
                                       percentile_metrics=o.percentile_metrics, goodput_slo_ms=o.goodput or None))
    extra = metrics.extra_metrics(records, duration, o.metric_percentiles)
    approx = {p_i: p.prompt_len for p_i, p in enumerate(prompts)}
    diffs = [(r.prompt_len - approx[r.index]) / approx[r.index] * 100 for r in records
             if r.success and r.prompt_len_source == "usage" and approx.get(r.index)]
    extra["prompt_len_vs_approx_pct"] = round(metrics.mean(diffs), 1) if diffs else None
    extra["client"] = {**health, "chunks_per_s": round(extra.pop("chunks_per_s"), 1)}
    run = run_info or results.new_run_info()
    reasons = client.judge_health(health, doc.get("median_ttft_ms") or 0.0)
    if doc["completed"] == 0:
        reasons.append("no request completed")
    run["valid"] = not reasons
    run["invalid_reasons"] = reasons
    doc["schema"] = results.SCHEMA
    doc["run"] = run
    doc["target"] = target or {"base_url": o.base_url, "model": o.model}
    doc["workload"] = workload_section(o, ignore_eos)
    doc["extra"] = extra
    return doc


def options_dict(o: RunOptions) -> dict:
    return asdict(o)
