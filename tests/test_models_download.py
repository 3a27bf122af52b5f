"""Download and verify against a local stand-in for the Hub API (tests/hubstub.py) on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from hubstub import HubStub, Repo, fake_model  # noqa: E402

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub():
    stub = HubStub(repos={"acme/tiny": Repo(fake_model()), "acme/gated": Repo(fake_model(), gated=True),
                          "acme/big": Repo(fake_model(shard_values=2_000_000))},
                   tokens={"hf_goodtoken"}).start()
    yield stub
    stub.stop()


@pytest.fixture
def env(hub, isolated_env):
    return {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_TELEMETRY": "1"}


def cli(sparkhelpers_bin, env, *args, timeout=120):
    return subprocess.run([*sparkhelpers_bin, "models", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def model_dir(repo: str) -> Path:
    return Path(os.environ["HF_CACHE"]) / "hub" / ("models--" + repo.replace("/", "--"))


def test_full_download_keeps_the_cache_layout_and_skips_original(sparkhelpers_bin, env):
    r = cli(sparkhelpers_bin, env, "download", "acme/tiny", "--quiet")
    assert r.returncode == 0, r.stderr
    assert "acme/tiny: complete, 6 files" in r.stderr
    d = model_dir("acme/tiny")
    assert (d / "refs" / "main").read_text() == SHA
    snap = d / "snapshots" / SHA
    shard = snap / "model-00001-of-00002.safetensors"
    assert shard.is_symlink() and os.readlink(shard).startswith("../../blobs/")
    assert shard.read_bytes() == fake_model()["model-00001-of-00002.safetensors"]
    assert not (snap / "original").exists() and not (snap / "metal").exists()
    # huggingface_hub (what vLLM loads through) accepts the layout offline
    from huggingface_hub import snapshot_download

    hub_dir = str(Path(os.environ["HF_CACHE"]) / "hub")
    assert snapshot_download("acme/tiny", cache_dir=hub_dir, local_files_only=True) == str(snap)
    r = cli(sparkhelpers_bin, env, "verify", "acme/tiny")
    assert r.returncode == 0 and r.stdout.startswith("ok  acme/tiny on head: 6 files")
    # a second download fetches nothing
    r = cli(sparkhelpers_bin, env, "download", "acme/tiny", "--quiet")
    assert r.returncode == 0 and "all 6 files already in" in r.stderr


def test_interrupted_download_resumes_with_a_range_request(sparkhelpers_bin, env, hub):
    hub.throttle_bps = 400_000  # a 4 MB shard takes ~10 s: time to interrupt it mid-file
    proc = subprocess.Popen([*sparkhelpers_bin, "models", "download", "acme/big", "--quiet"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    blobs = model_dir("acme/big") / "blobs"
    deadline = time.monotonic() + 60
    partial = []
    while time.monotonic() < deadline:
        partial = [p for p in blobs.glob("*.incomplete") if p.stat().st_size > 300_000] if blobs.is_dir() else []
        if partial:
            break
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert partial, "the download never got going"
    had = partial[0].stat().st_size
    hub.throttle_bps = 0
    hub.requests.clear()
    r = cli(sparkhelpers_bin, env, "download", "acme/big", "--quiet")
    assert r.returncode == 0, r.stderr
    ranges = [int(rng.split("=")[1].rstrip("-")) for method, _, rng, _ in hub.requests if method == "GET" and rng]
    assert ranges and max(ranges) >= had  # resumed from where it stopped, not from byte 0
    assert cli(sparkhelpers_bin, env, "verify", "acme/big").returncode == 0


def test_gated_without_token_is_one_clear_error(sparkhelpers_bin, env):
    r = cli(sparkhelpers_bin, env, "download", "acme/gated")
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert lines[-2] == "sparkhelpers: acme/gated is gated and no Hugging Face token is configured"
    assert "sparkhelpers config set HF_TOKEN -" in lines[-1] and "huggingface.co/acme/gated" in lines[-1]
    assert not model_dir("acme/gated").joinpath("snapshots").exists()


def test_gated_with_a_token_lacking_access(sparkhelpers_bin, env):
    r = cli(sparkhelpers_bin, {**env, "HF_TOKEN": "hf_wrongtoken"}, "download", "acme/gated", "--quiet")
    assert r.returncode == 1
    assert "acme/gated is gated and this token has no access to it" in r.stderr
    assert "hf_wrongtoken" not in r.stderr + r.stdout


def test_token_file_is_used_in_process(sparkhelpers_bin, env, hub, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("hf_goodtoken\n")
    token_file.chmod(0o600)
    r = cli(sparkhelpers_bin, {**env, "HF_TOKEN_FILE": str(token_file)}, "download", "acme/gated", "--quiet")
    assert r.returncode == 0, r.stderr
    assert any(auth for method, path, _, auth in hub.requests if "/resolve/" in path)
    assert "hf_goodtoken" not in r.stderr + r.stdout


def test_verify_detects_missing_and_truncated_shards(sparkhelpers_bin, env):
    assert cli(sparkhelpers_bin, env, "download", "acme/tiny", "--quiet").returncode == 0
    snap = model_dir("acme/tiny") / "snapshots" / SHA
    (snap / "model-00002-of-00002.safetensors").unlink()
    r = cli(sparkhelpers_bin, env, "verify", "acme/tiny")
    assert r.returncode == 1
    assert "missing  model-00002-of-00002.safetensors: missing (listed in the safetensors index)" in r.stdout
    assert "sparkhelpers: fix: sparkhelpers models download acme/tiny" in r.stderr
    blob = (snap / "model-00001-of-00002.safetensors").resolve()
    blob.write_bytes(blob.read_bytes()[:-1000])
    r = cli(sparkhelpers_bin, env, "verify", "acme/tiny", "--json")
    report = json.loads(r.stdout)
    assert r.returncode == 1 and report["complete"] is False
    assert any("truncated or corrupt" in p for p in report["problems"])
    assert any("the Hub says" in p for p in report["problems"])  # huggingface_hub's cached tree listing
    # the download repairs both (re-fetches the missing link; the truncated blob is replaced)
    (blob).unlink()
    assert cli(sparkhelpers_bin, env, "download", "acme/tiny", "--quiet").returncode == 0
    assert cli(sparkhelpers_bin, env, "verify", "acme/tiny").returncode == 0


def test_unknown_repo_and_unreachable_hub(sparkhelpers_bin, env):
    r = cli(sparkhelpers_bin, env, "download", "acme/nope")
    assert r.returncode == 1 and "acme/nope was not found on the Hub" in r.stderr
    r = cli(sparkhelpers_bin, {**env, "HF_ENDPOINT": "http://127.0.0.1:9"}, "download", "acme/tiny", timeout=180)
    assert r.returncode == 1 and "download of acme/tiny failed" in r.stderr and "check the network" in r.stderr


def test_verify_of_a_model_never_downloaded(sparkhelpers_bin, env):
    r = cli(sparkhelpers_bin, env, "verify", "phi-4")
    assert r.returncode == 1 and "not in the cache" in r.stdout


def test_gguf_snapshot_needs_no_separate_tokenizer(tmp_path):
    from hubstub import write_cached_model

    from sparkhelpers.models import snapshot_check

    write_cached_model(tmp_path, "acme/gguf", {"config.json": b"{}", "model-Q4_1.gguf": b"GGUF" + b"\0" * 60})
    assert snapshot_check.check(str(tmp_path), "acme/gguf")["complete"]
    write_cached_model(tmp_path, "acme/bare", {"config.json": b"{}"})
    problems = snapshot_check.check(str(tmp_path), "acme/bare")["problems"]
    assert any("no tokenizer" in p for p in problems) and any("no weights" in p for p in problems)


# ---- Hugging Face conventions: HF_HUB_CACHE / HF_HOME, the saved token, no cache under / ---------------------

def test_hf_hub_cache_is_the_default_cache(sparkhelpers_bin, env, tmp_path):
    hub_dir = tmp_path / "hfhome" / "hub"
    hub_dir.mkdir(parents=True)
    env = {k: v for k, v in env.items() if k != "HF_CACHE"}
    r = cli(sparkhelpers_bin, {**env, "HF_HUB_CACHE": str(hub_dir)}, "download", "acme/tiny", "--quiet")
    assert r.returncode == 0, r.stderr
    assert (hub_dir / "models--acme--tiny" / "refs" / "main").read_text() == SHA
    shown = subprocess.run([*sparkhelpers_bin, "config", "show", "--json"], capture_output=True, text=True,
                           env={**env, "HF_HUB_CACHE": str(hub_dir)}).stdout
    assert json.loads(shown)["HF_CACHE"] == {"value": str(hub_dir.parent), "source": "HF_HUB_CACHE"}


def test_hf_home_then_raid_are_the_next_defaults(sparkhelpers_bin, env, tmp_path):
    env = {k: v for k, v in env.items() if k not in ("HF_CACHE", "HF_HUB_CACHE")}

    def cache(**extra):
        out = subprocess.run([*sparkhelpers_bin, "config", "show", "--json"], capture_output=True, text=True,
                             env={**{k: v for k, v in env.items() if k != "HF_HOME"}, **extra}).stdout
        return json.loads(out)["HF_CACHE"]

    assert cache(HF_HOME=str(tmp_path)) == {"value": str(tmp_path), "source": "HF_HOME"}
    assert cache() == {"value": "/raid/hf-cache", "source": "default"}
    assert cache(HF_HOME=str(tmp_path), HF_HUB_CACHE="/x/hub", HF_CACHE="/mine")["source"] == "environment"


def test_a_missing_cache_parent_is_an_error_not_a_tree_under_root(sparkhelpers_bin, env):
    missing = Path(f"/nonexistent-sparkhelpers-test-{os.getpid()}/hf-cache")
    try:
        r = cli(sparkhelpers_bin, {**env, "HF_CACHE": str(missing)}, "download", "acme/tiny", "--quiet")
    finally:
        created = missing.parent.exists()
        shutil.rmtree(missing.parent, ignore_errors=True)  # what the old code left under /
    assert not created
    assert r.returncode == 1
    assert f"HF_CACHE={missing} (environment): its parent {missing.parent} does not exist" in r.stderr
    assert f"fix: create it (sudo mkdir -p {missing}" in r.stderr


def test_a_hub_cache_not_named_hub_is_refused_with_the_fix(sparkhelpers_bin, env, tmp_path):
    env = {k: v for k, v in env.items() if k != "HF_CACHE"}
    r = cli(sparkhelpers_bin, {**env, "HF_HUB_CACHE": str(tmp_path / "models")}, "download", "acme/tiny")
    assert r.returncode == 1 and "is not a directory named hub" in r.stderr
    assert f"sparkhelpers config set HF_CACHE {tmp_path}" in r.stderr


def test_the_token_hf_auth_login_saved_is_used(sparkhelpers_bin, env, hub):
    home = Path(os.environ["HF_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    (home / "token").write_text("hf_goodtoken")
    (home / "token").chmod(0o600)
    r = cli(sparkhelpers_bin, env, "download", "acme/gated", "--quiet")
    assert r.returncode == 0, r.stderr
    assert any(auth for method, path, _, auth in hub.requests if "/resolve/" in path)  # accepted: hf_goodtoken
    assert "hf_goodtoken" not in r.stderr + r.stdout
