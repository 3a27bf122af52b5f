"""Other benchmark tools, run with our options and ingested into our results: the real ``vllm bench serve``
inside the head container, and llama-benchy when it is installed. Command builders are pure; secrets go
through the environment, never argv (``docker exec -e NAME`` passes a variable by name only)."""

from __future__ import annotations

import json
import math
import shlex
import shutil
import time
from pathlib import Path

from sparkhelpers.bench import ingest, results
from sparkhelpers.bench.run import RunOptions
from sparkhelpers.errors import SparkError, UsageError
from sparkhelpers.runner import Runner

CONTAINER_RESULT_DIR = "/tmp/sparkhelpers-bench"
# llama-benchy takes its key only as --api-key; this wrapper adds it inside the process from the environment,
# so it never appears in ps or /proc/PID/cmdline.
BENCHY_WRAPPER = ("import os, sys; from llama_benchy.__main__ import main; sys.argv[0] = 'llama-benchy'; "
                  "k = os.environ.pop('SPARK_BENCH_API_KEY', ''); sys.argv += ['--api-key', k] if k else []; main()")


def head_container(cfg) -> str:
    """The head's engine container, as sparkhelpers.cluster.plan names it (rank 0)."""
    return f"sparkhelpers-{cfg.get('CLUSTER_NAME', 'spark')}-0"


def vllm_bench_argv(o: RunOptions, *, container: str, result_name: str, tokenizer: str = "",
                    with_key: bool = False) -> list[str]:
    """``docker exec`` running ``vllm bench serve`` with the same options, saving into the container's /tmp."""
    argv = ["docker", "exec"]
    if with_key:
        argv += ["-e", "OPENAI_API_KEY"]  # by name: the value comes from our environment, not argv
    argv += [container, "vllm", "bench", "serve", "--backend", o.backend, "--base-url", o.base_url,
             "--model", o.model]
    if o.endpoint:
        argv += ["--endpoint", o.endpoint]
    elif o.backend == "openai-chat":
        argv += ["--endpoint", "/v1/chat/completions"]
    if tokenizer and tokenizer != o.model:
        argv += ["--tokenizer", tokenizer]
    argv += ["--dataset-name", o.dataset_name.replace("prefix-repetition", "prefix_repetition")]
    if o.dataset_name == "random":
        argv += ["--random-input-len", str(o.random_input_len), "--random-output-len", str(o.random_output_len),
                 "--random-range-ratio", str(o.random_range_ratio), "--random-prefix-len", str(o.random_prefix_len)]
    elif o.dataset_name == "prefix-repetition":
        argv += ["--prefix-repetition-prefix-len", str(o.prefix_repetition_prefix_len),
                 "--prefix-repetition-suffix-len", str(o.prefix_repetition_suffix_len),
                 "--prefix-repetition-num-prefixes", str(o.prefix_repetition_num_prefixes),
                 "--prefix-repetition-output-len", str(o.prefix_repetition_output_len)]
    else:
        raise UsageError(f"--framework vllm runs inside the head container and cannot read the local "
                         f"--dataset-path for {o.dataset_name}", fix="use --dataset-name random or prefix-repetition")
    argv += ["--num-prompts", str(o.num_prompts), "--request-rate",
             "inf" if math.isinf(o.request_rate) else f"{o.request_rate:g}", "--burstiness", f"{o.burstiness:g}",
             "--seed", str(o.seed), "--num-warmups", str(o.num_warmups)]
    if o.max_concurrency:
        argv += ["--max-concurrency", str(o.max_concurrency)]
    if o.ignore_eos:
        argv.append("--ignore-eos")
    if o.temperature is not None:
        argv += ["--temperature", f"{o.temperature:g}"]
    if o.top_p is not None:
        argv += ["--top-p", f"{o.top_p:g}"]
    if o.extra_body:
        argv += ["--extra-body", json.dumps(o.extra_body)]
    if o.headers:
        argv += ["--header", *[f"{k}={v}" for k, v in o.headers.items()]]
    if o.served_model_name:
        argv += ["--served-model-name", o.served_model_name]
    if o.goodput:
        argv += ["--goodput", *[f"{k}:{v:g}" for k, v in o.goodput.items()]]
    argv += ["--percentile-metrics", ",".join(o.percentile_metrics),
             "--metric-percentiles", ",".join(f"{p:g}" for p in o.metric_percentiles),
             "--save-result", "--result-dir", CONTAINER_RESULT_DIR, "--result-filename", result_name]
    if o.label:
        argv += ["--label", o.label]
    if o.metadata:
        argv += ["--metadata", *[f"{k}={v}" for k, v in o.metadata.items()]]
    return argv


