"""vLLM's tuning levers, mapped onto the stand-in's real llama.cpp backend so they change what they change
on a GPU (the tuner is tested against this; a lever that did nothing here would make it untestable):

- ``--max-num-seqs N``            → N llama.cpp slots (sequences decoded together; capped at SPARKSIM_MAX_SLOTS,
                                    default 16). Unset: 4 (not vLLM's 256: the emulator's KV pool is small).
- ``--max-num-batched-tokens T``  → llama.cpp's logical batch (tokens scheduled per step, prompt chunks
                                    included); the physical batch is min(T, 512). Unset: 2048.
- ``--[no-]enable-prefix-caching`` → llama.cpp's prompt cache: off sends ``cache_prompt: false`` with every
                                    request and keeps no host-RAM prompt cache, so a repeated prefix is
                                    recomputed; like vLLM, the prefix-cache counters then stay 0. Default on.
- ``--[no-]enable-chunked-prefill`` → off: a prompt is prefilled in one step (the batch is raised to
                                    max-model-len), and vLLM's check refuses max-num-batched-tokens < max-model-len.
- ``--kv-cache-dtype fp8*``        → q8_0 K and V cache (with flash attention), and twice the KV pool tokens in
                                    about the same memory, as fp8 doubles vLLM's KV capacity. Throughput
                                    change on this CPU is small (measured in the tuneapi closing note).
- ``--speculative-config '{"method": "ngram", ...}'`` → llama.cpp's n-gram (prompt-lookup) speculative
                                    decoding: draft length num_speculative_tokens, lookup prompt_lookup_max.
                                    Other methods (draft model, EAGLE, MTP) are accepted and have no effect (no
                                    draft model in the sim); the log says so.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

DEFAULT_SLOTS = 4
DEFAULT_BATCH = 2048
UBATCH_MAX = 512
KV_POOL_TOKENS = 4096  # the emulator's KV pool at 16-bit cache (about 94 MB for SmolLM2-135M)
FP8_KINDS = ("fp8", "fp8_e4m3", "fp8_e5m2", "fp8_inc", "fp8_ds_mla")


class LeverError(ValueError):
    """A combination vLLM itself refuses at start (the engine exits 1 with vLLM's message)."""


@dataclass(frozen=True)
class Levers:
    slots: int = DEFAULT_SLOTS
    batch_tokens: int = DEFAULT_BATCH
    prefix_cache: bool = True
    chunked_prefill: bool = True
    kv_fp8: bool = False
    spec_ngram: int = 0  # draft tokens per step (0 = no speculative decoding)
    spec_lookup: int = 4  # n-gram length looked up in the context
    spec_ignored: str = ""  # a speculative method the sim cannot emulate
    max_model_len: int = 4096
    ctx_total: int = 0  # llama-server's -c (its own semantics: the whole cache); 0 = the vLLM-style pool
    unified: bool = True  # one KV pool for all slots (vLLM's paging); llama-server: -kvu
    ubatch: int = 0  # llama-server's -ub; 0 = min(batch, 512)

    @property
    def ubatch_tokens(self) -> int:
        return min(self.ubatch or UBATCH_MAX, self.batch_tokens)

    @property
    def kv_tokens(self) -> int:
        """The KV pool of all slots: at least one full sequence; fp8 holds twice the tokens in the same memory."""
        if self.ctx_total:
            return self.ctx_total
        pool = int(os.environ.get("SPARKSIM_KV_TOKENS", str(KV_POOL_TOKENS)))
        return max(pool * (2 if self.kv_fp8 else 1), self.max_model_len)

    def describe(self) -> str:
        spec = f"ngram x{self.spec_ngram}" if self.spec_ngram else (f"{self.spec_ignored} (not emulated)"
                                                                     if self.spec_ignored else "off")
        return (f"slots={self.slots} batch={self.batch_tokens} ubatch={self.ubatch_tokens} "
                f"prefix_cache={'on' if self.prefix_cache else 'off'} "
                f"chunked_prefill={'on' if self.chunked_prefill else 'off'} "
                f"kv={'q8_0' if self.kv_fp8 else 'f16'} kv_pool={self.kv_tokens} speculative={spec}")


def size(text: object, default: int) -> int:
    """vLLM's human-readable sizes: 2k = 2000, 2K = 2048 (also m/M, g/G); None → default."""
    if text is None or text == "auto":
        return default
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmMgG]?)", str(text))
    if not m:
        raise LeverError(f"invalid size value: {text!r}")
    unit = m.group(2)
    scale = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "K": 2**10, "M": 2**20, "G": 2**30}[unit]
    return int(float(m.group(1)) * scale)


