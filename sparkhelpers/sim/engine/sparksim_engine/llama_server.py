"""`llama-server` stand-in (test infrastructure) with llama.cpp's usual flags, backed by xllamacpp.

The GGUF given with -m is really loaded (llama.cpp's own server code inside xllamacpp), so this is
llama-server in all but the binary. Unknown flags exit 1 with llama.cpp's "invalid argument" line.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from sparksim_engine.common import fault, log
from sparksim_engine.levers import Levers


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # llama.cpp style, exit 1
        print(f"error: {message}", file=sys.stderr)
        sys.exit(1)


def parser() -> Parser:
    p = Parser(prog="llama-server", allow_abbrev=False, add_help=True)
    p.add_argument("-m", "--model", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("-c", "--ctx-size", type=int, default=4096)
    p.add_argument("-np", "--parallel", type=int, default=4)
    p.add_argument("-t", "--threads", type=int, default=1)
    p.add_argument("-tb", "--threads-batch", type=int)
    p.add_argument("-a", "--alias")
    p.add_argument("-ngl", "--n-gpu-layers", "--gpu-layers", dest="n_gpu_layers")
    p.add_argument("-b", "--batch-size", type=int)
    p.add_argument("-ub", "--ubatch-size", type=int)
    p.add_argument("-fa", "--flash-attn", nargs="?", const="on", choices=["on", "off", "auto"])
    p.add_argument("--api-key")
    p.add_argument("--jinja", action="store_true")
    p.add_argument("--no-webui", action="store_true")
    p.add_argument("--metrics", action="store_true")
    p.add_argument("--mlock", action="store_true")
    p.add_argument("--no-mmap", action="store_true")
    p.add_argument("-cb", "--cont-batching", action="store_true")
    p.add_argument("-ctk", "--cache-type-k")
    p.add_argument("-ctv", "--cache-type-v")
    p.add_argument("-kvu", "--kv-unified", action="store_true")
    p.add_argument("--cache-prompt", dest="cache_prompt", action="store_true", default=True)
    p.add_argument("--no-cache-prompt", dest="cache_prompt", action="store_false")
    p.add_argument("--log-disable", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def levers(args: argparse.Namespace) -> Levers:
    """llama.cpp's own semantics: -c is the whole cache (split over -np slots unless -kvu), -b/-ub the batches;
    a q8_0 K+V cache (-ctk/-ctv q8_0) is the fp8 lever of levers.py."""
    return Levers(slots=args.parallel, batch_tokens=args.batch_size or 2048, ubatch=args.ubatch_size or 0,
                  prefix_cache=args.cache_prompt, kv_fp8=args.cache_type_k == "q8_0" and args.cache_type_v == "q8_0",
                  max_model_len=args.ctx_size, ctx_total=args.ctx_size, unified=args.kv_unified)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    print("build: sparksim (xllamacpp) — test stand-in for llama.cpp's llama-server", file=sys.stderr)
    if not Path(args.model).is_file():
        print(f"llama_model_load: error loading model: failed to open {args.model}: No such file or directory\n"
              "main: exiting due to model loading error", file=sys.stderr)
        return 1
    kind, count = fault()
    if kind == "crash-load":
        print("main: exiting due to model loading error (sparksim fault: crash during load)", file=sys.stderr)
        return 1
    if kind == "hang-load":
        print("main: loading model", file=sys.stderr, flush=True)
        while True:
            time.sleep(3600)
    from sparksim_engine.backend import Backend, serve

    print("main: loading model", file=sys.stderr, flush=True)
    backend = Backend(args.model, threads=args.threads, levers=levers(args))
    name = args.alias or Path(args.model).name
    api_key = args.api_key or os.environ.get("LLAMA_API_KEY", "")

    def ready() -> None:
        print(f"main: server is listening on http://{args.host}:{args.port} - starting the main loop",
              file=sys.stderr, flush=True)

    try:
        serve(backend, host=args.host, port=args.port, served_names=[name], flavor="llama.cpp",
              crash_after=count if kind == "crash-after" else 0, api_key=api_key, on_ready=ready)
    except OSError as exc:
        log("ERROR", f"couldn't bind HTTP server socket, hostname: {args.host}, port: {args.port}: {exc.strerror}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