def benchy_python() -> str:
    """The interpreter llama-benchy is installed in (its console script's shebang)."""
    exe = shutil.which("llama-benchy")
    if not exe:
        raise SparkError("llama-benchy is not installed", fix="pipx install llama-benchy (or pip install llama-benchy)")
    first = Path(exe).read_text(encoding="utf-8", errors="replace").splitlines()[0]
    return first[2:].strip() if first.startswith("#!") else "python3"


def benchy_argv(o: RunOptions, *, python: str, out_file: str, tokenizer: str = "", runs: int = 0,
                extra: str = "") -> list[str]:
    """llama-benchy's nearest equivalent: pp = input length, tg = output length, one burst of c per run."""
    if o.dataset_name != "random":
        raise UsageError("--framework llama-benchy supports --dataset-name random only (it makes its own prompts)",
                         fix="use --dataset-name random")
    c = o.max_concurrency or 1
    runs = runs or max(1, o.num_prompts // c)
    argv = [python, "-c", BENCHY_WRAPPER, "--base-url", o.base_url + "/v1", "--model", o.model,
            "--pp", str(o.random_input_len), "--tg", str(o.random_output_len), "--concurrency", str(c),
            "--runs", str(runs), "--save-result", out_file, "--format", "json"]
    extra_args = shlex.split(extra)
    if tokenizer and "--tokenizer" not in extra_args:
        argv += ["--tokenizer", tokenizer]
    if o.ignore_eos or o.dataset_name == "random":
        argv.append("--exact-tg")
    return argv + extra_args


def run_framework(framework: str, o: RunOptions, cfg, *, out_dir: Path, dry_run: bool = False,
                  api_key: str = "", runner: Runner | None = None) -> list[Path]:
    """Run the other tool, copy its own file into ``out_dir`` and save our documents beside it."""
    from sparkhelpers.bench.run import discover_model

    runner = runner or Runner(dry_run=dry_run)
    o.validate()
    if not o.model:
        o.model = cfg.get("SERVED_MODEL_NAME") or (discover_model(o.base_url, api_key) if not dry_run
                                                    else cfg.get("MODEL"))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    tokenizer = cfg.get("MODEL")
    out_dir.mkdir(parents=True, exist_ok=True)
    if framework == "vllm":
        name = results.result_filename(o.label or "vllm", o.request_rate, o.max_concurrency, o.model, stamp)
        container = head_container(cfg)
        argv = vllm_bench_argv(o, container=container, result_name=name, tokenizer=tokenizer, with_key=bool(api_key))
        env = {"OPENAI_API_KEY": api_key} if api_key else None
        runner.run(argv, env=env, timeout=cfg.get_float("BENCH_TIMEOUT", 3600.0) or None, capture=False).check(
            "vllm bench serve", fix=f"is the cluster running (container {container})? see its output above")
        got = runner.run(["docker", "exec", container, "cat", f"{CONTAINER_RESULT_DIR}/{name}"])
        if dry_run:
            return []
        got.check("reading vllm bench serve's result", fix="check the container's /tmp")
        raw_path = out_dir / f"original-{name}"
        raw_path.write_text(got.stdout, encoding="utf-8")
        data = json.loads(got.stdout)
    elif framework == "llama-benchy":
        python = benchy_python() if not dry_run else "llama-benchy-python"
        raw_path = out_dir / f"original-llama-benchy-{o.model.split('/')[-1]}-{stamp}.json"
        argv = benchy_argv(o, python=python, out_file=str(raw_path), tokenizer=tokenizer,
                           extra=cfg.get("BENCH_LLAMA_BENCHY_ARGS"))
        env = {"SPARK_BENCH_API_KEY": api_key} if api_key else None
        runner.run(argv, env=env, timeout=cfg.get_float("BENCH_TIMEOUT", 3600.0) or None, capture=False).check(
            "llama-benchy", fix="see its output above; it needs a tokenizer (MODEL as a Hugging Face id, or "
                                "--tokenizer PATH) and its book (--book-url), both settable in BENCH_LLAMA_BENCHY_ARGS")
        if dry_run:
            return []
        data = results.load_json(raw_path)
        if data is None:
            raise SparkError(f"llama-benchy wrote no readable result at {raw_path}", fix="see its output above")
    else:
        raise UsageError(f"--framework {framework!r} is not supported", fix="use sparkhelpers, vllm or llama-benchy")
    target = results.cluster_target(cfg, o.base_url, o.model, cfg.get("BENCH_VARIANT"))
    written = [raw_path]
    for i, doc in enumerate(ingest.normalize(data, str(raw_path)), 1):
        doc["target"] = {**target, **{k: v for k, v in doc["target"].items() if k not in ("model", "variant")}}
        path = out_dir / raw_path.name.removeprefix("original-").replace(".json", f"-{i:03d}.json")
        results.write_json_atomic(path, doc)
        written.append(path)
    return written
