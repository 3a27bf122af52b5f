"""SSH connection sharing (issue 13): the pure argv builders, the control directory, and a stale or
wedged master never hanging a call. The real masters on real sshd are in test_ssh_mux_sim.py."""

from __future__ import annotations

import os
import shlex
import socket
import stat
import threading
import time

import pytest

from sparkhelpers.errors import SparkError
from sparkhelpers.runner import (
    SSH_BIND_SUFFIX,
    SUN_PATH_MAX,
    Host,
    Multiplex,
    Runner,
    build_ssh_cmd,
    control_dir,
    control_path,
    control_paths,
    master_answers,
    master_cmd,
    prepare_control,
    rsync_shell,
    ssh_transport,
)

MUX = Multiplex("/var/lib/sparkhelpers/ssh", 30)
HOST = Host("10.0.0.2", user="spark", key="/k", options=("-p", "2222"), connect_timeout=6, mux=MUX,
            bulk_cipher="aes128-gcm@openssh.com")


def opt(argv: list[str], name: str) -> list[str]:
    """Every value of ``-o NAME=...`` in argv, in order."""
    return [argv[i + 1].split("=", 1)[1] for i, a in enumerate(argv[:-1])
            if a == "-o" and argv[i + 1].startswith(name + "=")]


def test_a_shared_control_call_names_its_master_and_notices_a_dead_peer_in_about_connect_timeout():
    argv = build_ssh_cmd(HOST, ["docker", "ps"])
    assert opt(argv, "ControlMaster") == ["auto"] and opt(argv, "ControlPersist") == ["30s"]
    (path,) = opt(argv, "ControlPath")
    assert path.startswith("/var/lib/sparkhelpers/ssh/c") and len(os.path.basename(path)) == 11
    assert opt(argv, "ServerAliveInterval") == ["3"] and opt(argv, "ServerAliveCountMax") == ["2"]
    assert opt(argv, "Ciphers") == [], "control calls keep ssh's cipher order"
    assert argv[-3:] == ["spark@10.0.0.2", "--", "docker ps"] and argv[argv.index("-i") + 1] == "/k"
    # ssh takes the first value of an option: ours come once, the user's SSH_OPTIONS last
    assert argv[-5:-3] == ["-p", "2222"] and all(len(opt(argv, k)) <= 1 for k in ("ControlPath", "BatchMode"))


def test_a_bulk_copy_prefers_the_cipher_on_its_own_master_with_patient_keepalives():
    argv = ssh_transport(HOST, bulk=True)
    assert opt(argv, "Ciphers") == ["^aes128-gcm@openssh.com"], "first choice, ssh's defaults as fallback"
    (path,) = opt(argv, "ControlPath")
    assert os.path.basename(path).startswith("b") and path != control_path(HOST)
    assert opt(argv, "ServerAliveInterval") == ["15"] and opt(argv, "ServerAliveCountMax") == ["4"]
    assert "Ciphers" not in " ".join(ssh_transport(Host("h", mux=MUX), bulk=True)), "no cipher set: none asked"


def test_multiplex_false_is_a_connection_of_its_own_and_no_mux_adds_nothing():
    own = ssh_transport(HOST, multiplex=False)
    assert opt(own, "ControlMaster") == ["no"] and opt(own, "ControlPath") == ["none"]
    assert opt(own, "ServerAliveInterval") == ["15"]
    plain = ssh_transport(Host("10.0.0.2", key="/k"))
    assert not any("Control" in a for a in plain), "SSH_CONTROL_PERSIST=0: the user's ssh config decides"
    assert build_ssh_cmd(HOST, "true", multiplex=False)[:-3] == own


def test_one_master_per_connection_that_would_differ():
    base = control_path(HOST)
    assert control_path(HOST) == base, "deterministic: every process finds the same master"
    others = {control_path(Host("10.0.0.3", user="spark", key="/k", options=("-p", "2222"), mux=MUX)),
              control_path(Host("10.0.0.2", user="root", key="/k", options=("-p", "2222"), mux=MUX)),
              control_path(Host("10.0.0.2", user="spark", key="/other", options=("-p", "2222"), mux=MUX)),
              control_path(Host("10.0.0.2", user="spark", key="/k", mux=MUX)),
              control_path(HOST, bulk=True)}
    assert base not in others and len(others) == 5


