"""Download a model into HF_CACHE (hub/models--org--name) with huggingface_hub, then verify it.

The token comes from sparkhelpers.secrets (HF_TOKEN_FILE, HF_TOKEN, then the token `hf auth login`
saved) and is handed to huggingface_hub in-process: it never appears on a command line. huggingface_hub answers the Hub
questions (model info, file tree, URLs, auth headers, error types); the bytes we fetch ourselves,
because huggingface_hub 2.x downloads into a per-process temporary file that it deletes when
interrupted, so a killed 60 GB download would start again from zero. Here a file grows in
``blobs/<etag>.incomplete`` and a later run continues it with an HTTP Range request (and checks
the sha256 of a resumed LFS file). The result is the standard cache layout (blobs, refs,
snapshots/<commit>/ symlinks) that vLLM and huggingface_hub read.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from sparkhelpers.config import Config
from sparkhelpers.errors import SparkError
from sparkhelpers.models import snapshot_check
from sparkhelpers.models.catalog import ModelSpec
from sparkhelpers.secrets import secret_value

# Files vLLM never reads: Meta's original consolidated checkpoints and Apple Metal weights.
IGNORE_PATTERNS = ["original/*", "metal/*"]


def cache_root(cfg: Config) -> Path:
    return Path(cfg.require("HF_CACHE")).expanduser()


def ensure_hub_dir(cache: Path, source: str = "") -> Path:
    """HF_CACHE/hub, created only below a parent that exists: never a /raid tree on a box without /raid."""
    hub = cache / "hub"
    if not cache.is_dir() and not cache.parent.is_dir():
        where = f" ({source})" if source else ""
        raise SparkError(f"HF_CACHE={cache}{where}: its parent {cache.parent} does not exist",
                         fix=f"create it (sudo mkdir -p {cache} && sudo chown $(id -un): {cache}), or "
                             "sparkhelpers config set HF_CACHE ~/.cache/huggingface")
    try:
        hub.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SparkError(f"cannot create {hub}: {exc.strerror}",
                         fix=f"sudo mkdir -p {hub} && sudo chown -R $(id -un): {cache}") from None
    if not os.access(hub, os.W_OK):
        raise SparkError(f"{hub} is not writable by {os.environ.get('USER', 'this user')}",
                         fix=f"sudo chown -R $(id -un): {cache}")
    return hub


def gated_error(spec: ModelSpec, token: str | None) -> SparkError:
    page = f"https://huggingface.co/{spec.repo}"
    if token:
        return SparkError(f"{spec.repo} is gated and this token has no access to it",
                          fix=f"request access at {page} with the account that owns the token")
    return SparkError(f"{spec.repo} is gated and no Hugging Face token is configured",
                      fix=f"accept the licence at {page}, then: printf %s \"$TOKEN\" | "
                          "sparkhelpers config set HF_TOKEN -   (or set HF_TOKEN_FILE, or run hf auth login)")


def _hub_error(exc: Exception, spec: ModelSpec, token: str | None) -> SparkError:
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    page = f"https://huggingface.co/{spec.repo}"
    if isinstance(exc, GatedRepoError):
        return gated_error(spec, token)
    if isinstance(exc, RevisionNotFoundError):
        return SparkError(f"{spec.repo} has no revision {spec.revision!r}",
                          fix="check MODEL_REVISION (a branch, tag or commit of the repo)")
    if isinstance(exc, RepositoryNotFoundError):
        hint = "" if token else " (private repos need HF_TOKEN)"
        return SparkError(f"{spec.repo} was not found on the Hub{hint}", fix=f"check the repo id at {page}")
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status == 401:
        return SparkError(f"the Hub refused the token for {spec.repo} (401)",
                          fix="replace HF_TOKEN with a valid read token")
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    return SparkError(f"download of {spec.repo} failed: {text}",
                      fix=f"check the network to {endpoint} and run the download again (it resumes)")


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    etag: str  # the blob name huggingface_hub uses: sha256 for LFS files, the git blob id otherwise
    lfs_sha256: str | None
    blob_id: str = ""


def plan_files(api, spec: ModelSpec, commit: str) -> list[RemoteFile]:  # noqa: ANN001
    from huggingface_hub.hf_api import RepoFile
    from huggingface_hub.utils import filter_repo_objects

    entries = [f for f in api.list_repo_tree(spec.repo, revision=commit, recursive=True) if isinstance(f, RepoFile)]
    keep = set(filter_repo_objects([f.path for f in entries], ignore_patterns=IGNORE_PATTERNS))
    return [RemoteFile(f.path, f.lfs.size if f.lfs else f.size, f.lfs.sha256 if f.lfs else f.blob_id,
                       f.lfs.sha256 if f.lfs else None, f.blob_id) for f in entries if f.path in keep]


def write_tree_listing(model_dir: Path, commit: str, files: list[RemoteFile]) -> None:
    """Record the Hub's sizes where huggingface_hub keeps them (trees/<commit>.json), listing only the
    files we kept, so both our verify and huggingface_hub's offline check judge the same file set.
    A private huggingface_hub helper: if a future version moves it, we simply skip the listing."""
    try:
        from huggingface_hub._tree_cache import TreeCacheEntry, write_tree_cache
    except ImportError:
        return
    write_tree_cache(str(model_dir), commit, {
        f.path: TreeCacheEntry(size=f.size, blob_id=f.blob_id, lfs_sha256=f.lfs_sha256,
                               lfs_size=f.size if f.lfs_sha256 else None) for f in files})


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(8 * 1024 * 1024):
            h.update(chunk)
    return h.hexdigest()


def fetch_blob(session, url: str, headers: dict, blob: Path, f: RemoteFile, advance) -> None:  # noqa: ANN001
    """Download one file to ``blob``, resuming ``blob.incomplete`` left by an interrupted run (Range)."""
    from huggingface_hub.utils import hf_raise_for_status

    part = blob.with_name(blob.name + ".incomplete")
    have = part.stat().st_size if part.exists() else 0
    if have > f.size:
        part.unlink()
        have = 0
    resumed = have > 0
    advance(have)
    req = dict(headers, **({"Range": f"bytes={have}-"} if have else {}))
    with session.stream("GET", url, headers=req, follow_redirects=True, timeout=60) as response:
        if response.status_code != 206 or not have:
            hf_raise_for_status(response)
        if have and response.status_code == 200:  # the server ignored Range: start over
            advance(-have)
            have, resumed = 0, False
        with part.open("ab" if have else "wb") as out:
            for chunk in response.iter_bytes(1024 * 1024):
                out.write(chunk)
                advance(len(chunk))
    size = part.stat().st_size
    if size != f.size:
        raise SparkError(f"{f.path}: got {size} of {f.size} bytes (connection dropped)",
                         fix="run the download again: it resumes")
    if resumed and f.lfs_sha256 and _sha256(part) != f.lfs_sha256:
        part.unlink()
        raise SparkError(f"{f.path}: checksum mismatch after resuming (partial file was stale; removed)",
                         fix="run the download again")
    part.chmod(0o644)
    os.replace(part, blob)


def _link(snapshot: Path, f: RemoteFile, blob: Path) -> None:
    link = snapshot / f.path
    link.parent.mkdir(parents=True, exist_ok=True)
    target = os.path.relpath(blob, link.parent)
    if link.is_symlink() and os.readlink(link) == target:
        return
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target)


def download(cfg: Config, spec: ModelSpec, *, progress: bool = True, echo=print, workers: int = 4) -> dict:  # noqa: ANN001
    """Fetch missing files, resume partial ones, verify. Returns the verification report."""
    import httpx2  # huggingface_hub's HTTP client
    from huggingface_hub import HfApi, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.utils import build_hf_headers, get_session

    token = secret_value(cfg, "HF_TOKEN") or None
    cache = cache_root(cfg)
    hub = ensure_hub_dir(cache, cfg.source("HF_CACHE"))
    api = HfApi(token=token or False)
    errors = (HfHubHTTPError, httpx2.HTTPError, OSError, ValueError)
    try:
        info = api.model_info(spec.repo, revision=spec.revision)
        if getattr(info, "gated", False) and not token:
            raise gated_error(spec, token)
        commit = info.sha
        files = plan_files(api, spec, commit)
    except SparkError:
        raise
    except errors as exc:
        raise _hub_error(exc, spec, token) from None
    model_dir = Path(snapshot_check.repo_dir(str(cache), spec.repo))
    blobs, snapshot = model_dir / "blobs", model_dir / "snapshots" / commit
    blobs.mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    lock = _lock(hub, spec)
    try:
        todo = [f for f in files if not ((blobs / f.etag).is_file() and (blobs / f.etag).stat().st_size == f.size)]
        need = sum(f.size for f in todo) - sum(
            (blobs / (f.etag + ".incomplete")).stat().st_size for f in todo
            if (blobs / (f.etag + ".incomplete")).is_file())
        total = sum(f.size for f in files)
        free = shutil.disk_usage(hub).free
        if need > free:
            raise SparkError(f"{spec.repo} needs {need / 1024**3:.1f} GiB more in {hub}, "
                             f"only {free / 1024**3:.1f} GiB free",
                             fix=f"free space on {cache} or point HF_CACHE at a bigger disk")
        if todo:
            echo(f"downloading {spec.repo}@{commit[:12]}: {len(todo)} of {len(files)} files, "
                 f"{need / 1024**3:.2f} of {total / 1024**3:.2f} GiB still to fetch (into {hub})")
        else:
            echo(f"{spec.repo}: all {len(files)} files already in {hub}")
        _fetch_all(todo, spec, commit, blobs, token, progress, workers, get_session(), hf_hub_url,
                   build_hf_headers, errors)
        for f in files:
            _link(snapshot, f, blobs / f.etag)
        write_tree_listing(model_dir, commit, files)
        if spec.revision != commit:
            ref = model_dir / "refs" / (spec.revision or "main")
            ref.parent.mkdir(parents=True, exist_ok=True)
            ref.write_text(commit)
    finally:
        lock.close()
    report = snapshot_check.check(str(cache), spec.repo, commit, expected={f.path: f.size for f in files})
    if not report["complete"]:
        raise SparkError(f"{spec.repo} downloaded but incomplete: {'; '.join(report['problems'][:3])}",
                         fix=f"run `sparkhelpers models download {spec.name}` again (it resumes)")
    return report


def _fetch_all(todo, spec, commit, blobs, token, progress, workers, session, hf_hub_url, build_hf_headers,  # noqa: ANN001
               errors) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    if not todo:
        return
    bar = tqdm(total=sum(f.size for f in todo), unit="B", unit_scale=True, unit_divisor=1024,
               desc=spec.repo, disable=not progress, file=sys.stderr, mininterval=0.5)
    lock = threading.Lock()

    def advance(n: int) -> None:
        with lock:
            bar.update(n)

    headers = build_hf_headers(token=token or False)

    def one(f: RemoteFile) -> None:
        fetch_blob(session, hf_hub_url(spec.repo, f.path, revision=commit), headers, blobs / f.etag, f, advance)

    try:
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(todo)))) as pool:
            for future in [pool.submit(one, f) for f in todo]:
                future.result()
    except SparkError:
        raise
    except errors as exc:
        raise _hub_error(exc, spec, token) from None
    finally:
        bar.close()


def _lock(hub: Path, spec: ModelSpec):  # noqa: ANN202
    """One download per model at a time (two shells would fight over the same .incomplete files)."""
    import fcntl

    path = hub / ".locks" / f"sparkhelpers-{spec.repo.replace('/', '--')}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = path.open("w")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise SparkError(f"another download of {spec.repo} is running", fix="wait for it to finish") from None
    return fh
