"""One hop of a relay: stdlib only, sent to each node as ``python3 -c`` (see ``relay.commands``).

Modes (the first argument):
- ``send HEADER_FILE|-``: on the source node, read the chunks of the files named in the header from
  ``src`` and stream them to the first hop(s); prints ``progress BYTES`` lines, then a status line.
- ``recv``: on a worker, read a header line then the chunk bytes from stdin; forward every byte to the
  children at once (streaming: a child gets a chunk while this node writes it) and write the chunks this
  node lacks into ``<root>/<staging>/`` (``NAME.part``, plus a ``NAME.laneK`` journal of finished chunks,
  so an interrupted relay resumes). Nothing is written outside the staging directory: ``finalize`` renames.
- ``probe ARGS``: which chunks this node already holds (final files and journals).
- ``finalize ARGS``: files whose every chunk arrived are renamed into place; when all are, the links and
  small files (snapshot symlinks, refs) are made last and the staging directory removed.
- ``abort ARGS``: remove the staging directory (a failed node keeps nothing half-written).
- ``list ARGS``: on the source node, what a Hugging Face snapshot consists of (blobs, links, refs).

A write error (a full disk) stops this node's writes, removes its staging directory and keeps forwarding,
so the nodes behind it still complete. A child making no progress for ``stall_s`` is dropped (named in the
status); no input for ``stall_s`` ends this hop. Every status is one JSON line on stdout, with the
children's statuses nested in it.
"""

import contextlib
import errno
import json
import os
import queue
import select
import shutil
import subprocess
import sys
import threading
import time

PIECE = 1 << 20


def _name(path):
    return path.replace("/", "%")


def _journals(staging, path):
    prefix = _name(path) + ".lane"
    try:
        return [os.path.join(staging, n) for n in os.listdir(staging) if n.startswith(prefix)]
    except OSError:
        return []


def held(root, staging, files, chunk):
    """{path: "all"} for a final file of the right size, else {path: [offsets journaled]}."""
    out = {}
    stage = os.path.join(root, staging)
    for f in files:
        final = os.path.join(root, f["path"])
        if os.path.isfile(final) and os.path.getsize(final) == f["size"]:
            out[f["path"]] = "all"
            continue
        part = os.path.join(stage, _name(f["path"]) + ".part")
        offsets = set()
        if os.path.isfile(part):
            for journal in _journals(stage, f["path"]):
                with open(journal, encoding="ascii", errors="replace") as fh:
                    offsets.update(int(x) for x in fh.read().split() if x.isdigit())
        out[f["path"]] = sorted(o for o in offsets if o < f["size"])
    return out


class Reader:
    """Reads stdin with a stall timeout (a dead upstream must not leave this hop waiting forever)."""

    def __init__(self, fd, stall_s):
        self.fd, self.stall_s, self.buf = fd, stall_s, b""

    def _more(self, want):
        ready, _, _ = select.select([self.fd], [], [], self.stall_s)
        if not ready:
            raise TimeoutError(f"no data from upstream for {self.stall_s:g} s")
        data = os.read(self.fd, want)
        if not data:
            raise EOFError("upstream closed the stream early")
        return data

    def line(self):
        while b"\n" not in self.buf:
            self.buf += self._more(65536)
        head, _, self.buf = self.buf.partition(b"\n")
        return head

    def take(self, n):
        if self.buf:
            out, self.buf = self.buf[:n], self.buf[n:]
            return out
        return self._more(min(n, PIECE))


