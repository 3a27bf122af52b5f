#!/usr/bin/env python3
"""The real tiny engine for tests: llama.cpp's server (xllamacpp) with SmolLM2-135M on 127.0.0.1, 1 thread.

Usage: tests/bench_engine.py PORT [N_PARALLEL] [ALIAS]   Serves until SIGTERM. Model alias: smollm2.
With API_KEY_FILE set, requests must carry that key (as the gateway's engines do). /metrics is on.
ENGINE_EMBEDDINGS=mean|last|cls serves /v1/embeddings with that pooling (llama.cpp's --embeddings --pooling: an
embedding server, which refuses completions).
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from sparkhelpers.sim.image import smollm2_gguf


def gguf_path() -> str:
    return str(smollm2_gguf())


def main() -> None:
    import xllamacpp as xlc

    port = int(sys.argv[1])
    params = xlc.CommonParams()
    params.model.path = gguf_path()
    params.model_alias = [sys.argv[3] if len(sys.argv) > 3 else "smollm2"]  # a list: a str becomes a set of chars
    params.hostnames = ["127.0.0.1"]
    params.port = port
    params.n_parallel = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    params.n_ctx = 4096
    params.cpuparams.n_threads = 1  # 1 beats 2 on a 2-core machine: the HTTP thread and client need a core
    params.cpuparams_batch.n_threads = 1
    params.endpoint_metrics = True
    pooling = os.environ.get("ENGINE_EMBEDDINGS", "")
    if pooling:
        params.embedding = True
        params.pooling_type = getattr(xlc.llama_pooling_type, f"LLAMA_POOLING_TYPE_{pooling.upper()}")
    if os.environ.get("API_KEY_FILE"):
        with open(os.environ["API_KEY_FILE"]) as fh:
            params.api_keys = [fh.read().strip()]
    server = xlc.Server(params)  # returns once listening
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print("ready", flush=True)
    stop.wait()
    del server


if __name__ == "__main__":
    main()
