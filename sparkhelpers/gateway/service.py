"""Running the gateway as a service: start in the background, stop, status, the systemd unit, the local admin key.

``gateway start`` runs ``sparkhelpers gateway run`` detached (through the runner), then waits for /health; it says
"ready" only when the gateway answers. ``gateway stop`` sends SIGTERM (the gateway stops its engines) and SIGKILL
after the timeout. The CLI talks to its own gateway with the local control key (a 0600 file in the state dir).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from sparkhelpers.errors import SparkError
from sparkhelpers.gateway.models_file import GatewayConfig


def gw_dir(state_dir: Path) -> Path:
    return state_dir / "gateway"


def default_models_file(state_dir: Path) -> Path:
    return Path(os.environ.get("GATEWAY_MODELS_FILE") or gw_dir(state_dir) / "models.yaml")


def url_of(cfg: GatewayConfig) -> str:
    host = "127.0.0.1" if cfg.listen_host in ("0.0.0.0", "::", "") else cfg.listen_host
    return f"http://{host}:{cfg.listen_port}"


def read_pid(state_dir: Path) -> int:
    """The pid of our running gateway, or 0 (a stale pid file, or a pid that is not a gateway, counts as none)."""
    try:
        pid = int((gw_dir(state_dir) / "gateway.pid").read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return 0
    return pid if b"gateway" in cmdline and b"run" in cmdline else 0


def control_get(state_dir: Path, url: str, path: str, method: str = "GET", timeout: float = 5.0) -> dict:
    key = (gw_dir(state_dir) / "control.key").read_text().strip()
    req = urllib.request.Request(url + path, method=method, headers={"Authorization": f"Bearer {key}"},
                                 data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - our own gateway's URL
        return json.loads(resp.read() or b"{}")


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as resp:  # noqa: S310
            return resp.status == 200
    except (OSError, urllib.error.URLError):
        return False


def run_argv(models_file: Path) -> list[str]:
    return [sys.executable, "-m", "sparkhelpers", "gateway", "run", "--models", str(models_file.resolve())]


def start(cfg: GatewayConfig, models_file: Path, state_dir: Path, timeout_s: float, runner) -> tuple[int, str]:  # noqa: ANN001
    url = url_of(cfg)
    pid = read_pid(state_dir)
    if pid and healthy(url):
        return pid, "already running"
    gw_dir(state_dir).mkdir(parents=True, exist_ok=True)
    log = gw_dir(state_dir) / "gateway.log"
    pid = runner.spawn(run_argv(models_file), log_path=str(log))
    if runner.dry_run:
        return 0, "dry run"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if healthy(url) and read_pid(state_dir) == pid:
            return pid, "started"
        with contextlib.suppress(ChildProcessError):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                tail = log.read_text(errors="replace").strip().splitlines()[-3:]
                raise SparkError(f"the gateway exited at start (code {os.waitstatus_to_exitcode(status)}): "
                                 + " | ".join(tail), fix=f"see {log}")
        time.sleep(0.2)
    raise SparkError(f"the gateway did not answer {url}/health within {timeout_s:g} s", fix=f"see {log}")


def stop(state_dir: Path, timeout_s: float) -> str:
    pid = read_pid(state_dir)
    if not pid:
        return "not running"
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists() or _zombie(pid):
            return f"stopped (pid {pid})"
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return f"killed after {timeout_s:g} s (pid {pid}); its engines are ended at the next start"


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def unit_text(models_file: Path, state_dir: Path, user: str = "") -> str:
    """A systemd unit running the gateway in the foreground; systemd restarts it, the gateway ends its engines."""
    exe = Path(sys.executable).parent / "sparkhelpers"
    start_cmd = f"{exe} gateway run --models {models_file.resolve()}" if exe.exists() else \
        f"{sys.executable} -m sparkhelpers gateway run --models {models_file.resolve()}"
    env = [f"Environment=SPARK_STATE_DIR={state_dir.resolve()}"]
    if os.environ.get("SPARK_HOME"):
        env.append(f"Environment=SPARK_HOME={os.environ['SPARK_HOME']}")
    lines = ["[Unit]", "Description=sparkhelpers gateway: one OpenAI-compatible endpoint for the Spark cluster",
             "After=network-online.target docker.service", "Wants=network-online.target", "", "[Service]",
             "Type=simple", *( [f"User={user}"] if user else []), *env, f"ExecStart={start_cmd}",
             "KillMode=mixed", "KillSignal=SIGTERM", "TimeoutStopSec=120", "Restart=on-failure", "RestartSec=5",
             "UMask=0077", "NoNewPrivileges=yes", "", "[Install]", "WantedBy=multi-user.target"]
    return "\n".join(lines) + "\n"
