"""A sync that hits a full disk: its partial files are removed and the sizes are told truthfully."""

from __future__ import annotations

import subprocess

from sparkhelpers.models import sync
from sparkhelpers.runner import LOCAL


def test_no_space_fault_names_the_node_and_precise_sizes():
    w = sync.Worker("spark-02", LOCAL, LOCAL, "/raid/hf-cache")
    msg, fix = sync.no_space_fault(w, 300_000, 120_000)
    assert msg == "no space left on spark-02: needs 293.0 KiB, has 117.2 KiB (in /raid/hf-cache)"
    assert "free at least 176 KiB on spark-02" in fix and "WORKER_HF_CACHE" in fix
    msg, _ = sync.no_space_fault(w, 1024**3 + 3 * 1024**2, 1024**3)
    assert "needs 1.003 GiB, has 1.000 GiB" in msg


def test_cleanup_removes_partials_and_rsync_temp_files_only(tmp_path):
    model = tmp_path / "models--acme--big"
    (model / "blobs" / sync.PARTIAL_DIR).mkdir(parents=True)
    (model / "blobs" / sync.PARTIAL_DIR / "abc123").write_bytes(b"x" * 10)
    (model / "blobs" / ".def456.Xy12Zq").write_bytes(b"y")
    (model / "blobs" / "def789").write_bytes(b"complete")
    (model / "snapshots" / "c0").mkdir(parents=True)
    (model / "snapshots" / "c0" / ".gitattributes").write_text("*.safetensors lfs\n")
    subprocess.run(["bash", "-c", sync.cleanup_partial_script(str(model))], check=True)
    left = sorted(str(p.relative_to(model)) for p in model.rglob("*"))
    assert left == ["blobs", "blobs/def789", "snapshots", "snapshots/c0", "snapshots/c0/.gitattributes"]
    assert subprocess.run(["bash", "-c", sync.cleanup_partial_script(str(tmp_path / "absent"))]).returncode == 0


def test_no_space_pattern_matches_rsync_and_its_receiver():
    for line in ('rsync: [receiver] write failed on "/raid/hf-cache/x": No space left on device (28)',
                 "rsync error: error in file IO (code 11) at receiver.c(381) [receiver=3.2.7] ENOSPC"):
        assert sync.NO_SPACE.search(line)
    assert not sync.NO_SPACE.search("rsync: connection unexpectedly closed (0 bytes received so far)")
