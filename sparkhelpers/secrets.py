"""The one secret reader: one precedence and one file policy for every secret (API_KEY, HF_TOKEN).

Precedence, the same from every command (start, status, smoke, bench, download, the sweep):

1. ``KEY_FILE`` when it is set (flag > environment > config.local.env > config.env, as every key);
2. ``KEY`` itself (from the environment or config.local.env; never a flag: it would show in ps);
3. for ``HF_TOKEN`` only: the token ``hf auth login`` saved (``huggingface_hub.get_token()``).

File policy, the same for every secret file (ours and the one ``hf auth login`` wrote): it must be
readable, mode 0600 or stricter (a group- or world-readable file is refused with ``chmod 600 FILE``),
and hold one non-empty value. An empty or whitespace-only file is refused: it must never quietly turn
authentication off. Values are returned, never printed; ``Secret.__repr__`` masks them.
"""

from __future__ import annotations

import hashlib
import json
import stat
from dataclasses import dataclass, field
from pathlib import Path

from sparkhelpers.config import Config
from sparkhelpers.errors import SparkError

SECRET_KEYS = ("API_KEY", "HF_TOKEN")


@dataclass(frozen=True)
class Secret:
    key: str
    value: str = field(repr=False)  # "" when none is configured
    source: str  # "API_KEY_FILE /path", "API_KEY (environment)", "hf auth login /path", or "none"

    def __bool__(self) -> bool:
        return bool(self.value)


def read_secret_file(path: Path, key: str, label: str = "") -> str:
    """The value in a secret file, under the one policy (mode 0600, readable, one non-empty value)."""
    label = label or f"{key}_FILE {path}"
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SparkError(f"{label} cannot be read: {exc.strerror}",
                         fix=f"write the secret into {path} with mode 0600, or unset {key}_FILE") from None
    except UnicodeDecodeError:
        raise SparkError(f"{label} is not text", fix=f"write only the secret into {path}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SparkError(f"{label} is readable by other users (mode {oct(stat.S_IMODE(mode))})",
                         fix=f"chmod 600 {path}")
    value = text.strip()
    if not value:
        raise SparkError(f"{label} is empty (authentication would silently be off)",
                         fix=f"write the secret into {path}, or remove the file / unset {key}_FILE to run without one")
    if any(ch.isspace() for ch in value):
        raise SparkError(f"{label} holds more than one word or line", fix=f"write only the secret into {path}")
    return value


def read(cfg: Config, key: str) -> Secret:
    """KEY's secret by the one precedence (see the module docstring)."""
    file_value = cfg.get(f"{key}_FILE").strip()
    if file_value:
        path = Path(file_value).expanduser()
        return Secret(key, read_secret_file(path, key), f"{key}_FILE {path}")
    value = cfg.get(key).strip()
    if value:
        return Secret(key, value, f"{key} ({cfg.source(key)})")
    if key == "HF_TOKEN":
        return _saved_hf_token()
    return Secret(key, "", "none")


def secret_value(cfg: Config, key: str) -> str:
    """Just the value ("" when none is configured)."""
    return read(cfg, key).value


def _saved_hf_token() -> Secret:
    """The token ``hf auth login`` saved (HF_TOKEN_PATH, else HF_HOME/token), under the same file policy."""
    from huggingface_hub import constants, get_token

    path = Path(constants.HF_TOKEN_PATH)
    if path.is_file():
        # the same mode and emptiness policy; get_token() then gives the value (and refreshes OAuth tokens)
        read_secret_file(path, "HF_TOKEN", f"the token `hf auth login` saved in {path}")
    token = (get_token() or "").strip()
    return Secret("HF_TOKEN", token, f"hf auth login {path}" if token else "none")


def problems(cfg: Config) -> list[SparkError]:
    """Every secret that cannot be read by the policy (for ``config check``)."""
    found: list[SparkError] = []
    for key in SECRET_KEYS:
        try:
            read(cfg, key)
        except SparkError as exc:
            found.append(exc)
    return found


def secrets_digest(values: dict[str, str], salt: str) -> str:
    """A short digest of secret values, never the values: part of the running configuration's identity,
    so a rotated API key or HF token restarts the engine. PBKDF2 makes testing guesses against the
    container label slow; "" without secrets."""
    if not values:
        return ""
    blob = json.dumps(sorted(values.items())).encode()
    return hashlib.pbkdf2_hmac("sha256", blob, f"sparkhelpers-secrets:{salt}".encode(), 100_000)[:4].hex()


def exposure_warning(listen: str, api_key: str) -> str:
    """A warning when the API answers beyond this host without a key ("" otherwise)."""
    if api_key or listen in ("127.0.0.1", "::1", "localhost") or listen.startswith("127."):
        return ""
    return (f"the API listens on {listen or '0.0.0.0'} (reachable from other hosts) without an API key: "
            "anyone on the network can use it (set API_KEY_FILE to a 0600 file with a key, or VLLM_HOST=127.0.0.1)")
