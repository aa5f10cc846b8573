"""`pykvpd reload` against the real daemon process and the simulated kernel: it returns once
the daemon has handled the SIGHUP, with the outcome already in the status file, and fails when
the config was refused. The unit runs it as ExecReload= (tests/test_systemd_real.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from cdaemon import KvpPeer

from pykvpd import protocol as p

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Reloadable:
    """A running daemon with a config file it can be told to re-read."""

    def __init__(self, peer: KvpPeer) -> None:
        self.peer = peer
        self.config = os.path.join(peer.workdir, "no-such-pykvpd.conf")  # what KvpPeer passes
        self.status_path = os.path.join(peer.workdir, "py-status.json")

    def status(self) -> dict:
        with open(self.status_path) as fh:
            return json.load(fh)

    def write_config(self, text: str) -> None:
        with open(self.config, "w") as fh:
            fh.write(text)

    def log(self) -> str:
        return self.peer.log_tail(100000)


def run_reload(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pykvpd", "reload", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def daemon(tmp_path):
    with open(tmp_path / "no-such-pykvpd.conf", "w") as fh:
        fh.write("[pykvpd]\ndebug = no\n")
    with KvpPeer.py(str(tmp_path)) as peer:
        # One answered request: the status file is written before the serving loop starts.
        assert peer.enumerate(0, 0)[0] == p.HV_S_CONT
        yield Reloadable(peer)


def test_reload_returns_after_the_new_config_is_in_effect(daemon):
    peer = daemon.peer
    pid = peer.proc.pid
    assert daemon.status()["reloads"] == 0 and daemon.status()["last_reload"] is None
    daemon.write_config("[pykvpd]\ndebug = yes\n")
    done = run_reload("--pid", str(pid), "--status-file", daemon.status_path)
    # At this moment, without any waiting: the outcome is published, the new config applies.
    status = daemon.status()
    assert (done.returncode, done.stderr, done.stdout) == (0, "", "")
    assert status["pid"] == pid and status["reloads"] == 1
    assert status["last_reload"]["ok"] is True and status["last_reload"]["error"] is None
    assert "configuration reloaded" in daemon.log()
    assert peer.set(1, b"after", b"v") == p.HV_S_OK
    assert "SET pool=1 key='after'" in daemon.log()  # debug on: one line per host operation

    # Without --pid: the daemon the status file names.
    daemon.write_config("[pykvpd]\ndebug = no\n")
    assert run_reload("--status-file", daemon.status_path).returncode == 0
    assert daemon.status()["reloads"] == 2
    assert peer.set(1, b"quiet", b"v") == p.HV_S_OK
    assert "key='quiet'" not in daemon.log()
    assert peer.alive() and peer.proc.pid == pid


def test_a_refused_config_fails_the_reload_and_the_old_one_stays(daemon):
    peer = daemon.peer
    daemon.write_config("[pykvpd]\ndebug = yes\n")
    done = run_reload("--pid", str(peer.proc.pid), "--status-file", daemon.status_path)
    assert done.returncode == 0
    # An unknown key whose name carries a terminal escape (keys are quoted as they were read).
    daemon.write_config("[pykvpd]\ndebug = no\n\x1b[2jgone = 1\n")
    done = run_reload("--pid", str(peer.proc.pid), "--status-file", daemon.status_path)
    assert done.returncode == 1, done
    assert done.stderr.startswith("pykvpd: reload failed, the old configuration stays: ")
    assert daemon.config in done.stderr and "unknown key" in done.stderr
    assert "\x1b" not in done.stderr and "\\x1b[2jgone" in done.stderr
    assert done.stderr.count("\n") == 1
    last = daemon.status()["last_reload"]
    assert daemon.status()["reloads"] == 2 and last["ok"] is False
    assert "unknown key" in last["error"]
    assert "SIGHUP: keeping the old configuration" in daemon.log()
    # Still serving, and still with the old config (debug on).
    assert peer.get(1, b"nothing") == (p.HV_S_CONT, b"")
    assert peer.set(1, b"still", b"v") == p.HV_S_OK
    assert "SET pool=1 key='still'" in daemon.log()


def test_no_answer_within_the_timeout(daemon):
    """A daemon that cannot handle the SIGHUP (stopped here) makes the reload give up."""
    peer = daemon.peer
    os.kill(peer.proc.pid, signal.SIGSTOP)
    try:
        done = run_reload(
            "--pid", str(peer.proc.pid), "--status-file", daemon.status_path, "--timeout", "0.5"
        )
    finally:
        os.kill(peer.proc.pid, signal.SIGCONT)
    assert done.returncode == 1
    assert f"the daemon (pid {peer.proc.pid}) did not report the reload within 0.5 s" in (
        done.stderr
    )
    # Running again, it handles the SIGHUP; the next reload is confirmed.
    assert run_reload("--pid", str(peer.proc.pid), "--status-file", daemon.status_path,
                      "--timeout", "20").returncode == 0
    assert peer.set(0, b"k", b"v") == p.HV_S_OK


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_not_running_is_exit_3(daemon, tmp_path):
    gone = dead_pid()
    done = run_reload("--pid", str(gone), "--status-file", daemon.status_path)
    assert done.returncode == 3
    assert done.stderr == f"pykvpd: the daemon (pid {gone}) is not running\n"
    missing = str(tmp_path / "none" / "status.json")
    done = run_reload("--pid", str(daemon.peer.proc.pid), "--status-file", missing)
    assert done.returncode == 3
    assert done.stderr == f"pykvpd: no status file {missing}: is the daemon running?\n"
    # A live process that is not the daemon the status file speaks for: not signalled.
    other = subprocess.Popen(["sleep", "60"])
    try:
        done = run_reload("--pid", str(other.pid), "--status-file", daemon.status_path)
        assert other.poll() is None  # no SIGHUP
    finally:
        other.kill()
        other.wait()
    assert done.returncode == 3 and "is the status of pid" in done.stderr
    assert daemon.status()["reloads"] == 0
    # The status file of a daemon that is gone (stale): nobody to signal.
    daemon.peer.kill(signal.SIGKILL)
    done = run_reload("--status-file", daemon.status_path)
    assert done.returncode == 3 and "is not running" in done.stderr


def test_junk_pid_in_the_status_file_is_not_running_and_escaped(tmp_path):
    path = tmp_path / "status.json"
    path.write_text(json.dumps({"pid": "1\x1b[2J", "reloads": 0}))
    done = run_reload("--status-file", str(path))
    assert (done.returncode, done.stderr) == (
        3, "pykvpd: the daemon (pid 1\\x1b[2J) is not running\n")


def test_damaged_status_file_is_exit_4(tmp_path):
    path = tmp_path / "status.json"
    path.write_text("[1, 2]")
    done = run_reload("--status-file", str(path))
    assert done.returncode == 4 and "not a JSON object" in done.stderr


@pytest.mark.parametrize(
    "option, value",
    [
        ("--timeout", "inf"),
        ("--timeout", "nan"),
        ("--timeout", "-1"),
        ("--timeout", "0"),
        ("--timeout", "31536001"),
        ("--timeout", "soon"),
        ("--pid", "0"),
        ("--pid", "1"),
        ("--pid", "-5"),
        ("--pid", "4194305"),
        ("--pid", "12x"),
        ("--pid", ""),
        ("--pid", "inf"),
    ],
)
def test_bad_options_are_exit_2_and_name_the_option(tmp_path, option, value):
    path = tmp_path / "status.json"
    path.write_text(json.dumps({"pid": dead_pid(), "reloads": 0}))  # else exit 3, not 2
    done = run_reload("--status-file", str(path), option, value)
    assert done.returncode == 2, done
    assert f"argument {option}: " in done.stderr


def test_help_and_the_daemon_help_mention_reload():
    done = run_reload("--help")
    assert done.returncode == 0 and "--timeout SECONDS" in done.stdout
    assert "Exit status: 0 reloaded, 1 the config was refused" in " ".join(done.stdout.split())
    top = subprocess.run(
        [sys.executable, "-m", "pykvpd", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert "'pykvpd reload'" in top.stdout
