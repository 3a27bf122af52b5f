"""One configuration: flag > environment > config.local.env > config.env > built-in default.

``resolve`` is the only place that precedence is implemented. The shell scripts never source a
config file: ``lib/common.sh`` evals the quoted assignments ``sparkhelpers config shell`` prints
(sparkhelpers/config/shell.py), so bash sees exactly these values.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sparkhelpers.config import envfile
from sparkhelpers.errors import SparkError

# Keys the code cannot work without; config.env must agree with these (tested).
BUILTIN_DEFAULTS: dict[str, str] = {
    "CLUSTER_NAME": "spark",
    "SSH_CONNECT_TIMEOUT": "5",
    "NCCL_DEBUG": "WARN",
    "FABRIC_MTU": "9000",
    "GPU_MEMORY_UTIL": "0.85",
    "PIPELINE_PARALLEL": "1",
    "RUNTIME": "vllm",
    "LAUNCH_MODE": "auto",
    "VLLM_PORT": "8000",
    "VLLM_HOST": "0.0.0.0",
    "RAY_PORT": "6385",
    "RAY_DASHBOARD_PORT": "8265",
    "RAY_DASHBOARD_HOST": "127.0.0.1",
    "MASTER_PORT": "29501",
    "START_TIMEOUT": "1800",
    "BENCH_PROFILE": "default",
    "BENCH_TIMEOUT": "3600",
}

# HF_CACHE when nobody set it: Hugging Face's own variables first, then the DGX Spark convention.
HF_CACHE_FALLBACK = "/raid/hf-cache"

_SECRET = re.compile(r"(TOKEN|API_KEY|SECRET|PASSWORD)$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def is_secret(key: str) -> bool:
    return bool(_SECRET.search(key)) and not key.endswith("_FILE")


def spark_home() -> Path:
    """The repo root holding config.env: $SPARK_HOME, else the checkout this package lives in."""
    env = os.environ.get("SPARK_HOME")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parents[2]
    if (here / "config.env").is_file():
        return here
    return Path.cwd()


def defaults_file() -> Path:
    return Path(os.environ.get("SPARK_CONFIG_DEFAULTS") or spark_home() / "config.env")


def local_file() -> Path:
    return Path(os.environ.get("SPARK_CONFIG") or spark_home() / "config.local.env")


@dataclass(frozen=True)
class Setting:
    key: str
    value: str
    source: str  # "flag", "environment", a file label, or "default"

    @property
    def display(self) -> str:
        if is_secret(self.key) and self.value:
            return "********"
        return self.value


@dataclass
class Config:
    settings: dict[str, Setting]
    files: list[Path] = field(default_factory=list)

    def get(self, key: str, default: str = "") -> str:
        s = self.settings.get(key)
        return s.value if s is not None and s.value != "" else default

    def require(self, key: str) -> str:
        value = self.get(key)
        if not value:
            raise SparkError(f"{key} is not set", fix=f"sparkhelpers config set {key} VALUE")
        return value

    def get_int(self, key: str, default: int = 0) -> int:
        raw = self.get(key)
        if raw == "":
            return default
        try:
            return int(raw)
        except ValueError:
            raise SparkError(f"{key}={raw!r} is not a whole number ({self.source(key)})",
                             fix=f"sparkhelpers config set {key} NUMBER") from None

    def get_float(self, key: str, default: float = 0.0) -> float:
        raw = self.get(key)
        if raw == "":
            return default
        try:
            return float(raw)
        except ValueError:
            raise SparkError(f"{key}={raw!r} is not a number ({self.source(key)})",
                             fix=f"sparkhelpers config set {key} NUMBER") from None

    def get_bool(self, key: str, default: bool = False) -> bool:
        raw = self.get(key).strip().lower()
        if raw == "":
            return default
        if raw in _TRUE:
            return True
        if raw in _FALSE:
            return False
        raise SparkError(f"{key}={raw!r} is not true or false ({self.source(key)})",
                         fix=f"sparkhelpers config set {key} true")

    def get_list(self, key: str) -> list[str]:
        return self.get(key).split()

    def source(self, key: str) -> str:
        s = self.settings.get(key)
        return s.source if s else "unset"

    def with_overrides(self, **flags: str | None) -> Config:
        """A copy with command-line flag values on top (None means the flag was not given)."""
        settings = dict(self.settings)
        for key, value in flags.items():
            if value is not None:
                settings[key] = Setting(key, str(value), "flag")
        return Config(settings, list(self.files))


def resolve(
    environ: Mapping[str, str],
    files: list[tuple[str, Path]],
    flags: Mapping[str, str] | None = None,
    builtin: Mapping[str, str] = BUILTIN_DEFAULTS,
) -> dict[str, Setting]:
    """The precedence rule itself. ``files`` are (label, path) from lowest to highest precedence.

    Files are read in order with bash's meaning (never executed): a reference sees the environment
    and every assignment made before it. The environment's own values are then put back on top, and flags
    on top of everything.
    """
    settings: dict[str, Setting] = {k: Setting(k, v, "default") for k, v in builtin.items()}
    variables: dict[str, str] = dict(environ)
    for label, path in files:
        if not path.is_file():
            continue
        try:
            assignments = envfile.parse_file(path)
        except envfile.EnvFileError as exc:
            raise SparkError(str(exc), fix="keep config files to KEY=value lines (see config.env)") from None
        for a in assignments:
            value = envfile.expand(a.segments, variables)
            variables[a.key] = value
            settings[a.key] = Setting(a.key, value, label)
    for key in list(settings):
        if key in environ:
            settings[key] = Setting(key, environ[key], "environment")
    for key, value in (flags or {}).items():
        if value is not None:
            settings[key] = Setting(key, str(value), "flag")
    if not settings.get("HF_CACHE", Setting("HF_CACHE", "", "")).value:
        settings["HF_CACHE"] = hf_cache_default(environ)
    return settings


def hf_cache_default(environ: Mapping[str, str]) -> Setting:
    """HF_CACHE (the directory holding ``hub/``) when no layer sets it: Hugging Face's conventions.

    ``HF_HUB_CACHE`` (the hub directory itself, so HF_CACHE is its parent), else ``HF_HOME`` (whose
    ``hub/`` is the hub cache), else /raid/hf-cache.
    """
    hub = environ.get("HF_HUB_CACHE", "").strip()
    if hub:
        path = Path(hub).expanduser()
        if path.name != "hub":
            raise SparkError(f"HF_HUB_CACHE={hub} is not a directory named hub, so the engines' layout "
                             "(HF_CACHE/hub) cannot point at it",
                             fix=f"set HF_CACHE to the directory that should hold hub/ (sparkhelpers config set "
                                 f"HF_CACHE {path.parent}), or unset HF_HUB_CACHE")
        return Setting("HF_CACHE", str(path.parent), "HF_HUB_CACHE")
    home = environ.get("HF_HOME", "").strip()
    if home:
        return Setting("HF_CACHE", str(Path(home).expanduser()), "HF_HOME")
    return Setting("HF_CACHE", HF_CACHE_FALLBACK, "default")


def load_config(flags: Mapping[str, str | None] | None = None,
                environ: Mapping[str, str] | None = None) -> Config:
    environ = os.environ if environ is None else environ
    dfile, lfile = defaults_file(), local_file()
    if not dfile.is_file():
        raise SparkError(f"config defaults not found at {dfile}",
                         fix="set SPARK_HOME to the sparkhelpers checkout")
    if os.environ.get("SPARK_CONFIG") and not lfile.is_file():
        raise SparkError(f"SPARK_CONFIG points at {lfile}, which does not exist",
                         fix="unset SPARK_CONFIG or create the file")
    label = "config.local.env" if lfile.name == "config.local.env" else str(lfile)
    files = [("config.env", dfile), (label, lfile)]
    settings = resolve(environ, files, {k: v for k, v in (flags or {}).items() if v is not None})
    return Config(settings, [p for _, p in files if p.is_file()])


def set_local(key: str, value: str, path: Path | None = None) -> Path:
    """Write KEY=value into the user's override file (mode 0600, atomic), replacing older lines."""
    path = path or local_file()
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        raise SparkError(f"{key!r} is not a valid key name", fix="use letters, digits and _")
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else [
        "# Local overrides for config.env (git-ignored, mode 0600). Edit with `sparkhelpers config set`."
    ]
    pattern = re.compile(rf"^\s*(export\s+)?{re.escape(key)}=")
    kept = [ln for ln in lines if not pattern.match(ln)]
    if value is not None:
        kept.append(f"{key}={envfile.quote(value)}")
    _write_private(path, "\n".join(kept) + "\n")
    return path