def from_vllm(args: object) -> Levers:
    """The levers of a parsed `vllm serve` command line (the stand-in's argparse namespace)."""
    cap = int(os.environ.get("SPARKSIM_MAX_SLOTS", "16"))
    seqs = getattr(args, "max_num_seqs", None)
    if seqs is not None and seqs < 1:
        raise LeverError(f"max_num_seqs ({seqs}) must be at least 1.")
    max_len = size(getattr(args, "max_model_len", None), 4096)
    batch_given = getattr(args, "max_num_batched_tokens", None)
    batch = size(batch_given, DEFAULT_BATCH)
    slots = min(seqs or DEFAULT_SLOTS, cap)
    if seqs is not None and batch < seqs:
        raise LeverError(f"max_num_batched_tokens ({batch}) must be greater than or equal to max_num_seqs ({seqs}).")
    chunked = getattr(args, "enable_chunked_prefill", None) is not False
    if not chunked:
        if batch_given is not None and batch < max_len:
            raise LeverError(f"max_num_batched_tokens ({batch}) is smaller than max_model_len ({max_len}). This "
                             "effectively limits the maximum sequence length to max_num_batched_tokens and makes "
                             "vLLM reject longer sequences. Please increase max_num_batched_tokens or decrease "
                             "max_model_len.")
        batch = max(batch, max_len)
    spec, lookup, ignored = _speculative(getattr(args, "speculative_config", None))
    return Levers(slots=slots, batch_tokens=batch, prefix_cache=getattr(args, "enable_prefix_caching", None)
                  is not False, chunked_prefill=chunked, kv_fp8=(getattr(args, "kv_cache_dtype", None) or "auto")
                  in FP8_KINDS, spec_ngram=spec, spec_lookup=lookup, spec_ignored=ignored, max_model_len=max_len)


def _speculative(config: object) -> tuple[int, int, str]:
    if not config:
        return 0, 4, ""
    if not isinstance(config, dict):
        raise LeverError(f"speculative_config must be a JSON object, got {config!r}")
    method = str(config.get("method") or ("draft_model" if config.get("model") else ""))
    if method not in ("ngram", "ngram_gpu"):
        return 0, 4, method or "unknown"
    n = int(config.get("num_speculative_tokens") or 0)
    if n < 1:
        raise LeverError("num_speculative_tokens must be provided with speculative model.")
    return n, int(config.get("prompt_lookup_max") or config.get("prompt_lookup_min") or 4), ""


def apply(levers: Levers, params: object) -> None:
    """Set an xllamacpp ``CommonParams`` from the levers."""
    import xllamacpp as xlc

    params.n_parallel = levers.slots
    params.n_ctx = levers.kv_tokens
    params.kv_unified = levers.unified  # vLLM: one pool for all sequences, each may reach max-model-len
    params.n_batch = levers.batch_tokens
    params.n_ubatch = levers.ubatch_tokens
    params.cont_batching = True
    if not levers.prefix_cache:
        params.cache_ram_mib = 0  # no host-RAM prompt cache either
        params.cache_idle_slots = False
    if levers.kv_fp8:
        params.flash_attn_type = xlc.llama_flash_attn_type.LLAMA_FLASH_ATTN_TYPE_ENABLED  # quantized V needs it
        params.cache_type_k = xlc.ggml_type.GGML_TYPE_Q8_0
        params.cache_type_v = xlc.ggml_type.GGML_TYPE_Q8_0
    if levers.spec_ngram:
        spec = params.speculative
        spec.types = [xlc.common_speculative_type.COMMON_SPECULATIVE_TYPE_NGRAM_SIMPLE]
        spec.draft.n_max = levers.spec_ngram
        spec.draft.n_min = 0
        spec.ngram_simple.size_n = levers.spec_lookup
        spec.ngram_simple.size_m = levers.spec_ngram


def request_settings(levers: Levers, body: dict) -> dict:
    """Per-request settings the levers imply (prefix caching is per request in llama.cpp)."""
    if not levers.prefix_cache:
        body["cache_prompt"] = False
    return body
