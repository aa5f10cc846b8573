"""hooks: the environment and stdin of a run, failures, time limits, and stopping whole groups."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import List

import pytest

from pykvpd.hooks import COULD_NOT_START, HookError, HookRunner, resolve_command
from pykvpd.watch import Change

WAIT = 20.0  # generous upper bound for anything to happen; never asserted as a duration

ENV_SCRIPT = (
    "import os, sys; open(sys.argv[1], 'w').write('|'.join("
    "[os.environ.get(k, '<unset>') for k in "
    "('KVP_OP', 'KVP_POOL', 'KVP_POOL_NAME', 'KVP_KEY', 'KVP_VALUE', 'KVP_OLD_VALUE')]"
    " + [sys.stdin.read()]))"
)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pids: List[int]) -> List[int]:
    """The pids still alive after the bound (empty when every one exited)."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


def wait_pids(path: Path, count: int) -> List[int]:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if path.exists():
            pids = path.read_text().split()
            if len(pids) >= count:
                return [int(p) for p in pids]
        time.sleep(0.02)
    raise AssertionError(f"the hook did not write {count} pids to {path}")


def tree_hook(tmp_path: Path) -> List[str]:
    """A hook that starts ``sleep 101 &`` and runs ``sleep 102``, writing all three pids."""
    script = tmp_path / "child.sh"
    script.write_text(
        "#!/bin/sh\n"
        f"sleep 101 & echo $! >> {tmp_path}/pids\n"
        f"echo $$ >> {tmp_path}/pids\n"
        f"exec sleep 102\n"
    )
    script.chmod(0o755)
    return [str(script)]


def test_hook_gets_env_and_value_on_stdin(tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setenv("KVP_OLD_VALUE", "inherited")  # must not leak into an event without one
    runner = HookRunner([sys.executable, "-c", ENV_SCRIPT, str(out)], timeout=WAIT)
    assert runner.run(Change("modify", 0, "PatchNow", "yes\nplease", "no")) == 0
    assert out.read_text() == "modify|0|external|PatchNow|yes\nplease|no|yes\nplease"
    assert runner.run(Change("delete", 3, "K", None, "old")) == 0
    assert out.read_text() == "delete|3|auto-external|K|<unset>|old|"
    assert runner.run(Change("add", 1, "K", "v")) == 0
    assert out.read_text() == "add|1|guest|K|v|<unset>|v"
    assert runner.run(Change("initial", None, "Absent", None)) == 0
    assert out.read_text() == "initial|||Absent|<unset>|<unset>|"


def test_hook_failures_and_time_limit_do_not_raise(tmp_path, caplog):
    fail = HookRunner([sys.executable, "-c", "import sys; sys.exit(7)"], timeout=WAIT)
    assert fail.run(Change("add", 1, "K", "v")) == 7
    assert "exited with status 7" in caplog.text
    missing = HookRunner([str(tmp_path / "removed-since-start")], timeout=WAIT)
    assert missing.run(Change("add", 1, "K", "v")) == COULD_NOT_START
    assert "cannot run" in caplog.text
    slow = HookRunner(tree_hook(tmp_path), timeout=0.5, grace=5)
    assert slow.run(Change("add", 1, "K", "v")) is None
    assert "still running after 0.5 s: stopped" in caplog.text
    pids = wait_pids(tmp_path / "pids", 2)
    assert wait_gone(pids) == []  # the whole process group went, not just the leader


def test_run_limit_caps_the_per_hook_timeout(tmp_path):
    runner = HookRunner(tree_hook(tmp_path), timeout=WAIT * 10, grace=5)
    assert runner.run(Change("add", 1, "K", "v"), limit=0.3) is None
    assert wait_gone(wait_pids(tmp_path / "pids", 2)) == []


def test_a_group_member_ignoring_sigterm_is_killed_after_grace(tmp_path):
    script = tmp_path / "stubborn.sh"
    script.write_text(
        "#!/bin/sh\n"
        f"sh -c 'trap \"\" TERM; echo $$ >> {tmp_path}/pids; exec sleep 103' &\n"
        f"echo $$ >> {tmp_path}/pids\n"
        "wait\n"
    )
    script.chmod(0o755)
    runner = HookRunner([str(script)], timeout=0.5, grace=0.5)
    assert runner.run(Change("add", 1, "K", "v")) is None
    assert wait_gone(wait_pids(tmp_path / "pids", 2)) == []


@pytest.mark.parametrize("exc", [SystemExit(143), KeyboardInterrupt()])
def test_an_exception_during_a_run_stops_the_hook_and_its_children(tmp_path, exc):
    """What SIGTERM (SystemExit from kvp's handler) or SIGINT does to kvp watch mid-hook."""
    pid_file = tmp_path / "pids"

    def interrupt(_signum: int, _frame: object) -> None:
        # Only where a real SIGTERM/SIGINT could arrive: not while the runner blocks them
        # around the start of the hook (this stand-in signal is not blocked there).
        if signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, []):
            return
        if pid_file.exists() and len(pid_file.read_text().split()) >= 2:
            raise exc

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.05, 0.05)
    try:
        with pytest.raises(type(exc)):
            HookRunner(tree_hook(tmp_path), timeout=None).run(Change("add", 1, "K", "v"))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    pids = [int(p) for p in pid_file.read_text().split()]
    assert len(pids) == 2
    assert wait_gone(pids) == []


