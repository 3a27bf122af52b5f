"""Prompts without a tokenizer: workloads built from a word list, plus local ShareGPT and JSONL files.

Length approximation: a prompt of N "tokens" is N common English words joined by spaces. Each of these
words is a single token (with its leading space) in the BPE vocabularies of Llama-, Qwen-, GPT-2- and
SmolLM-family tokenizers, so N words is about N tokens plus the chat template's few tokens. The server's
``usage.prompt_tokens`` replaces the approximation whenever it is returned (recorded per request as
``prompt_len_source``), and the run records how far off the approximation was.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

from sparkhelpers.errors import SparkError, UsageError, read_user_file

# Short, frequent words: one BPE token each (with the leading space) in the common tokenizers.
WORDS = tuple("""
the of and to in is was for on that with as by at from his it an were are which this be or had not but
their they have one has also its new first two been after who other her she more all time into when up
during would there than over only year can out years most about three some may between made later city
world used many then these under while known state where school name both through against high before
him being such since since four part however including well three any back world made day group team
film game season played second series national family work government area held along life around
people five following old south north east west early each city town based until home death war line
music album band song river house number last end best large small long water light way word down side
point same top left right open power road book story land air sea field room body head hand face eye door
case fact act view love plan step show turn move play run live help start kind half table food money
""".split())  # noqa: SIM905
WORDS = tuple(dict.fromkeys(WORDS))  # unique, stable order


@dataclass(frozen=True)
class Prompt:
    text: str
    prompt_len: int  # approximate tokens (exact with a tokenizer)
    output_len: int
    len_source: str = "approx_words"  # approx_words | tokenizer


def words(rng: random.Random, n: int) -> str:
    offset = rng.randrange(len(WORDS))
    return " ".join(WORDS[(offset + i * 7 + rng.randrange(3)) % len(WORDS)] for i in range(n))


def length_range(length: int, ratio: float) -> tuple[int, int]:
    """vLLM's --random-range-ratio: uniform integers in [floor(L(1-r)), ceil(L(1+r))]."""
    return max(1, math.floor(length * (1 - ratio))), max(1, math.ceil(length * (1 + ratio)))


def random_prompts(num: int, input_len: int, output_len: int, range_ratio: float = 0.0,
                   prefix_len: int = 0, seed: int = 0) -> list[Prompt]:
    if not 0 <= range_ratio < 1:
        raise UsageError(f"--random-range-ratio {range_ratio} must be in [0, 1)", fix="for example 0.1")
    if input_len < 1 or output_len < 1:
        raise UsageError("--random-input-len and --random-output-len must be at least 1",
                         fix="for example --random-input-len 1024 --random-output-len 128")
    rng = random.Random(seed)
    prefix = words(rng, prefix_len) + " " if prefix_len > 0 else ""
    in_lo, in_hi = length_range(input_len, range_ratio)
    out_lo, out_hi = length_range(output_len, range_ratio)
    prompts = []
    for _ in range(num):
        n_in, n_out = rng.randint(in_lo, in_hi), rng.randint(out_lo, out_hi)
        prompts.append(Prompt(prefix + words(rng, n_in), prefix_len + n_in, n_out))
    return prompts


def prefix_repetition_prompts(num: int, prefix_len: int = 256, suffix_len: int = 256, num_prefixes: int = 10,
                              output_len: int = 128, seed: int = 0) -> list[Prompt]:
    """vLLM's prefix_repetition: num_prefixes shared prefixes, num/num_prefixes random suffixes each, shuffled."""
    if num_prefixes < 1:
        raise UsageError("--prefix-repetition-num-prefixes must be at least 1", fix="for example 10")
    rng = random.Random(seed)
    prompts = []
    per_prefix = max(1, num // num_prefixes)
    for _ in range(num_prefixes):
        prefix = words(rng, prefix_len)
        for _ in range(per_prefix):
            prompts.append(Prompt(f"{prefix} {words(rng, suffix_len)}", prefix_len + suffix_len, output_len))
    rng.shuffle(prompts)
    return prompts[:num]


def approx_tokens(text: str) -> int:
    """Approximate token count of arbitrary text: words plus punctuation runs, at least 1."""
    return max(1, round(len(text.split()) * 1.3))


def sharegpt_prompts(path: Path, num: int, output_len: int | None = None, seed: int = 0) -> list[Prompt]:
    """The first human turn and the first reply of each conversation in a local ShareGPT JSON file."""
    text = read_user_file(path, "the ShareGPT file", fix="pass a local ShareGPT JSON file with --dataset-path")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SparkError(f"{path} is not JSON ({exc.msg} at line {exc.lineno})",
                         fix="pass a ShareGPT JSON file (a list of {conversations: [...]})") from None
    pairs = []
    for entry in data if isinstance(data, list) else []:
        if not isinstance(entry, dict):
            continue
        turns = entry.get("conversations") or entry.get("conversation") or []
        if len(turns) >= 2 and isinstance(turns[0], dict) and isinstance(turns[1], dict):
            pairs.append((str(turns[0].get("value", "")), str(turns[1].get("value", ""))))
    random.Random(seed).shuffle(pairs)
    prompts = []
    for prompt, reply in pairs:
        p_len, o_len = approx_tokens(prompt), output_len or approx_tokens(reply)
        if p_len < 4 or o_len < 4 or p_len > 1024 or p_len + o_len > 2048:  # vLLM's own filter
            continue
        prompts.append(Prompt(prompt, p_len, o_len))
        if len(prompts) == num:
            break
    if not prompts:
        raise SparkError(f"{path} has no usable conversations (two turns, 4-1024 tokens)",
                         fix="check the file is in ShareGPT format")
    return prompts


def custom_prompts(path: Path, num: int, output_len: int = 256) -> list[Prompt]:
    """vLLM's custom dataset: JSONL, one {"prompt": ..., "output_tokens": N (optional)} per line."""
    prompts = []
    lines = read_user_file(path, "the custom dataset", fix="pass a JSONL file with --dataset-path").splitlines()
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            text = row["prompt"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise SparkError(f"{path}:{lineno}: not a JSON object with a \"prompt\" field",
                             fix='one {"prompt": "...", "output_tokens": 128} per line') from None
        prompts.append(Prompt(str(text), approx_tokens(str(text)), int(row.get("output_tokens") or output_len)))
        if len(prompts) == num:
            break
    if not prompts:
        raise SparkError(f"{path} holds no prompts", fix='one {"prompt": "..."} per line')
    return prompts
