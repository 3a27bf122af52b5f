"""vllm bench serve's flags on `bench run` against a real HTTP server (tests/test_bench_quirks.py's), a real
tokenizer file (built here with the tokenizers library) and the progress bar through a real pty."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time

import pytest
import test_bench_quirks
from test_bench_quirks import QuirkServer
from test_setup_sim import run_in_pty  # a real pty, no sim needed

from sparkhelpers.bench import datasets
from sparkhelpers.bench.run import RunOptions, execute

quirks = test_bench_quirks.quirks  # the same real server fixture


def bench(sparkhelpers_bin, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*sparkhelpers_bin, "bench", "run", "--backend", "openai-chat", *args],
                          capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_vllm_flags_reach_the_requests_and_the_result(quirks, sparkhelpers_bin, tmp_path):
    quirks.requests.clear()
    r = bench(sparkhelpers_bin, "--host", "127.0.0.1", "--port", str(quirks.port), "--model", "acme/Model-8B",
              "--served-model-name", "normal", "--top-p", "0.9", "--extra-body", '{"top_k": 5, "min_p": 0.1}',
              "--header", "X-Request-Source=bench", "--header", "X-Team=sre", "--input-len", "8", "--output-len",
              "5", "--num-prompts", "3", "--max-concurrency", "3", "--save-result", "--save-detailed",
              "--disable-tqdm", "--result-dir", str(tmp_path), "--result-filename", "r.json")
    assert r.returncode == 0, r.stderr
    bodies = [q["body"] for q in quirks.requests]
    assert len(bodies) == 3 and {b["model"] for b in bodies} == {"normal"}
    assert all(b["top_p"] == 0.9 and b["top_k"] == 5 and b["min_p"] == 0.1 and b["max_tokens"] == 5 for b in bodies)
    assert all(len(b["messages"][0]["content"].split()) == 8 for b in bodies)  # --input-len 8 (8 words)
    assert all(q["headers"]["X-Request-Source"] == "bench" and q["headers"]["X-Team"] == "sre"
               for q in quirks.requests)
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["model_id"] == "acme/Model-8B"
    for key in ("input_lens", "output_lens", "ttfts", "itls", "generated_texts", "errors"):
        assert len(doc[key]) == 3, key
    assert doc["output_lens"] == [5, 5, 5] and all(t > 0 for t in doc["ttfts"]) and doc["errors"] == ["", "", ""]


def test_without_save_detailed_the_lists_stay_out(quirks, sparkhelpers_bin):
    r = bench(sparkhelpers_bin, "--base-url", f"http://127.0.0.1:{quirks.port}", "--model", "normal",
              "--num-prompts", "2", "--random-input-len", "4", "--random-output-len", "3", "--json")
    assert r.returncode == 0, r.stderr
    assert "ttfts" not in json.loads(r.stdout)


@pytest.mark.parametrize("spelling", ["prefix_repetition", "prefix-repetition", "PREFIX_REPETITION"])
def test_vllm_dataset_spellings(sparkhelpers_bin, spelling):
    r = subprocess.run([*sparkhelpers_bin, "bench", "run", "--dry-run", "--dataset-name", spelling,
                        "--num-prompts", "4"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["dataset"] == "prefix-repetition"


def test_bad_flag_values_are_one_line(sparkhelpers_bin):
    for args, message in ((["--extra-body", "{top_k: 5}"], "--extra-body is not JSON"),
                          (["--extra-body", "[1]"], "must be a JSON object"),
                          (["--header", "novalue"], "is not KEY=VALUE"),
                          (["--header", "Authorization=Bearer x"], "would put the API key on the command line"),
                          (["--tokenizer", "Qwen/Qwen3-8B"], "a local path is required")):
        r = subprocess.run([*sparkhelpers_bin, "bench", "run", "--num-prompts", "1", "--base-url",
                            "http://127.0.0.1:9", *args], capture_output=True, text=True, timeout=30)
        assert r.returncode == 2, (args, r.stderr)
        assert message in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_ready_check_waits_for_a_server_that_starts_later(sparkhelpers_bin):
    port = free_port()
    late = QuirkServer(port)
    timer = threading.Timer(2.0, late.start)
    timer.start()
    try:
        started = time.monotonic()
        r = bench(sparkhelpers_bin, "--base-url", f"http://127.0.0.1:{port}", "--model", "normal",
                  "--num-prompts", "2", "--random-input-len", "4", "--random-output-len", "3",
                  "--ready-check-timeout-sec", "30")
        assert r.returncode == 0, r.stderr
        assert time.monotonic() - started >= 2.0 and len(late.requests) == 2
    finally:
        timer.join()
        late.stop()


def test_ready_check_gives_up_with_the_last_error(sparkhelpers_bin):
    r = bench(sparkhelpers_bin, "--base-url", f"http://127.0.0.1:{free_port()}", "--num-prompts", "1",
              "--ready-check-timeout-sec", "1")
    assert r.returncode == 1 and "was not ready within 1 s (last: cannot reach" in r.stderr


def _bpe_tokenizer(path):
    """A real byte-level BPE tokenizer with a small vocabulary: most words are several tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([" ".join(datasets.WORDS)] * 4, trainer)
    tok.save(str(path / "tokenizer.json"))
    return tok


def test_tokenizer_makes_prompt_lengths_exact(quirks, tmp_path):
    tok = _bpe_tokenizer(tmp_path)
    quirks.requests.clear()
    opts = RunOptions(base_url=f"http://127.0.0.1:{quirks.port}", model="no_usage", backend="openai-chat",
                      num_prompts=4, max_concurrency=2, random_input_len=12, random_output_len=3,
                      tokenizer=str(tmp_path))
    doc, records = execute(opts)
    sent = [q["body"]["messages"][0]["content"] for q in quirks.requests]
    counts = sorted(len(tok.encode(t, add_special_tokens=False).ids) for t in sent)
    assert counts == sorted(r.prompt_len for r in records)  # what was recorded is what was sent
    assert all(abs(c - 12) <= 1 for c in counts)  # cut to 12 tokens (a re-encoded cut may merge at the edge)
    assert all(len(t.split()) < 12 for t in sent)  # 12 words would have been far more than 12 tokens here
    assert doc["tokenizer_id"] == str(tmp_path) and doc["extra"]["prompt_len_source"] == "tokenizer"


def test_progress_bar_with_rate_and_eta_on_a_terminal_only(quirks, sparkhelpers_bin):
    args = [*sparkhelpers_bin, "bench", "run", "--base-url", f"http://127.0.0.1:{quirks.port}", "--backend",
            "openai-chat", "--model", "normal", "--num-prompts", "6", "--max-concurrency", "2",
            "--random-input-len", "4", "--random-output-len", "3"]
    rc, text = run_in_pty(args, [])
    assert rc == 0, text
    assert "bench [########################] 6/6" in text and "req/s  ETA 0:00" in text
    rc, text = run_in_pty([*args, "--disable-tqdm"], [])
    assert rc == 0 and "ETA" not in text and "Serving Benchmark Result" in text
    piped = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert piped.returncode == 0 and "ETA" not in piped.stderr + piped.stdout
