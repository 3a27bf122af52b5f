"""One table of per-key rules (sparkhelpers.validate.RULES): config set, config check and the plan."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from sparkhelpers import validate as v
from sparkhelpers.config import documented_keys, load_config
from sparkhelpers.errors import SparkError

ROOT = Path(__file__).resolve().parents[1]
BAD = {
    "VLLM_PORT": ("99999", "must be between 1 and 65535", "sparkhelpers config set VLLM_PORT 8000"),
    "GPU_MEMORY_UTIL": ("1.5", "must be a fraction between 0.05 and 0.98",
                        "sparkhelpers config set GPU_MEMORY_UTIL 0.85"),
    "RUNTIME": ("sglang", "is not one of vllm, llama-cpp", "sparkhelpers config set RUNTIME vllm"),
    "KV_CACHE_DTYPE": ("fp4", "is not one of auto, fp8", "sparkhelpers config set KV_CACHE_DTYPE auto"),
    "TRUST_REMOTE_CODE": ("maybe", "is not true or false", "sparkhelpers config set TRUST_REMOTE_CODE false"),
    "MAX_NUM_SEQS": ("lots", "is not a whole number", "sparkhelpers config set MAX_NUM_SEQS 256"),
    "SPECULATIVE_CONFIG": ("{nope", "is not valid JSON", "sparkhelpers config set SPECULATIVE_CONFIG"),
    "WORKER_IB_IP": ("10.0.0.2 10.0.0.300", "", "fabric (ConnectX-7) IPv4 address"),
}


def cli(*args: str, **kw) -> subprocess.CompletedProcess:
    exe = Path(os.sys.executable).parent / "sparkhelpers"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, cwd=ROOT, **kw)


@pytest.mark.parametrize("key", list(BAD))
def test_config_set_refuses_a_bad_value_with_the_fix(key):
    local = Path(os.environ["SPARK_CONFIG"])
    before = local.read_text()
    value, why, fix = BAD[key]
    r = cli("config", "set", key, value)
    assert r.returncode == 1, r.stderr
    assert (f"{key}={value!r} {why}" if why else f"{key}='10.0.0.300' is not an IPv4 address") in r.stderr
    assert fix in r.stderr.split("fix: ", 1)[1]
    assert local.read_text() == before  # nothing written


def test_config_set_accepts_good_values():
    for key, value in [("VLLM_PORT", "8001"), ("GPU_MEMORY_UTIL", "0.7"), ("RUNTIME", "llama-cpp"),
                       ("KV_CACHE_DTYPE", "fp8"), ("MAX_MODEL_LEN", ""), ("WORKER_HOST", "spark-2 spark-3")]:
        r = cli("config", "set", key, value)
        assert r.returncode == 0, (key, r.stderr)
    assert cli("config", "get", "VLLM_PORT").stdout == "8001\n"


def test_config_check_lists_every_bad_key_at_once():
    lines = [f"{key}='{value}'\n" for key, (value, _, _) in BAD.items()]
    Path(os.environ["SPARK_CONFIG"]).write_text("".join(lines))
    r = cli("config", "check")
    assert r.returncode == 1
    for key, (value, why, fix) in BAD.items():
        assert (f"bad  {key}={value!r} {why}" if why else f"bad  {key}='10.0.0.300' is not") in r.stdout, key
        assert fix in r.stdout
    assert r.stdout.count("config.local.env)") == len(BAD)  # each names where it came from
    assert f"{len(BAD)} bad values in the configuration" in r.stderr


def test_config_check_passes_on_the_defaults():
    r = cli("config", "check")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "bad" not in r.stdout


def test_environment_values_are_checked_too():
    r = cli("config", "check", env={**os.environ, "VLLM_PORT": "0"})
    assert r.returncode == 1 and "VLLM_PORT='0' must be between 1 and 65535 (environment)" in r.stdout


def test_every_default_in_config_env_passes_its_rule():
    cfg = load_config()
    assert v.problems(cfg) == []


def test_every_rule_is_a_documented_key():
    documented = {row["key"] for row in documented_keys(ROOT / "config.env")}
    assert set(v.RULES) <= documented


def test_required_keys_refuse_empty_and_optional_ones_mean_default():
    with pytest.raises(SparkError, match="VLLM_PORT must not be empty"):
        v.check("VLLM_PORT", "")
    assert v.check("MAX_MODEL_LEN", "") is None
    assert v.check("VLLM_PORT", 8001) == 8001 and v.check("GPU_MEMORY_UTIL", "0.5") == 0.5
    assert v.check("WORKER_HOST", "a b") == ["a", "b"] and v.check("IPC_HOST", "yes") is True
    assert v.check("NO_RULE_KEY", "anything") == "anything"


@pytest.mark.parametrize("key", ["VLLM_PORT", "GPU_MEMORY_UTIL", "RUNTIME", "KV_CACHE_DTYPE"])
def test_the_plan_refuses_with_the_same_rule_as_config_check(key, monkeypatch):
    """No second copy of a rule: the start plan fails on the value `config check` lists, with its message."""
    from sparkhelpers.cluster.plan import build_plan
    from sparkhelpers.models import resolve_model

    value, why, fix = BAD[key]
    monkeypatch.setenv(key, value)
    cfg = load_config()
    [listed] = [exc for exc in v.problems(cfg) if exc.message.startswith(f"{key}=")]
    with pytest.raises(SparkError) as err:
        build_plan(cfg, resolve_model(cfg), solo=True)
    assert f"{key}={value!r} {why}" in err.value.message and err.value.fix == listed.fix