def test_an_exception_while_starting_the_hook_leaves_stop_signals_unblocked(monkeypatch):
    """Blocked stop signals would be inherited by every later child of this process (in the
    3.9 run, the test process itself kept SIGTERM blocked and later daemons ignored it)."""

    def broken_popen(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("raised by a signal handler inside Popen")

    monkeypatch.setattr("pykvpd.hooks.subprocess.Popen", broken_popen)
    with pytest.raises(RuntimeError):
        HookRunner(["/bin/true"], timeout=None).run(Change("add", 1, "K", "v"))
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    assert signal.SIGTERM not in blocked and signal.SIGINT not in blocked


def test_the_hook_runs_with_stop_signals_unblocked(tmp_path):
    """The runner blocks SIGTERM while starting a hook; the hook must not inherit that mask."""
    out = tmp_path / "mask"
    script = f"grep SigBlk /proc/self/status > {out}"
    assert HookRunner(["sh", "-c", script], timeout=WAIT).run(Change("add", 1, "K", "v")) == 0
    blocked = int(out.read_text().split()[1], 16)
    assert not blocked & (1 << (signal.SIGTERM - 1))
    assert not blocked & (1 << (signal.SIGINT - 1))


def test_resolve_command_refuses_missing_and_non_executable(tmp_path, monkeypatch):
    tool = tmp_path / "tool"
    tool.write_text("#!/bin/sh\n")
    with pytest.raises(HookError, match=r"--exec .*tool: not executable"):
        resolve_command(str(tool))
    with pytest.raises(HookError, match=r"--exec .*nope: no such file"):
        resolve_command(str(tmp_path / "nope"))
    with pytest.raises(HookError, match=r"not a regular file"):
        resolve_command(str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(HookError, match=r"--exec tool: not executable in \$PATH"):
        resolve_command("tool")
    with pytest.raises(HookError, match=r"--exec typo: not found in \$PATH"):
        resolve_command("typo")
    tool.chmod(0o755)
    assert resolve_command("tool") == str(tool)
    assert resolve_command(str(tool)) == str(tool)
    assert os.access(resolve_command(str(tool)), os.X_OK)


def test_the_hook_cannot_speak_for_the_service(tmp_path, monkeypatch):
    """kvp-watch@.service is Type=notify: its hooks must not get the notify socket."""
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    out = tmp_path / "env"
    script = f"env > {out}"
    assert HookRunner(["sh", "-c", script], timeout=WAIT).run(Change("add", 1, "K", "v")) == 0
    names = {line.split("=", 1)[0] for line in out.read_text().splitlines()}
    assert "KVP_KEY" in names
    assert not names & {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"}