class Child:
    """The next hop: an ssh process running ``recv`` there; writes never block longer than stall_s."""

    def __init__(self, spec, header):
        # wait_s grows with the height of the child's subtree: a node blocked behind a stall further
        # down waits less than its parent does, so the node next to the fault is the one that gives up
        self.name, self.stall_s, self.error = spec["name"], spec["wait_s"], ""
        self.out, self.err = [], bytearray()
        self.proc = subprocess.Popen(spec["ssh"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.readers = [threading.Thread(target=self._drain, args=(self.proc.stdout, True), daemon=True),
                        threading.Thread(target=self._drain, args=(self.proc.stderr, False), daemon=True)]
        for t in self.readers:
            t.start()
        os.set_blocking(self.proc.stdin.fileno(), False)
        sub = dict(header, node={k: v for k, v in spec.items() if k not in ("ssh", "wait_s")})
        self.send(json.dumps(sub).encode() + b"\n")

    def _drain(self, stream, is_out):
        for line in iter(stream.readline, b""):
            if is_out:
                self.out.append(line)
            else:
                self.err += line
                del self.err[:-4096]

    def fail(self, why):
        if not self.error:
            self.error = why
            self.proc.kill()

    def send(self, data):
        view, fd, last = memoryview(data), self.proc.stdin.fileno(), time.monotonic()
        while view and not self.error:
            try:
                n = os.write(fd, view)
                view, last = view[n:], time.monotonic()
            except BlockingIOError:
                _, ready, _ = select.select([], [fd], [], 1.0)
                if not ready and time.monotonic() - last > self.stall_s:
                    self.fail(f"stalled: took no data for {self.stall_s:g} s (node down or link broken?)")
            except OSError as exc:
                self.fail(f"connection lost ({exc.strerror or exc})")

    def finish(self):
        """Close its input, wait for its status (its own children finish first)."""
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            code = self.proc.wait(timeout=self.stall_s * 2 + 10)
        except subprocess.TimeoutExpired:
            self.fail(f"no status within {self.stall_s * 2 + 10:g} s after the end of the stream")
            code = self.proc.wait()
        for t in self.readers:
            t.join(5)
        tail = self.err.decode(errors="replace").strip().splitlines()
        if self.error and tail:
            self.error += f"; it said: {tail[-1]}"
        for line in reversed(self.out):
            try:
                status = json.loads(line)
            except ValueError:
                continue
            if isinstance(status, dict) and status.get("node") == self.name:
                if self.error:  # dropped mid-stream: whatever it says, it did not get everything
                    status.update(ok=False, error=self.error)
                return status
        why = self.error or f"exit {code}" + (f": {tail[-1]}" if tail else "")
        return {"node": self.name, "ok": False, "error": why, "children": []}


class Store:
    """This node's writes: chunks into NAME.part under the staging dir, journaled once synced."""

    def __init__(self, node, header):
        self.root, self.lane = node.get("root"), header["lane"]
        self.stage = os.path.join(self.root, header["staging"]) if self.root else ""
        self.files, self.error, self.wrote, self.skipped = header["files"], "", 0, 0
        self.fds, self.journals = {}, {}
        self.pending, self.syncer = queue.Queue(), None
        self.have = held(self.root, header["staging"], self.files, header["chunk"]) if self.root else {}

    def wants(self, fi, off):
        have = self.have.get(self.files[fi]["path"], [])
        return bool(self.root) and not self.error and have != "all" and off not in have

    def write(self, fi, off, data):
        path = self.files[fi]["path"]
        try:
            if fi not in self.fds:
                os.makedirs(self.stage, exist_ok=True)
                self.fds[fi] = os.open(os.path.join(self.stage, _name(path) + ".part"), os.O_RDWR | os.O_CREAT,
                                       0o644)
            fd, view = self.fds[fi], memoryview(data)
            while view:
                n = os.pwrite(fd, view, off)
                view, off = view[n:], off + n
            self.wrote += len(data)
        except OSError as exc:
            self.fail(exc)

    def done_chunk(self, fi, off):
        """The chunk is written: a background thread syncs it to disk, then journals it (the stream
        keeps flowing meanwhile; a chunk is journaled only once it is durable)."""
        if self.error or fi not in self.fds:
            return
        if self.syncer is None:
            self.syncer = threading.Thread(target=self._sync_loop, daemon=True)
            self.syncer.start()
        self.pending.put((fi, off))

    def _sync_loop(self):
        while True:
            item = self.pending.get()
            if item is None or self.error:
                return
            fi, off = item
            try:
                os.fdatasync(self.fds[fi])
                if fi not in self.journals:
                    name = _name(self.files[fi]["path"]) + f".lane{self.lane}"
                    self.journals[fi] = open(os.path.join(self.stage, name), "a", encoding="ascii")  # noqa: SIM115
                self.journals[fi].write(f"{off}\n")
                self.journals[fi].flush()
            except OSError as exc:
                self.fail(exc)

    def fail(self, exc):
        if self.error:
            return
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        self.error = ("no space left on device" if full else f"write failed: {exc.strerror or exc}") + \
            f" (in {self.stage})"

    def close(self):
        """Wait for the journal to catch up, close everything; after a write error remove the staging
        directory (a full disk keeps nothing half-written; forwarding went on regardless)."""
        if self.syncer is not None:
            self.pending.put(None)
            self.syncer.join()
            self.syncer = None
        for fd in self.fds.values():
            os.close(fd)
        for fh in self.journals.values():
            fh.close()
        self.fds, self.journals = {}, {}
        if self.error:
            shutil.rmtree(self.stage, ignore_errors=True)


def _status(name, lane, ok, error, store, children):
    return {"node": name, "lane": lane, "ok": ok, "error": error, "wrote": store.wrote if store else 0,
            "children": children}


def relay(header, source):
    """Stream every chunk to the children and (recv) into this node's store. ``source(fi, off, n)``
    yields the chunk's bytes. Returns the status dict."""
    node = header["node"]
    store = Store(node, header) if node.get("root") else None
    children = [Child(spec, header) for spec in node.get("children", [])]
    error, sent, last = "", 0, 0.0
    limit, t0 = header.get("bwlimit", 0), time.monotonic()
    try:
        for fi, off, n in header["chunks"]:
            mine = store is not None and store.wants(fi, off)
            pos = off
            for data in source(fi, off, n):
                for c in children:
                    c.send(data)
                if mine:
                    store.write(fi, pos, data)
                pos += len(data)
                sent += len(data)
                if limit and sent / limit > time.monotonic() - t0:
                    time.sleep(sent / limit - (time.monotonic() - t0))
                if header.get("progress") and time.monotonic() - last >= 1:
                    print(f"progress {sent}", flush=True)
                    last = time.monotonic()
            if mine:
                store.done_chunk(fi, off)
    except (TimeoutError, EOFError, OSError) as exc:
        error = str(exc)
    if header.get("progress"):
        print(f"progress {sent}", flush=True)
    statuses = [c.finish() for c in children]
    if store:
        store.close()
        error = error or store.error
    return _status(node["name"], header["lane"], not error, error, store, statuses)


def _stdin_source(reader):
    def source(fi, off, n):
        left = n
        while left:
            data = reader.take(left)
            left -= len(data)
            yield data
    return source


def _file_source(src, files):
    handles = {}

    def source(fi, off, n):
        if fi not in handles:
            handles[fi] = open(os.path.join(src, files[fi]["path"]), "rb")  # noqa: SIM115 (kept open)
        fh, left = handles[fi], n
        fh.seek(off)
        while left:
            data = fh.read(min(left, PIECE))
            if not data:
                raise OSError(f"{files[fi]['path']} is shorter on the source than planned")
            left -= len(data)
            yield data
    return source


def finalize(args):
    root, stage = args["root"], os.path.join(args["root"], args["staging"])
    have = held(root, args["staging"], args["files"], args["chunk"])
    missing = []
    try:
        for f in args["files"]:
            final = os.path.join(root, f["path"])
            if have[f["path"]] == "all":
                continue
            need = set(range(0, f["size"], args["chunk"]))
            part = os.path.join(stage, _name(f["path"]) + ".part")
            if f["size"] == 0:
                os.makedirs(stage, exist_ok=True)
                open(part, "wb").close()
            elif need - set(have[f["path"]]) or os.path.getsize(part) != f["size"]:
                missing.append(f["path"])
                continue
            os.makedirs(os.path.dirname(final), exist_ok=True)
            os.replace(part, final)
        if missing:
            return {"complete": False, "missing": missing, "error": ""}
        for link in args.get("links", []):
            _atomic_link(os.path.join(root, link["path"]), link["target"])
        for w in args.get("writes", []):
            _atomic_write(os.path.join(root, w["path"]), w["data"])
        shutil.rmtree(stage, ignore_errors=True)
    except OSError as exc:
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        return {"complete": False, "missing": missing, "error": "no space left on device" if full else str(exc)}
    return {"complete": True, "missing": [], "error": ""}


def _atomic_link(path, target):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.islink(path) and os.readlink(path) == target:
        return
    tmp = path + ".relay-tmp"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, path)


def _atomic_write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".relay-tmp", "w", encoding="utf-8") as fh:
        fh.write(data)
    os.replace(path + ".relay-tmp", path)


