"""Read-only check of one model in a Hugging Face cache: complete, sizes right, writable, owned.

Standard library only and self-contained on purpose: the head imports it, and ``sync`` sends this
same file over SSH to ``python3 - ARGS_JSON`` on each worker, so the head and the
workers are judged by one implementation. It never writes anything.

Checks: refs/<revision> -> snapshots/<commit>; config.json and a tokenizer present; every shard the
safetensors index names present, and every safetensors file exactly as long as its own header says
(a truncated shard is caught without the Hub); sizes against the Hub listing huggingface_hub caches
in trees/<commit>.json, and against an ``expected`` manifest (the head's, when syncing).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import sys

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tiktoken.model")
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


def repo_dir(cache: str, repo: str) -> str:
    return os.path.join(cache, "hub", "models--" + repo.replace("/", "--"))


def _commit(model_dir: str, revision: str | None) -> str | None:
    rev = revision or "main"
    if COMMIT_RE.match(rev):
        return rev
    try:
        with open(os.path.join(model_dir, "refs", rev), encoding="utf-8") as fh:
            return fh.read().strip() or None
    except OSError:
        return None


def snapshot_dir(cache: str, repo: str, revision: str | None = None) -> str | None:
    """The snapshot directory of ``repo`` at ``revision`` in ``cache``, if it is there."""
    model_dir = repo_dir(cache, repo)
    commit = _commit(model_dir, revision)
    snap = os.path.join(model_dir, "snapshots", commit) if commit else None
    return snap if snap and os.path.isdir(snap) else None


def _safetensors_expected_size(path: str) -> int | None:
    """8 + header length + the end of the last tensor; None if the header is unreadable."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                return None
            (length,) = struct.unpack("<Q", raw)
            if length > 100 * 1024 * 1024:
                return None
            header = json.loads(fh.read(length))
    except (OSError, ValueError):
        return None
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    return 8 + length + end


def _hub_sizes(model_dir: str, commit: str) -> dict[str, int]:
    try:
        with open(os.path.join(model_dir, "trees", commit + ".json"), encoding="utf-8") as fh:
            files = json.load(fh).get("files", {})
    except (OSError, ValueError):
        return {}
    out = {}
    for path, info in files.items():
        size = info.get("lfs_size") or info.get("size")
        if isinstance(size, int):
            out[path] = size
    return out


def _write_problems(cache: str, model_dir: str) -> tuple[list[str], list[str]]:
    """Paths we could not write into, and paths owned by someone else (first few of each)."""
    uid = os.geteuid()
    not_writable, foreign = [], []
    probe = cache
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    if not os.access(probe, os.W_OK | os.X_OK):
        not_writable.append(probe)
    if os.path.isdir(model_dir):
        for root, dirs, files in os.walk(model_dir):
            for name in dirs + files:
                p = os.path.join(root, name)
                try:
                    st = os.lstat(p)
                except OSError:
                    continue
                if st.st_uid != uid and uid != 0:
                    foreign.append(p)
                    if len(foreign) >= 5:
                        return not_writable, foreign
            if os.stat(root).st_uid != uid and uid != 0:
                foreign.append(root)
    for d in (os.path.join(cache, "hub"), model_dir):
        if os.path.isdir(d) and not os.access(d, os.W_OK | os.X_OK) and d not in not_writable:
            not_writable.append(d)
    return not_writable, foreign


def check(cache: str, repo: str, revision: str | None = None, expected: dict | None = None,
          preflight: bool = False) -> dict:
    """The report (a JSON-able dict). ``complete`` is the verdict; ``problems`` says why not."""
    model_dir = repo_dir(cache, repo)
    report: dict = {"repo": repo, "model_dir": model_dir, "exists": os.path.isdir(model_dir), "commit": None,
                    "snapshot": None, "files": {}, "total_bytes": 0, "problems": [], "complete": False,
                    "user": _user(), "uid": os.geteuid()}
    if preflight:
        report["not_writable"], report["foreign_owned"] = _write_problems(cache, model_dir)
        # where the files will land: the model's own directory when it exists (it may be a mount or a
        # symlink to another disk), else its nearest existing parent
        probe = model_dir
        while not os.path.exists(probe) and os.path.dirname(probe) != probe:
            probe = os.path.dirname(probe)
        report["free_bytes"] = shutil.disk_usage(probe).free
    problems = report["problems"]
    if not report["exists"]:
        problems.append(f"not in the cache ({model_dir} missing)")
        return report
    commit = _commit(model_dir, revision)
    if commit is None:
        problems.append(f"no refs/{revision or 'main'} (download never finished)")
        return report
    snap = os.path.join(model_dir, "snapshots", commit)
    report["commit"], report["snapshot"] = commit, snap
    if not os.path.isdir(snap):
        problems.append(f"snapshot {commit[:12]} missing")
        return report
    files: dict[str, int] = {}
    for root, _dirs, names in os.walk(snap):
        for name in names:
            p = os.path.join(root, name)
            rel = os.path.relpath(p, snap)
            try:
                files[rel] = os.stat(p).st_size  # follows the snapshot symlink to the blob
            except OSError:
                problems.append(f"{rel}: broken link (blob missing)")
    report["files"] = files
    report["total_bytes"] = sum(files.values())
    if "config.json" not in files:
        problems.append("config.json missing")
    gguf = any(f.endswith(".gguf") for f in files)  # a GGUF carries its own tokenizer
    if not gguf and not any(t in files for t in TOKENIZER_FILES) and not any(f.endswith(".tiktoken") for f in files):
        problems.append("no tokenizer (tokenizer.json, tokenizer.model, vocab.json or *.tiktoken)")
    shards = set()
    if "model.safetensors.index.json" in files:
        try:
            with open(os.path.join(snap, "model.safetensors.index.json"), encoding="utf-8") as fh:
                shards = set(json.load(fh).get("weight_map", {}).values())
        except (OSError, ValueError):
            problems.append("model.safetensors.index.json unreadable")
        for shard in sorted(shards - set(files)):
            problems.append(f"{shard}: missing (listed in the safetensors index)")
    elif not any(f.endswith(".safetensors") for f in files) and not gguf:
        problems.append("no weights (*.safetensors or *.gguf)")
    for rel, size in sorted(files.items()):
        if rel.endswith(".safetensors"):
            want = _safetensors_expected_size(os.path.join(snap, rel))
            if want is None:
                problems.append(f"{rel}: unreadable safetensors header")
            elif want != size:
                problems.append(f"{rel}: {size} bytes, its header says {want} (truncated or corrupt)")
    for rel, want in sorted(_hub_sizes(model_dir, commit).items()):
        if rel in files and files[rel] != want:
            problems.append(f"{rel}: {files[rel]} bytes, the Hub says {want}")
    for rel, want in sorted((expected or {}).items()):
        if rel not in files:
            problems.append(f"{rel}: missing (the head has it)")
        elif files[rel] != want:
            problems.append(f"{rel}: {files[rel]} bytes, the head has {want}")
    report["complete"] = not problems
    return report


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        return str(os.geteuid())


if __name__ == "__main__":
    # Remote use: this file on stdin of ``python3 - ARGS_JSON`` (paths and a repo id; no secrets).
    print(json.dumps(check(**json.loads(sys.argv[1]))))
