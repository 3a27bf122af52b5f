"""The real vLLM (CPU build) beside the sim: its parser for the flag sets and argv checks, its engine
for the real-engine track. tools/real-vllm.sh builds the environment once under
/var/cache/sparkhelpers/real-vllm (``SPARK_REAL_VLLM_CACHE``); this module only finds and drives it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from sparkhelpers.errors import SparkError

HERE = Path(__file__).resolve().parent
FLAGS_DIR = HERE / "engine" / "flags"
PARSER_SCRIPT = HERE / "vllm_parser.py"
# The versions whose flag sets the stand-in carries; the first is what the sim image claims by default.
SUPPORTED = ("0.19.0", "0.32.0")
DEFAULT_VERSION = SUPPORTED[0]
ENGINE_VERSION = "0.32.0"  # the only one whose engine runs here (0.19.0 needs a torch no index has)
BUILD_HINT = "tools/real-vllm.sh (or: make real-vllm)"


def cache_dir() -> Path:
    return Path(os.environ.get("SPARK_REAL_VLLM_CACHE", "/var/cache/sparkhelpers/real-vllm"))


def venv_dir() -> Path:
    return cache_dir() / f"vllm-{ENGINE_VERSION}"


def models_dir() -> Path:
    return cache_dir() / "models"


def flags_path(version: str) -> Path:
    return FLAGS_DIR / f"vllm-{version}.json"


def load_flags(version: str) -> dict:
    return json.loads(flags_path(version).read_text())


def available(version: str) -> bool:
    """Whether the real parser of ``version`` is installed here."""
    if not (venv_dir() / ".ready").is_file():
        return False
    return version == ENGINE_VERSION or (cache_dir() / f"parser-{version}" / ".ready").is_file()


def engine_available() -> bool:
    return (venv_dir() / ".ready").is_file() and (models_dir() / ".ready").is_file()


def _python(version: str) -> tuple[list[str], dict[str, str]]:
    if not available(version):
        raise SparkError(f"the real vLLM {version} parser is not installed under {cache_dir()}", fix=BUILD_HINT)
    env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu", "VLLM_LOGGING_LEVEL": "ERROR", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "PYTHONNOUSERSITE": "1"}
    env.pop("PYTHONPATH", None)
    if version != ENGINE_VERSION:  # an older vLLM laid over the engine venv's dependencies
        env["PYTHONPATH"] = str(cache_dir() / f"parser-{version}")
    return [str(venv_dir() / "bin" / "python"), str(PARSER_SCRIPT)], env


def run_parser(version: str, command: str, payload: object = None, timeout: float = 300) -> object:
    """Run vllm_parser.py ``command`` (dump, check) with the real vLLM ``version``; its JSON answer."""
    argv, env = _python(version)
    r = subprocess.run([*argv, command], input=json.dumps(payload) if payload is not None else "",
                       capture_output=True, text=True, env=env, timeout=timeout)
    if r.returncode != 0:
        tail = " | ".join(r.stderr.strip().splitlines()[-3:])
        raise SparkError(f"the real vLLM {version} parser failed ({command}): {tail}", fix=BUILD_HINT)
    return json.loads(r.stdout)


def generate(version: str) -> dict:
    """The flag set of the real ``vllm serve`` of ``version`` (the stand-in's JSON spec)."""
    spec = run_parser(version, "dump")
    if spec.get("vllm_version") != version:
        raise SparkError(f"asked for vLLM {version}, the environment has {spec.get('vllm_version')}",
                         fix=f"rebuild it: rm -rf {cache_dir()} && {BUILD_HINT}")
    return spec


def check_argvs(version: str, argvs: list[list[str]]) -> list[dict]:
    """Each argv (``["serve", MODEL, ...]``) parsed by the real parser: ``{"ok": bool, "error": str}``."""
    return run_parser(version, "check", argvs)


def generate_and_check(version: str, argvs: list[list[str]]) -> tuple[dict, list[dict]]:
    """``generate`` and ``check_argvs`` in one process (importing vLLM costs 5-30 s)."""
    out = run_parser(version, "both", argvs)
    return out["spec"], out["verdicts"]


def write_flags(version: str, spec: dict) -> Path:
    path = flags_path(version)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec, indent=1) + "\n")
    return path


TINY_MODEL = "tiny-llama-tp2"  # made by tools/make_tiny_models.py: 4 heads, 2 KV heads (TP=2 splits it)
NODE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def tiny_model_dir() -> Path:
    return models_dir() / TINY_MODEL


def track_config() -> dict[str, str]:
    """Config values that make the product's own start run the real vLLM in the sim's engine containers,
    instead of the stand-in: the engine venv and the node's /usr (its Python and libraries) mounted read-only
    at the same paths, so the image stays small; CPU settings measured on this machine type."""
    if not engine_available():
        raise SparkError(f"the real vLLM engine or its tiny model is missing under {cache_dir()}",
                         fix="tools/real-vllm.sh (without --parser-only)")
    venv = venv_dir()
    docker = ["--volume", "/usr:/usr:ro", "--volume", f"{cache_dir()}:{cache_dir()}:ro",
              "--env", f"PATH={venv}/bin:{NODE_PATH}", "--env", "VLLM_TARGET_DEVICE=cpu",
              "--env", "VLLM_CPU_KVCACHE_SPACE=1", "--env", "VLLM_CPU_OMP_THREADS_BIND=nobind",
              "--env", "VLLM_USAGE_SOURCE=sparkhelpers-sim", "--env", "DO_NOT_TRACK=1"]
    return {"EXTRA_DOCKER_ARGS": " ".join(docker), "EXTRA_ARGS": "--enforce-eager",
            "MAX_MODEL_LEN": "2048", "MAX_NUM_SEQS": "4"}
