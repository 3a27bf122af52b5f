"""sparksim engine: TEST INFRASTRUCTURE that lives only in the emulated cluster's engine image.

It provides `ray`, `vllm` and `llama-server` commands that accept the flags of the real tools, check
what the real tools would check (flags, GPUs in the Ray cluster, node ranks, model in the HF cache)
and then serve a real tiny model (SmolLM2-135M via xllamacpp, 1 thread) over the OpenAI API.
Never used outside `sparkhelpers sim`.
"""
