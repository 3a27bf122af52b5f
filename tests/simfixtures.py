"""pytest plugin: emulated-cluster fixtures for every test module (registered in conftest.py).

- ``sim_cluster`` (session): one 2-node cluster shared by the whole session, engine image on every node.
  Tests must leave it as they found it (undo faults with ``sim fault NODE clear`` / ``faults.clear``).
- ``make_sim`` (function): factory ``make_sim(nodes=2, facts=None, image_on="none") -> Cluster`` for
  tests that need their own cluster (different facts, destructive faults); torn down after the test.

Both skip when the machine cannot run the sim (not root, tools missing), unless SPARK_REQUIRE_SIM=1
(CI), where they fail instead. Every cluster is torn down even when the test fails. Names are unique
per session (``t<pid>``), so parallel sessions of other helpers never collide; clusters left by a
killed session are swept at the next session start.
"""

from __future__ import annotations

import itertools
import os
import re

import pytest

from sparkhelpers.errors import SparkError

SESSION_IMAGE_ON = "all"  # a healthy cluster: the same image on every node
_STALE = re.compile(r"^sparksim-(t(\d+)(?:-\d+)?)-(?:sw|ctl|spark\d+)$")


def sim_unavailable() -> str:
    """Why this machine cannot run the sim ("" when it can)."""
    from sparkhelpers.runner import Runner
    from sparkhelpers.sim.cluster import check_host

    runner = Runner()
    try:
        check_host(runner)
    except SparkError as exc:
        return f"{exc.message} ({exc.fix})"
    probe = runner.run(["unshare", "--net", "--mount", "--pid", "--fork", "true"], timeout=30)
    if not probe.ok:
        return f"cannot create namespaces here: {probe.last_line}"
    return ""


def require_sim() -> None:
    reason = sim_unavailable()
    if reason:
        if os.environ.get("SPARK_REQUIRE_SIM") == "1":
            pytest.fail(f"SPARK_REQUIRE_SIM=1 but the sim cannot run: {reason}")
        pytest.skip(f"emulated cluster unavailable: {reason}")


def sweep_stale(state_dir) -> None:  # noqa: ANN001
    """Tear down test clusters whose pytest session (the pid in their name) is gone."""
    from sparkhelpers.runner import Runner
    from sparkhelpers.sim import cluster as cl

    runner = Runner()
    for ns in cl.netns_list(runner):
        m = _STALE.match(ns)
        if m and not cl.alive(int(m.group(2))):
            cl.down(m.group(1), state_dir, runner=runner)


@pytest.fixture(scope="session")
def sim_state_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("simstate")


@pytest.fixture(scope="session")
def sim_cluster(sim_state_dir):
    """A 2-node cluster (spark1 head, spark2 worker) with the engine image on both nodes."""
    require_sim()
    from sparkhelpers import sim

    sweep_stale(sim_state_dir)
    name = f"t{os.getpid()}"
    try:
        cluster = sim.up(name, 2, state_dir=sim_state_dir, image_on=SESSION_IMAGE_ON)
    except BaseException:
        sim.down(name, state_dir=sim_state_dir)
        raise
    try:
        yield cluster
    finally:
        sim.down(name, state_dir=sim_state_dir)


_counter = itertools.count(1)


@pytest.fixture
def make_sim(sim_state_dir):
    """Factory for a private cluster: ``make_sim(nodes=2, facts={"spark2": {"mtu": 1500}}, image_on="none")``."""
    require_sim()
    from sparkhelpers import sim

    names: list[str] = []

    def factory(nodes: int = 2, facts=None, image_on: str = "none"):  # noqa: ANN001, ANN202
        name = f"t{os.getpid()}-{next(_counter)}"
        names.append(name)
        return sim.up(name, nodes, facts=facts, image_on=image_on, state_dir=sim_state_dir)

    try:
        yield factory
    finally:
        for name in names:
            sim.down(name, state_dir=sim_state_dir)