def test_rsync_gets_the_same_transport_through_e():
    assert shlex.split(rsync_shell(HOST)) == ssh_transport(HOST, bulk=True)
    spaced = Host("h", options=("-o", "ProxyCommand=ssh -W %h:%p bastion"), mux=MUX)
    assert shlex.split(rsync_shell(spaced, bulk=False)) == ssh_transport(spaced)


def test_the_control_directory_fits_the_unix_socket_limit_or_moves(monkeypatch):
    assert control_dir("/var/lib/sparkhelpers") == "/var/lib/sparkhelpers/ssh"
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    deep = "/srv/" + "very-long-directory-name/" * 4 + "state"
    moved = control_dir(deep)
    assert moved.startswith(f"/tmp/sparkhelpers-ssh-{os.getuid()}-") and moved == control_dir(deep)
    assert moved != control_dir(deep + "2"), "one directory per state directory"
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert control_dir(deep).startswith("/run/user/1000/sparkhelpers-ssh-")
    assert control_dir("/home/a b/state").startswith("/run/user/1000/"), "no path that needs quoting"
    for state in ("/var/lib/sparkhelpers", deep, "/x" * 40):
        path = control_path(Host("h", mux=Multiplex(control_dir(state))), bulk=True)
        assert len(path) + SSH_BIND_SUFFIX <= SUN_PATH_MAX, path


def test_control_paths_are_found_in_argv_and_inside_scripts():
    load = " ".join(shlex.quote(a) for a in build_ssh_cmd(HOST, ["docker", "load"], bulk=True))
    script = ["bash", "-c", f"docker save img | {load}"]
    assert control_paths(script) == [control_path(HOST, bulk=True)]
    assert control_paths(["rsync", "-a", "-e", rsync_shell(HOST), "a/", "h:b/"]) == [control_path(HOST, bulk=True)]
    assert control_paths(master_cmd("/s/c0123456789")) == ["/s/c0123456789"]
    assert control_paths(ssh_transport(HOST, multiplex=False)) == []


def test_prepare_makes_a_private_directory_and_refuses_one_that_is_not_ours(tmp_path):
    d = tmp_path / "state" / "ssh"
    prepare_control(["ssh", "-o", f"ControlPath={d}/c0123456789", "h", "true"])
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    d.chmod(0o755)
    prepare_control(["ssh", "-o", f"ControlPath={d}/c0123456789", "h", "true"])
    assert stat.S_IMODE(d.stat().st_mode) == 0o700, "a loosened directory is tightened again"
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    with pytest.raises(SparkError, match="is not a directory of this user"):
        prepare_control([f"ControlPath={link}/c0123456789"])