def snapshot_listing(args):
    """Blobs (regular files) and links of snapshot ``commit`` of ``model_dir``, plus refs/<ref>."""
    model_dir, commit = args["model_dir"], args["commit"]
    snap = os.path.join(model_dir, "snapshots", commit)
    files, links, seen = [], [], set()
    for dirpath, _dirs, names in os.walk(snap):
        for name in sorted(names):
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, model_dir)
            if os.path.islink(p):
                real = os.path.relpath(os.path.realpath(p), model_dir)
                if real.startswith(".."):
                    raise SystemExit(f"{rel} points outside the model directory")
                links.append({"path": rel, "target": os.readlink(p)})
            else:
                real = rel
            if real not in seen:
                seen.add(real)
                files.append({"path": real, "size": os.path.getsize(os.path.join(model_dir, real))})
    writes = []
    if args.get("ref"):
        writes.append({"path": os.path.join("refs", args["ref"]), "data": commit})
    return {"files": files, "links": links, "writes": writes}


def main(argv):
    mode = argv[1]
    if mode in ("send", "recv"):
        if mode == "send":
            header = json.loads(sys.stdin.read())
            source = _file_source(header["src"], header["files"])
        else:
            reader = Reader(sys.stdin.fileno(), 30)
            header = json.loads(reader.line())
            reader.stall_s = header.get("read_s", 30)
            source = _stdin_source(reader)
        print(json.dumps(relay(header, source)), flush=True)
        return 0
    args = json.loads(argv[2])
    if mode == "probe":
        out = {"have": held(args["root"], args["staging"], args["files"], args["chunk"])}
    elif mode == "finalize":
        out = finalize(args)
    elif mode == "abort":
        shutil.rmtree(os.path.join(args["root"], args["staging"]), ignore_errors=True)
        out = {"removed": True}
    elif mode == "list":
        out = snapshot_listing(args)
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
