"""``--tokenizer PATH``: a local Hugging Face tokenizer (``tokenizer.json``) for exact prompt lengths.

Without one, prompt lengths are word counts (see datasets.py). With one, the built prompts are cut to
exactly their target number of tokens and every prompt's length is counted, as vllm bench serve does
with its tokenizer. Only local files are read: nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from sparkhelpers.bench.datasets import Prompt
from sparkhelpers.errors import SparkError, UsageError


class Tokenizer:
    def __init__(self, path: Path) -> None:
        try:
            from tokenizers import Tokenizer as HfTokenizer
        except ImportError:
            raise SparkError("--tokenizer needs the tokenizers package",
                             fix="pip install tokenizers (into the sparkhelpers venv)") from None
        try:
            self._tok = HfTokenizer.from_file(str(path))
        except Exception as exc:  # noqa: BLE001 - the library raises a bare Exception for a bad file
            raise SparkError(f"{path} is not a tokenizer.json the tokenizers library reads: {exc}",
                             fix="point --tokenizer at a model directory with tokenizer.json") from None
        self.path = path

    def ids(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def count(self, text: str) -> int:
        return len(self.ids(text))

    def cut(self, text: str, n: int) -> str:
        """``text`` cut to its first ``n`` tokens (a shorter text is returned as it is)."""
        ids = self.ids(text)
        return text if len(ids) <= n else self._tok.decode(ids[:n])


def load(ref: str) -> Tokenizer:
    """A directory holding tokenizer.json, or the file itself. A repo id is refused (no download here)."""
    path = Path(ref).expanduser()
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise UsageError(f"--tokenizer {ref}: no tokenizer.json there (a local path is required; nothing is "
                         "downloaded)", fix="pass the model's snapshot directory, e.g. from `sparkhelpers models "
                         "verify`, or its tokenizer.json")
    return Tokenizer(path)


def fit_prompts(prompts: list[Prompt], tok: Tokenizer, *, exact: bool) -> list[Prompt]:
    """Exact lengths: built prompts (``exact``) cut to their target, every length counted by the tokenizer."""
    out = []
    for p in prompts:
        text = tok.cut(p.text, p.prompt_len) if exact else p.text
        out.append(replace(p, text=text, prompt_len=tok.count(text), len_source="tokenizer"))
    return out