def _listener(path: str, greet: bool) -> socket.socket:
    """A unix socket at ``path`` that greets clients like an ssh master, or never answers (wedged)."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(8)

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            if greet:
                conn.sendall(bytes.fromhex("000000080000000100000004"))  # MUX_MSG_HELLO, version 4
    if greet:
        threading.Thread(target=serve, daemon=True).start()
    return srv


def test_a_wedged_or_stale_master_is_replaced_and_a_live_one_kept(tmp_path):
    d = tmp_path / "ssh"
    d.mkdir(mode=0o700)
    live, wedged, stale = (str(d / n) for n in ("c000000000a", "c000000000b", "c000000000c"))
    servers = [_listener(live, greet=True), _listener(wedged, greet=False)]
    dead = _listener(stale, greet=False)
    dead.close()  # the socket file stays, nobody listens: a master killed with -9
    try:
        assert master_answers(live) is True and master_answers(str(d / "c000000000d")) is None
        warned: list[str] = []
        t0 = time.monotonic()
        Runner(warn=warned.append).run(["true", f"ControlPath={live}", f"ControlPath={wedged}",
                                        f"ControlPath={stale}"])
        assert time.monotonic() - t0 < 5, "a wedged master costs at most its one-second greeting wait"
        assert os.path.exists(live), "a master that answers is left alone"
        assert not os.path.exists(wedged) and not os.path.exists(stale)
        assert len(warned) == 2 and all("did not answer; replaced" in w for w in warned)
    finally:
        for srv in servers:
            srv.close()


def test_close_masters_ends_what_answers_and_removes_the_directory(tmp_path):
    d = tmp_path / "ssh"
    d.mkdir(mode=0o700)
    (d / "c0123456789").touch()  # stale: nothing to end
    (d / "notes").touch()
    echoed: list[str] = []
    assert Runner(dry_run=True, echo=echoed.append).close_masters(str(d)) == 0
    assert echoed == [f"[dry-run] local: ssh -o ControlPath={d}/c0123456789 -O stop sparkhelpers-master"]
    assert d.exists(), "a dry run removes nothing"
    assert Runner().close_masters(str(d)) == 0 and not d.exists()
    assert Runner().close_masters(str(d)) == 0, "idempotent"


def test_config_keys_reach_the_host(monkeypatch, tmp_path):
    from sparkhelpers.config import load_config
    from sparkhelpers.topology import host_for

    monkeypatch.setenv("SPARK_STATE_DIR", str(tmp_path))
    host = host_for(load_config(), "10.0.0.2")
    assert host.mux == Multiplex(f"{tmp_path}/ssh", 30) and host.bulk_cipher == "aes128-gcm@openssh.com"
    monkeypatch.setenv("SSH_CONTROL_PERSIST", "0")
    monkeypatch.setenv("SSH_BULK_CIPHER", "")
    host = host_for(load_config(), "10.0.0.2")
    assert host.mux is None and host.bulk_cipher == ""


def test_a_cipher_this_ssh_lacks_is_refused_with_the_list(monkeypatch):
    from sparkhelpers import runner
    from sparkhelpers.validate import check

    monkeypatch.setattr(runner, "ssh_ciphers", lambda: ("aes128-ctr", "aes256-gcm@openssh.com"))
    assert check("SSH_BULK_CIPHER", "aes256-gcm@openssh.com") == "aes256-gcm@openssh.com"
    with pytest.raises(SparkError) as exc:
        check("SSH_BULK_CIPHER", "blowfish-cbc")
    assert "not a cipher this ssh supports (aes128-ctr, aes256-gcm@openssh.com)" in exc.value.message
    assert exc.value.fix == "sparkhelpers config set SSH_BULK_CIPHER aes256-gcm@openssh.com"
    with pytest.raises(SparkError, match="is not one cipher name"):
        check("SSH_BULK_CIPHER", "aes128-ctr,none")
    for bad in ("-1", "3601", "soon"):
        with pytest.raises(SparkError):
            check("SSH_CONTROL_PERSIST", bad)


def test_the_real_ssh_lists_the_default_cipher():
    from sparkhelpers.runner import ssh_ciphers
    from sparkhelpers.validate import DEFAULT_BULK_CIPHER

    if not ssh_ciphers():
        pytest.skip("no ssh client here")
    assert DEFAULT_BULK_CIPHER in ssh_ciphers()


def test_open_early_runs_in_the_background_and_only_where_it_can_share(tmp_path, monkeypatch):
    calls: list[tuple] = []
    gate = threading.Event()

    def slow_on(self, host, argv, **kwargs):  # noqa: ANN001, ANN202
        gate.wait(5)
        calls.append((host.address, tuple(argv), kwargs["mutating"]))

    monkeypatch.setattr(Runner, "on", slow_on)
    shared = Host("10.0.1.2", mux=Multiplex(str(tmp_path)))
    t0 = time.monotonic()
    threads = Runner().open_early([shared, Host("10.0.1.3"), Host("local", mux=MUX)])
    assert time.monotonic() - t0 < 1, "not waited for"
    gate.set()
    for thread in threads:
        thread.join(5)
    assert calls == [("10.0.1.2", ("true",), False)], "only a host that shares connections"
    assert Runner(dry_run=True).open_early([shared]) == []