def unset_local(key: str, path: Path | None = None) -> Path:
    path = path or local_file()
    if path.exists():
        pattern = re.compile(rf"^\s*(export\s+)?{re.escape(key)}=")
        kept = [ln for ln in path.read_text(encoding="utf-8").splitlines() if not pattern.match(ln)]
        _write_private(path, "\n".join(kept) + "\n")
    return path


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def state_dir(cfg: Config | None = None) -> Path:
    """Locks, run state and engine logs. SPARK_STATE_DIR, else $XDG_STATE_HOME/sparkhelpers."""
    value = cfg.get("SPARK_STATE_DIR") if cfg else os.environ.get("SPARK_STATE_DIR", "")
    if value:
        return Path(value)
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "sparkhelpers"


def results_dir(cfg: Config) -> Path:
    value = cfg.get("RESULTS_DIR")
    return Path(value) if value else state_dir(cfg) / "results"


def documented_keys(path: Path | None = None) -> list[dict[str, str]]:
    """Keys of config.env with group, default and the comment above them (for docs and show)."""
    path = path or defaults_file()
    rows: list[dict[str, str]] = []
    group, comment = "", []
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        m = re.match(r"#\s*====\s*(.+?)\s*====", stripped)
        if m:
            group, comment = m.group(1), []
        elif stripped.startswith("#"):
            comment.append(stripped.lstrip("#").strip())
        elif "=" in stripped and group:
            key, _, default = stripped.partition("=")
            key = key.removeprefix("export").strip()
            rows.append({"group": group, "key": key, "default": default, "description": " ".join(comment)})
            comment = []
        else:
            comment = []
    return rows
