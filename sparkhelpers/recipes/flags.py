"""The engine flag sets recipes are checked against: one function, ``flag_set``, reads them.

vLLM's flags come from the sets the emulated engine parses with (sparkhelpers/sim/engine/flags/vllm-V.json,
generated from the real vLLM parser of each supported version); llama-server's from the list below (the
options the product and the emulated llama-server use). A flag set maps the engine-argument key
(``max_model_len``) to its flag.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from sparkhelpers.errors import SparkError

VLLM_FLAGS_DIR = Path(__file__).resolve().parents[1] / "sim" / "engine" / "flags"
VLLM_DEFAULT_VERSION = "0.19.0"  # the version the emulated engine claims by default (sim.realvllm.DEFAULT_VERSION)
# vLLM turns these on by itself, so a recipe's `false` must say --no-X; for every other boolean,
# `false` is the default and renders as nothing (an older image may not know the --no- spelling).
VLLM_DEFAULT_ON = frozenset({"enable_prefix_caching", "enable_chunked_prefill", "async_scheduling"})
LLAMA_SERVER_FLAGS: dict[str, dict] = {
    "ctx_size": {"type": "int", "aliases": ["-c"]}, "parallel": {"type": "int", "aliases": ["-np"]},
    "threads": {"type": "int", "aliases": ["-t"]}, "threads_batch": {"type": "int", "aliases": ["-tb"]},
    "n_gpu_layers": {"type": "str", "aliases": ["-ngl", "--gpu-layers"]},
    "batch_size": {"type": "int", "aliases": ["-b"]}, "ubatch_size": {"type": "int", "aliases": ["-ub"]},
    "flash_attn": {"type": "choice", "choices": ["on", "off", "auto"], "aliases": ["-fa"]},
    "jinja": {"type": "store_true"}, "no_webui": {"type": "store_true"}, "metrics": {"type": "store_true"},
    "mlock": {"type": "store_true"}, "no_mmap": {"type": "store_true"},
    "cont_batching": {"type": "store_true", "aliases": ["-cb"]}, "cache_type_k": {"type": "str", "aliases": ["-ctk"]},
    "cache_type_v": {"type": "str", "aliases": ["-ctv"]}, "log_disable": {"type": "store_true"},
    "verbose": {"type": "store_true", "aliases": ["-v"]},
}


@dataclass(frozen=True)
class Flag:
    key: str  # engine-argument key: max_model_len
    flag: str  # --max-model-len
    type: str  # str int float json choice list size store_true bool_optional
    choices: tuple[str, ...] = ()
    default_on: bool = False


@dataclass(frozen=True)
class FlagSet:
    runtime: str
    version: str
    flags: dict[str, Flag] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)  # `-tp` / `-ngl` key -> the flag's own key

    def get(self, key: str) -> Flag | None:
        """The flag of ``key`` (its own key, or an alias such as ``tp`` for --tensor-parallel-size)."""
        return self.flags.get(key) or self.flags.get(self.aliases.get(key, ""))

    def by_flag(self, flag: str) -> Flag | None:
        return self.flags.get(flag_key(flag))


def flag_key(name: str) -> str:
    """`--max-model-len`, `max-model-len` and `max_model_len` are one key: max_model_len."""
    return name.lstrip("-").replace("-", "_")


def _from_table(runtime: str, version: str, table: dict[str, dict], default_on: frozenset[str]) -> FlagSet:
    flags, aliases = {}, {}
    for name, meta in table.items():
        key = flag_key(name)
        on = bool(meta.get("default") is True) or key in default_on
        flags[key] = Flag(key, "--" + key.replace("_", "-"), meta["type"], tuple(meta.get("choices", ())), on)
        aliases.update({flag_key(a): key for a in meta.get("aliases", ())})
    return FlagSet(runtime, version, flags, {a: k for a, k in aliases.items() if a not in flags})


def unknown_fix(key: str, flagset: FlagSet, hint: str = "") -> str:
    """The fix for a flag the engine does not have: the closest one, else where to look; never dropped."""
    import difflib

    close = difflib.get_close_matches(key, list(flagset.flags), n=1, cutoff=0.75)
    tool = "vllm serve" if flagset.runtime == "vllm" else "llama-server"
    fix = (f"did you mean {close[0]} (--{close[0].replace('_', '-')})? (flags are never dropped silently)" if close
           else f"check `{tool} --help`; unknown flags are refused, never dropped")
    return f"{fix}{'; ' + hint if hint else ''}"


def known_versions() -> list[str]:
    return sorted(p.stem.removeprefix("vllm-") for p in VLLM_FLAGS_DIR.glob("vllm-*.json"))


@lru_cache(maxsize=8)
def flag_set(runtime: str, version: str | None = None) -> FlagSet:
    """The flags ``runtime`` accepts (at ``version``: only the version the flag list was made from exists)."""
    if runtime == "llama-cpp":
        return _from_table(runtime, version or "any", LLAMA_SERVER_FLAGS, frozenset())
    if runtime != "vllm":
        raise SparkError(f"no flag set for runtime {runtime!r}", fix="use runtime vllm or llama-cpp")
    known = known_versions()
    wanted = version or VLLM_DEFAULT_VERSION
    if wanted not in known:
        raise SparkError(f"engine_version {wanted} has no flag list here (this sparkhelpers knows vLLM "
                         f"{', '.join(known) or 'none'})",
                         fix=f"set engine_version to one of {', '.join(known)}, or remove engine_version")
    path = VLLM_FLAGS_DIR / f"vllm-{wanted}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SparkError(f"cannot read the vLLM flag list {path}: {exc}",
                         fix="reinstall sparkhelpers (the file ships with the package)") from None
    return _from_table(runtime, wanted, data["flags"], VLLM_DEFAULT_ON)
