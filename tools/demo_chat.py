#!/usr/bin/env python3
"""`make demo` helper: wait for the OpenAI endpoint, stream one chat answer, print it and the usage.

Usage: tools/demo_chat.py BASE_URL [QUESTION]   (stdlib only; runs on the emulated head node)
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request


def main() -> int:
    base = sys.argv[1].rstrip("/")
    question = sys.argv[2] if len(sys.argv) > 2 else "In one sentence: what is a GPU cluster good for?"
    deadline = time.monotonic() + 120
    while True:
        try:
            models = json.load(urllib.request.urlopen(f"{base}/v1/models", timeout=5))
            break
        except OSError as exc:
            if time.monotonic() > deadline:
                print(f"demo: no answer from {base}/v1/models within 120 s: {exc}", file=sys.stderr)
                return 1
            time.sleep(1)
    model = models["data"][0]["id"]
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": 64,
                       "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}).encode()
    req = urllib.request.Request(f"{base}/v1/chat/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    print(f"model:    {model}\nquestion: {question}\nanswer:   ", end="", flush=True)
    usage = None
    t0 = time.monotonic()
    with urllib.request.urlopen(req, timeout=120) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            for choice in chunk.get("choices") or []:
                print((choice.get("delta") or {}).get("content") or "", end="", flush=True)
            usage = chunk.get("usage") or usage
    elapsed = time.monotonic() - t0
    print()
    if not usage or not usage.get("completion_tokens"):
        print("demo: the stream carried no tokens/usage", file=sys.stderr)
        return 1
    print(f"usage:    {usage['prompt_tokens']} prompt + {usage['completion_tokens']} completion tokens "
          f"in {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
