"""Foreground mode (`sparkhelpers cluster run`): start, stay while every rank is alive and the engine healthy,
stop every rank on SIGTERM/SIGINT (exit 0), exit 1 (after stopping the rest) when a rank dies.

This is what a llama-swap `cmd`, a systemd unit or the gateway's model manager runs: one process per
served model, whose exit status says whether the model is still there.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from sparkhelpers.cluster import nodes as nd
from sparkhelpers.runner import Runner, shell_quote

POLL_S = 2.0
UNHEALTHY_LIMIT_S = 30.0  # containers up but /health failing this long: the engine is gone


class Stop(Exception):
    """SIGTERM or SIGINT arrived while serving."""


@dataclass
class Watch:
    plan: object  # cluster.plan.ClusterPlan
    runner: Runner
    say: Callable[[str], None]

    def states(self) -> dict[int, str]:
        def state(node) -> tuple[int, str]:  # noqa: ANN001
            r = self.runner.on(node.host, f"docker inspect --format '{{{{.State.Status}}}}' "
                                          f"{shell_quote(node.container)} 2>/dev/null || echo missing",
                               timeout=node.host.connect_timeout + 15, mutating=False)
            return node.rank, (r.stdout.strip() or "unknown") if r.ok else f"unreachable ({r.last_line})"
        return dict(self.runner.parallel(state, list(self.plan.nodes)))

    def healthy(self) -> bool:
        from sparkhelpers.cluster.lifecycle import engine_healthy

        return engine_healthy(self.plan.endpoint, timeout=5)

    def dead_rank(self) -> str:
        """'' while every rank's container runs, else what happened (with the rank's last log lines)."""
        for rank, state in sorted(self.states().items()):
            if state != "running":
                node = self.plan.nodes[rank]
                tail = self.runner.on(node.host, nd.tail_cmd(self.plan.log_dir, rank, 5, False, ""), timeout=20,
                                      mutating=False).stdout.strip()
                return f"rank {rank} ({node.label}) is {state}" + (f"; its log ends:\n{tail}" if tail else "")
        return ""

    def serve(self) -> str:
        """Block while serving; the reason it stopped serving (never returns on a clean run: Stop ends it)."""
        unhealthy_since: float | None = None
        while True:
            dead = self.dead_rank()
            if dead:
                return dead
            if self.healthy():
                unhealthy_since = None
            elif unhealthy_since is None:
                unhealthy_since = time.monotonic()
            elif time.monotonic() - unhealthy_since > UNHEALTHY_LIMIT_S:
                return f"{self.plan.endpoint}/health has failed for {UNHEALTHY_LIMIT_S:.0f}s"
            time.sleep(POLL_S)


def install_stop_signals() -> None:
    def stop(signum, frame):  # noqa: ANN001, ANN202
        raise Stop(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
