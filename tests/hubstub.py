"""A local stand-in for the Hugging Face Hub API on 127.0.0.1: just the endpoints huggingface_hub
2.x calls for ``model_info`` and ``snapshot_download``:

- GET  /api/models/{repo}[/revision/{rev}]      model info (id, sha, gated, siblings)
- GET  /api/models/{repo}/tree/{rev}?recursive=  file listing (path, size, oid, lfs{oid,size,pointerSize})
- HEAD /{repo}/resolve/{rev}/{path}              ETag, X-Repo-Commit, Content-Length, Accept-Ranges
- GET  /{repo}/resolve/{rev}/{path}              the bytes; honours Range (206 + Content-Range)

Gated repos answer the resolve endpoints with 401 (no token) or 403 (token without access) and
``X-Error-Code: GatedRepo``, as the Hub does. ``throttle_bps`` slows file bodies so a test can
interrupt a download mid-file. Every request is recorded in ``requests``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


def safetensors_bytes(tensors: dict[str, int]) -> bytes:
    """A valid safetensors file: name -> number of bf16 values (the data is deterministic noise)."""
    header, offset = {}, 0
    for name, count in tensors.items():
        header[name] = {"dtype": "BF16", "shape": [count], "data_offsets": [offset, offset + 2 * count]}
        offset += 2 * count
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    data = (hashlib.sha256(raw).digest() * (offset // 32 + 1))[:offset]
    return struct.pack("<Q", len(raw)) + raw + data


def fake_model(shard_values: int = 400_000, shards: int = 2) -> dict[str, bytes]:
    """A small sharded model repo: config, tokenizer, index, shards, plus files we must skip."""
    files: dict[str, bytes] = {
        "config.json": json.dumps({"architectures": ["LlamaForCausalLM"], "num_hidden_layers": 2,
                                   "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 64,
                                   "torch_dtype": "bfloat16", "max_position_embeddings": 2048}).encode(),
        "tokenizer.json": b'{"version": "1.0", "model": {"type": "BPE"}}',
        "tokenizer_config.json": b'{"bos_token": "<s>"}',
        "original/consolidated.00.pth": b"x" * 1000,
        "metal/model.bin": b"y" * 1000,
    }
    weight_map, total = {}, 0
    for i in range(1, shards + 1):
        name = f"model-{i:05d}-of-{shards:05d}.safetensors"
        files[name] = safetensors_bytes({f"layer{i}.weight": shard_values})
        weight_map[f"layer{i}.weight"] = name
        total += 2 * shard_values
    files["model.safetensors.index.json"] = json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}).encode()
    return files


@dataclass
class Repo:
    files: dict[str, bytes]
    sha: str = "0123456789abcdef0123456789abcdef01234567"
    gated: bool = False


@dataclass
class HubStub:
    repos: dict[str, Repo] = field(default_factory=dict)
    tokens: set[str] = field(default_factory=set)  # tokens with access to gated repos
    throttle_bps: int = 0
    requests: list[tuple[str, str, str, bool]] = field(default_factory=list)  # method, path, range, auth
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubStub:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # noqa: ANN002
                pass

            def do_HEAD(self):  # noqa: N802
                stub._handle(self, head=True)

            def do_GET(self):  # noqa: N802
                stub._handle(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()

    # ---- request handling ------------------------------------------------------------------------

    def _send(self, h, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False) -> None:
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        if "Content-Length" not in (headers or {}):
            h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if not head and body:
            h.wfile.write(body)

    def _json(self, h, data, head: bool = False) -> None:
        self._send(h, 200, json.dumps(data).encode(), {"Content-Type": "application/json"}, head)

    def _error(self, h, status: int, code: str, message: str, head: bool = False) -> None:
        body = json.dumps({"error": message}).encode()
        self._send(h, status, body, {"Content-Type": "application/json", "X-Error-Code": code,
                                     "X-Error-Message": message}, head)

    def _handle(self, h, head: bool) -> None:  # noqa: ANN001
        url = urlparse(h.path)
        path = unquote(url.path)
        auth = h.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else ""
        self.requests.append((h.command, path, h.headers.get("Range", ""), bool(token)))
        m = re.match(r"^/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?$", path)
        if m:
            repo = self.repos.get(m.group(1))
            if repo is None:
                return self._error(h, 404, "RepoNotFound", "Repository not found", head)
            return self._json(h, {"id": m.group(1), "modelId": m.group(1), "sha": repo.sha, "private": False,
                                  "gated": "manual" if repo.gated else False, "disabled": False,
                                  "siblings": [{"rfilename": p} for p in sorted(repo.files)]}, head)
        m = re.match(r"^/api/models/([^/]+/[^/]+)/tree/([^/]+)(/.*)?$", path)
        if m:
            repo = self.repos.get(m.group(1))
            if repo is None:
                return self._error(h, 404, "RepoNotFound", "Repository not found", head)
            entries, dirs = [], set()
            for p, data in sorted(repo.files.items()):
                parts = p.split("/")
                for i in range(1, len(parts)):
                    dirs.add("/".join(parts[:i]))
                entry = {"type": "file", "path": p, "size": len(data),
                         "oid": hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()}
                if p.endswith(".safetensors"):
                    entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
                entries.append(entry)
            entries += [{"type": "directory", "path": d, "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0}
                        for d in sorted(dirs)]
            return self._json(h, entries, head)
        m = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
        if m:
            repo = self.repos.get(m.group(1))
            if repo is None:
                return self._error(h, 404, "RepoNotFound", "Repository not found", head)
            if repo.gated and token not in self.tokens:
                status = 403 if token else 401
                return self._error(h, status, "GatedRepo",
                                   f"Access to model {m.group(1)} is restricted. You must have access to it "
                                   "and be authenticated to access it.", head)
            data = repo.files.get(m.group(3))
            if data is None:
                return self._error(h, 404, "EntryNotFound", "Entry not found", head)
            etag = hashlib.sha256(data).hexdigest() if m.group(3).endswith(".safetensors") else \
                hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
            headers = {"ETag": f'"{etag}"', "X-Repo-Commit": repo.sha, "Accept-Ranges": "bytes",
                       "Content-Type": "application/octet-stream"}
            start, status = 0, 200
            rng = re.match(r"bytes=(\d+)-(\d*)", h.headers.get("Range", ""))
            if rng and not head:
                start, status = int(rng.group(1)), 206
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            body = data[start:]
            headers["Content-Length"] = str(len(body))
            if head:
                return self._send(h, 200, b"", {**headers, "Content-Length": str(len(data))}, head=True)
            h.send_response(status)
            for k, v in headers.items():
                h.send_header(k, v)
            h.end_headers()
            chunk = 16384
            for i in range(0, len(body), chunk):
                try:
                    h.wfile.write(body[i:i + chunk])
                except (BrokenPipeError, ConnectionResetError):
                    return None
                if self.throttle_bps:
                    time.sleep(chunk / self.throttle_bps)
            return None
        return self._error(h, 404, "NotFound", f"stub does not implement {path}", head)


def write_cached_model(cache: str | os.PathLike, repo: str, files: dict[str, bytes], sha: str = Repo.sha) -> Path:
    """Put ``files`` into ``cache`` in the hub layout huggingface_hub writes (blobs, refs, snapshot links)."""
    model = Path(cache) / "hub" / ("models--" + repo.replace("/", "--"))
    (model / "blobs").mkdir(parents=True, exist_ok=True)
    (model / "refs").mkdir(parents=True, exist_ok=True)
    (model / "refs" / "main").write_text(sha)
    snap = model / "snapshots" / sha
    for path, data in files.items():
        if path.startswith(("original/", "metal/")):
            continue
        blob = model / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snap / path
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return model
