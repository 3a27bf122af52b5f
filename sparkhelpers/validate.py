"""Validation of every value that reaches a generated command, before anything runs.

Quoting (the ``q`` filter) already makes injection impossible; validation is about failing early and
clearly: a model called ``x$(touch /tmp/p)`` is a typo or an attack, and either way the user should
hear about it from us, in one line, rather than from vLLM on node 3 after a five-minute load.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sparkhelpers.errors import SparkError

if TYPE_CHECKING:
    from sparkhelpers.config import Config

_HF_PART = r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}"
_MODEL = re.compile(rf"^{_HF_PART}(/{_HF_PART})?$")
_PATH = re.compile(r"^/[A-Za-z0-9._+@/-]*$")
_SERVED = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/+-]{0,127}$")
_CLUSTER = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,39}$")
_IMAGE = re.compile(r"^[a-z0-9][a-z0-9._/:@-]{0,254}$", re.IGNORECASE)
_IFNAME = re.compile(r"^[A-Za-z0-9_.:-]{1,15}$")
_HCA = re.compile(r"^[A-Za-z0-9_]+(:[0-9]+)?$")
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.:_-]{0,252})$")
_USER = re.compile(r"^[A-Za-z_][A-Za-z0-9._-]{0,31}\$?$")  # POSIX login names (useradd's rule)
_SIZE = re.compile(r"^[0-9]+[bkmgBKMG]?$")
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")
_SAFE_ARG = re.compile(r"^[^\x00-\x1f]*$")
_CIPHER = re.compile(r"^[a-z0-9][a-z0-9.@-]{0,63}$")
KV_CACHE_DTYPES = ("auto", "fp8", "fp8_e4m3", "fp8_e5m2", "bfloat16", "float16")
LOAD_FORMATS = ("auto", "safetensors", "fastsafetensors", "pt", "npcache", "dummy", "gguf", "bitsandbytes",
                "runai_streamer", "sharded_state", "tensorizer", "mistral")
# Flags that would put a secret on a command line (and so in ps and docker inspect).
SECRET_FLAGS = ("--api-key", "--hf-token", "--token")


DEFAULT_BULK_CIPHER = "aes128-gcm@openssh.com"  # in every OpenSSH since 6.2, AES instructions on x86 and Arm


def ssh_cipher(value: str, key: str = "SSH_BULK_CIPHER") -> str:
    """One cipher name this machine's ssh supports (``ssh -Q cipher``; the default is not asked about,
    so a plain command runs no extra process). ssh refuses an unknown name in Ciphers outright."""
    from sparkhelpers.runner import ssh_ciphers

    if not _CIPHER.match(value):
        raise bad(key, value, "is not one cipher name", f"sparkhelpers config set {key} {DEFAULT_BULK_CIPHER}")
    known = () if value == DEFAULT_BULK_CIPHER else ssh_ciphers()
    if known and value not in known:
        raise bad(key, value, f"is not a cipher this ssh supports ({', '.join(known)})",
                  f"sparkhelpers config set {key} {next((c for c in known if 'gcm' in c), known[0])}")
    return value


def bad(key: str, value: str, why: str, fix: str) -> SparkError:
    return SparkError(f"{key}={value!r} {why}", fix=fix)


def model_id(value: str, key: str = "MODEL") -> str:
    if _MODEL.match(value) or (_PATH.match(value) and ".." not in value.split("/")):
        return value
    raise bad(key, value, "is not a Hugging Face repo id (org/name) or an absolute path",
              f"sparkhelpers config set {key} org/name (letters, digits, . _ - only)")


def served_name(value: str) -> str:
    if _SERVED.match(value):
        return value
    raise bad("SERVED_MODEL_NAME", value, "is not a valid served model name",
              "use letters, digits and . _ : / + - (or leave it empty for the model id)")


def revision(value: str) -> str:
    if value == "" or _REVISION.match(value):
        return value
    raise bad("MODEL_REVISION", value, "is not a branch, tag or commit", "sparkhelpers config set MODEL_REVISION main")


def cluster_name(value: str) -> str:
    if _CLUSTER.match(value):
        return value
    raise bad("CLUSTER_NAME", value, "is not a valid cluster name",
              "use 1-40 lower-case letters, digits, . _ - (it labels containers)")


def image(value: str, key: str = "VLLM_IMAGE") -> str:
    if _IMAGE.match(value) and not value.startswith("-"):
        return value
    raise bad(key, value, "is not a container image reference", f"sparkhelpers config set {key} repo/name:tag")


def ip(value: str, key: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise bad(key, value, "is not an IPv4 address", f"set {key} to the node's fabric (ConnectX-7) IPv4 address "
                  "or leave it empty to discover it") from None


def ifname(value: str, key: str = "FABRIC_IF") -> str:
    if _IFNAME.match(value):
        return value
    raise bad(key, value, "is not a network interface name", "use the netdev name from `ip -br link`, e.g. enp1s0f1np1")


def hca_list(value: str, key: str = "NCCL_IB_HCA") -> str:
    parts = [p for p in value.split(",") if p]
    if parts and all(_HCA.match(p) for p in parts):
        return ",".join(parts)
    raise bad(key, value, "is not a comma-separated list of RoCE devices",
              "use the HCA names from `ibdev2netdev`, e.g. rocep1s0f1,roceP2p1s0f1")


def ssh_host(value: str, key: str = "WORKER_HOST") -> str:
    if _HOST.match(value):
        return value
    raise bad(key, value, "is not a host name or IP address", f"list {key} as space-separated hosts or IPs")


def user_name(value: str, key: str = "WORKER_USER") -> str:
    if _USER.match(value):
        return value
    raise bad(key, value, "is not a login name (letters, digits, '.', '_', '-'; not starting with a digit or '-')",
              f"sparkhelpers config set {key} USER (the account sparkhelpers logs in as on every worker), "
              f"or leave it empty for your own")


def size(value: str, key: str) -> str:
    if _SIZE.match(value):
        return value
    raise bad(key, value, "is not a size", f"sparkhelpers config set {key} 16g")


def positive_int(value: int, key: str, low: int = 1, high: int = 1 << 40) -> int:
    if low <= value <= high:
        return value
    raise bad(key, str(value), f"must be between {low} and {high}", f"sparkhelpers config set {key} NUMBER")


def port(value: int, key: str) -> int:
    return positive_int(value, key, 1, 65535)


def fraction(value: float, key: str) -> float:
    if 0.05 <= value <= 0.98:
        return value
    raise bad(key, str(value), "must be a fraction between 0.05 and 0.98",
              f"sparkhelpers config set {key} 0.85 (GB10 memory is shared with the OS)")


def choice(value: str, key: str, allowed: tuple[str, ...]) -> str:
    if value in allowed:
        return value
    raise bad(key, value, f"is not one of {', '.join(allowed)}", f"sparkhelpers config set {key} {allowed[0]}")


def tristate(value: str, key: str) -> bool | None:
    """auto -> None (engine default), true/false -> bool."""
    v = value.strip().lower()
    if v in ("", "auto"):
        return None
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise bad(key, value, "is not auto, true or false", f"sparkhelpers config set {key} auto")


def json_object(value: str, key: str) -> str:
    try:
        parsed = json.loads(value)
    except ValueError as exc:
        raise bad(key, value, f"is not valid JSON ({exc.msg})",
                  f"sparkhelpers config set {key} '{{\"method\": ...}}'") from None
    if not isinstance(parsed, dict):
        raise bad(key, value, "must be a JSON object", f"sparkhelpers config set {key} '{{...}}'")
    return json.dumps(parsed, separators=(",", ":"), sort_keys=True)


def engine_version(value: str, key: str) -> str:
    """A vLLM version (the flag set EXTRA_ARGS is checked against); sparkhelpers.recipes.flags knows which exist."""
    if re.fullmatch(r"\d+\.\d+\.\d+", value):
        return value
    raise bad(key, value, "is not a vLLM version (like 0.19.0)",
              f"leave it empty for the default, or set the image's vLLM version: sparkhelpers config set {key} 0.32.0")


def arg_list(value: str, key: str) -> list[str]:
    """Split EXTRA_ARGS-style values like a shell would, refusing control characters and secret flags."""
    try:
        args = shlex.split(value)
    except ValueError as exc:
        raise bad(key, value, f"cannot be split into arguments ({exc})", "balance the quotes in it") from None
    for a in args:
        if not _SAFE_ARG.match(a):
            raise bad(key, value, "contains control characters", "remove newlines and tabs from it")
        if a.split("=", 1)[0] in SECRET_FLAGS:
            raise bad(key, value, f"puts a secret on the command line ({a.split('=', 1)[0]})",
                      "remove it: set API_KEY_FILE or HF_TOKEN_FILE instead (they reach the engine privately)")
    return args


# ---- The one table of per-key rules ------------------------------------------------------------
# `config set` checks the value it writes, `config check` every key at once, and the plan reads its
# typed values through `setting()`; no rule is written a second time anywhere else.


@dataclass(frozen=True)
class Rule:
    parse: Callable[[str, str], object]  # (raw text, key) -> typed value; raises SparkError with the fix
    required: bool = False  # empty is an error; otherwise empty means "default / discover / off" (None)


def _whole(low: int, high: int, example: int) -> Callable[[str, str], int]:
    def parse(raw: str, key: str) -> int:
        try:
            number = int(raw.strip())
        except ValueError:
            raise bad(key, raw, "is not a whole number", f"sparkhelpers config set {key} {example}") from None
        if low <= number <= high:
            return number
        raise bad(key, raw, f"must be between {low} and {high}", f"sparkhelpers config set {key} {example}")
    return parse


def _fraction(raw: str, key: str) -> float:
    try:
        number = float(raw)
    except ValueError:
        raise bad(key, raw, "is not a number", f"sparkhelpers config set {key} 0.85") from None
    return fraction(number, key)


def _bool(raw: str, key: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        return value in ("1", "true", "yes", "on")
    raise bad(key, raw, "is not true or false", f"sparkhelpers config set {key} false")


def _abs_path(example: str) -> Callable[[str, str], str]:
    def parse(raw: str, key: str) -> str:
        if _PATH.match(raw) and ".." not in raw.split("/"):
            return raw
        raise bad(key, raw, "must be an absolute path without spaces", f"sparkhelpers config set {key} {example}")
    return parse


def _listen(raw: str, key: str) -> str:
    return raw if raw in ("0.0.0.0", "::") else ip(raw, key)


def _each(check: Callable[..., str]) -> Callable[[str, str], list[str]]:
    return lambda raw, key: [check(part, key) for part in raw.split()]


def _upper_choice(allowed: tuple[str, ...]) -> Callable[[str, str], str]:
    return lambda raw, key: choice(raw.upper(), key, allowed)


def _choice(allowed: tuple[str, ...]) -> Callable[[str, str], str]:
    return lambda raw, key: choice(raw, key, allowed)


RUNTIMES = ("vllm", "llama-cpp")
LAUNCH_MODES = ("auto", "ray", "native")
NCCL_DEBUG_LEVELS = ("WARN", "INFO", "TRACE", "VERSION", "ABORT")
_PORT = _whole(1, 65535, 8000)

RULES: dict[str, Rule] = {
    "CLUSTER_NAME": Rule(lambda raw, key: cluster_name(raw), required=True),
    "HEAD_HOST": Rule(lambda raw, key: ssh_host(raw, key)),
    "WORKER_HOST": Rule(_each(ssh_host)),
    "WORKER_IB_IP": Rule(_each(ip)),
    "WORKER_IB_IP2": Rule(_each(ip)),
    "WORKER_USER": Rule(user_name),
    "SSH_CONNECT_TIMEOUT": Rule(_whole(1, 300, 5), required=True),
    "SSH_OPTIONS": Rule(arg_list),
    "SSH_CONTROL_PERSIST": Rule(_whole(0, 3600, 30)),
    "SSH_BULK_CIPHER": Rule(lambda raw, key: ssh_cipher(raw, key)),
    "HEAD_IP": Rule(ip),
    "HEAD_IP2": Rule(ip),
    "FABRIC_IF": Rule(ifname),
    "NCCL_IB_HCA": Rule(hca_list),
    "NCCL_IB_GID_INDEX": Rule(_whole(0, 255, 3)),
    "NCCL_DEBUG": Rule(_upper_choice(NCCL_DEBUG_LEVELS), required=True),
    "FABRIC_MTU": Rule(_whole(576, 9216, 9000), required=True),
    "MODEL": Rule(model_id, required=True),
    "MODEL_REVISION": Rule(lambda raw, key: revision(raw)),
    "SERVED_MODEL_NAME": Rule(lambda raw, key: served_name(raw)),
    "TENSOR_PARALLEL": Rule(_whole(1, 8, 2)),
    "PIPELINE_PARALLEL": Rule(_whole(1, 8, 1), required=True),
    "MAX_MODEL_LEN": Rule(_whole(16, 1 << 24, 32768)),
    "GPU_MEMORY_UTIL": Rule(_fraction, required=True),
    "TRUST_REMOTE_CODE": Rule(_bool),
    "ENABLE_EXPERT_PARALLEL": Rule(tristate),
    "RUNTIME": Rule(_choice(RUNTIMES), required=True),
    "VLLM_IMAGE": Rule(image, required=True),
    "LAUNCH_MODE": Rule(_choice(LAUNCH_MODES), required=True),
    "SHM_SIZE": Rule(size),
    "IPC_HOST": Rule(_bool),
    "PRIVILEGED": Rule(_bool),
    "EXTRA_DOCKER_ARGS": Rule(arg_list),
    "RAY_OBJECT_STORE_BYTES": Rule(_whole(78643200, 1 << 40, 1 << 30)),
    "DROP_CACHES": Rule(_bool),
    "VLLM_PORT": Rule(_PORT, required=True),
    "VLLM_HOST": Rule(_listen),  # empty = every interface
    "RAY_PORT": Rule(_whole(1, 65535, 6385), required=True),
    "RAY_DASHBOARD_PORT": Rule(_whole(1, 65535, 8265), required=True),
    "RAY_DASHBOARD_HOST": Rule(ip, required=True),
    "MASTER_PORT": Rule(_whole(1, 65535, 29501), required=True),
    "HF_CACHE": Rule(_abs_path("/raid/hf-cache"), required=True),
    "WORKER_HF_CACHE": Rule(_abs_path("/raid/hf-cache")),
    "SPARK_STATE_DIR": Rule(_abs_path("/var/lib/sparkhelpers")),
    "ENABLE_PREFIX_CACHING": Rule(tristate),
    "KV_CACHE_DTYPE": Rule(_choice(KV_CACHE_DTYPES), required=True),
    "ENABLE_CHUNKED_PREFILL": Rule(tristate),
    "MAX_NUM_SEQS": Rule(_whole(1, 1 << 20, 256)),
    "MAX_NUM_BATCHED_TOKENS": Rule(_whole(1, 1 << 24, 8192)),
    "SPECULATIVE_CONFIG": Rule(json_object),
    "LOAD_FORMAT": Rule(_choice(LOAD_FORMATS), required=True),
    "EXTRA_ARGS": Rule(arg_list),
    "ENGINE_VERSION": Rule(engine_version),
    "START_TIMEOUT": Rule(_whole(1, 7 * 86400, 1800), required=True),
    "STOP_TIMEOUT": Rule(_whole(1, 3600, 20)),
    "BENCH_TIMEOUT": Rule(_whole(1, 7 * 86400, 3600)),
    "BENCH_LLAMA_BENCHY_ARGS": Rule(arg_list),
}


def check(key: str, value: object) -> object:
    """The typed value of KEY (None when empty and allowed to be); a SparkError with the fix if bad.

    Keys without a rule pass through as text. Typed values (an int from a preset) are checked as text,
    so a preset and a config file meet the same rule.
    """
    raw = "" if value is None else str(value)
    rule = RULES.get(key)
    if rule is None:
        return raw
    if raw.strip() == "":
        if rule.required:
            raise SparkError(f"{key} must not be empty",
                             fix=f"sparkhelpers config unset {key} (back to config.env's default)")
        return None
    return rule.parse(raw, key)


def setting(cfg: Config, key: str, default: object = None) -> object:
    """``check`` of the configured value (``default`` when it is empty), naming where a bad value came from."""
    try:
        value = check(key, cfg.get(key))
    except SparkError as exc:
        raise SparkError(f"{exc.message} ({cfg.source(key)})", fix=exc.fix) from None
    return default if value is None else value


def problems(cfg: Config) -> list[SparkError]:
    """Every bad key of the configuration at once (``config check``), in table order."""
    found: list[SparkError] = []
    for key in RULES:
        if key in cfg.settings:
            try:
                setting(cfg, key)
            except SparkError as exc:
                found.append(exc)
    return found
