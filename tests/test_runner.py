"""The runner against real local processes; SSH is exercised for real on the emulated cluster."""

from __future__ import annotations

import time

from sparkhelpers.runner import Host, Runner, build_ssh_cmd, shell_join


def test_run_captures_output_and_exit_code():
    r = Runner().run(["bash", "-c", "echo out; echo err >&2; exit 3"])
    assert (r.returncode, r.stdout, r.stderr, r.ok) == (3, "out\n", "err\n", False)
    assert r.last_line == "err"


def test_missing_command_and_timeout_are_results_not_exceptions():
    assert Runner().run(["no-such-binary-xyz"]).returncode == 127
    t0 = time.monotonic()
    r = Runner().run(["sleep", "5"], timeout=0.3)
    assert r.returncode == 124 and "timed out" in r.stderr
    assert time.monotonic() - t0 < 4


def test_secret_goes_through_env_not_argv():
    r = Runner().run(["bash", "-c", 'printf %s "$TOKEN"'], env={"TOKEN": "s3cret"})
    assert r.stdout == "s3cret" and "s3cret" not in " ".join(r.argv)


def test_dry_run_prints_and_runs_nothing(tmp_path):
    lines: list[str] = []
    marker = tmp_path / "touched"
    r = Runner(dry_run=True, echo=lines.append).run(["touch", str(marker)])
    assert r.ok and r.dry_run and not marker.exists()
    assert lines == [f"[dry-run] local: touch {marker}"]
    probe = Runner(dry_run=True, echo=lines.append).run(["echo", "hi"], mutating=False)
    assert probe.stdout == "hi\n"


def test_check_names_host_and_last_line():
    import pytest

    from sparkhelpers.errors import SparkError

    with pytest.raises(SparkError, match=r"docker load failed on spark2 \(exit 1\): no space"):
        Runner().run(["bash", "-c", "echo no space >&2; exit 1"], host="spark2").check("docker load")


def test_build_ssh_cmd_is_pure_and_quotes_words():
    host = Host("10.0.0.2", user="ops", key="/k", options=("-p", "2222"), connect_timeout=3)
    cmd = build_ssh_cmd(host, ["echo", "a b", "$(x)"])
    assert cmd[:2] == ["ssh", "-o"] and "BatchMode=yes" in cmd and "ConnectTimeout=3" in cmd
    assert cmd[-3:] == ["ops@10.0.0.2", "--", "echo 'a b' '$(x)'"]
    assert cmd[cmd.index("-i") + 1] == "/k" and "2222" in cmd


def test_local_host_runs_without_ssh():
    r = Runner().on(Host("local"), ["echo", "x y"])
    assert r.argv == ("echo", "x y") and r.stdout == "x y\n"


def test_parallel_keeps_order_and_runs_concurrently():
    runner = Runner()
    t0 = time.monotonic()
    out = runner.parallel(lambda s: runner.run(["bash", "-c", f"sleep {s}; echo {s}"]).stdout.strip(),
                          ["0.4", "0.1", "0.3"])
    assert out == ["0.4", "0.1", "0.3"]
    assert time.monotonic() - t0 < 1.0


def test_shell_join_round_trips_through_bash():
    words = ["a b", "it's", "$HOME", "`id`", "x;y", ""]
    r = Runner().run(["bash", "-c", f"printf '%s\\n' {shell_join(words)}"])
    assert r.stdout.split("\n")[:-1] == words


def test_spawn_detaches_and_logs(tmp_path):
    import time

    from sparkhelpers.runner import Runner

    log = tmp_path / "out.log"
    pid = Runner().spawn(["sh", "-c", "echo started; echo $$ > " + str(tmp_path / "pid")], log_path=str(log))
    for _ in range(100):
        pid_file = tmp_path / "pid"  # created (empty) by the redirection before echo writes to it
        if pid_file.exists() and pid_file.read_text().strip() and "started" in log.read_text():
            break
        time.sleep(0.05)
    assert int((tmp_path / "pid").read_text()) == pid
    assert Runner(dry_run=True, echo=lambda _l: None).spawn(["true"], log_path=str(log)) == 0


def test_stream_splits_progress_redraws_and_keeps_stderr():
    from sparkhelpers.runner import Runner

    lines: list[str] = []
    r = Runner().stream(["bash", "-c", "printf '10%%\\r20%%\\rdone\\n'; echo oops >&2; exit 3"], lines.append)
    assert lines == ["10%", "20%", "done"]
    assert r.returncode == 3 and r.stderr == "oops\n" and r.last_line == "oops"


def test_stream_timeout_and_dry_run():
    from sparkhelpers.runner import Runner

    r = Runner().stream(["sleep", "30"], lambda _: None, timeout=0.5)
    assert r.returncode == 124 and "timed out" in r.stderr
    echoed: list[str] = []
    r = Runner(dry_run=True, echo=echoed.append).stream(["rm", "-rf", "/x"], lambda _: None)
    assert r.ok and r.dry_run and echoed == ["[dry-run] local: rm -rf /x"]


def test_ssh_transport_is_build_ssh_cmd_without_target():
    from sparkhelpers.runner import Host, build_ssh_cmd, ssh_transport

    host = Host("10.0.0.2", user="spark", key="/k", options=("-p", "2222"))
    assert build_ssh_cmd(host, ["true"]) == [*ssh_transport(host), "spark@10.0.0.2", "--", "true"]


def test_own_group_timeout_ends_grandchildren(tmp_path):
    marker = tmp_path / "late"
    # the grandchild would write the marker after the leader is gone, unless its group is ended
    script = f"(sleep 1.5; touch {marker}) & sleep 30"
    r = Runner().run(["bash", "-c", script], timeout=0.5, own_group=True)
    assert r.returncode == 124
    time.sleep(2)
    assert not marker.exists()


def test_own_group_exception_ends_the_group_and_propagates(tmp_path):
    import signal

    import pytest

    marker = tmp_path / "late"

    class Stop(Exception):
        pass

    def raise_stop(signum, frame):
        raise Stop

    old = signal.signal(signal.SIGALRM, raise_stop)
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    try:
        with pytest.raises(Stop):
            Runner().run(["bash", "-c", f"(sleep 1.5; touch {marker}) & sleep 30"], own_group=True)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    time.sleep(2)
    assert not marker.exists()


def test_own_group_normal_run_captures_output():
    r = Runner().run(["bash", "-c", "cat; echo err >&2; exit 2"], input="in\n", own_group=True)
    assert (r.returncode, r.stdout, r.stderr) == (2, "in\n", "err\n")
