"""Run external programs the safe way: argv lists, no shell, bounded time, bounded output.

The kernel drops the daemon's reply after 30 s and may then attribute a late answer to the next
request, so every external step gets a timeout and all steps of one request share a deadline.
Children run in their own session so that a timed-out helper is killed together with whatever
it started.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from typing import List, NamedTuple, Sequence

log = logging.getLogger(__name__)

_MAX_OUTPUT = 64 * 1024


class CommandError(RuntimeError):
    """An external program could not be started, timed out, or exited non-zero."""


class Result(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


class Deadline:
    """The time left for one request; each step takes min(step timeout, what is left)."""

    def __init__(self, seconds: float) -> None:
        self._end = time.monotonic() + seconds

    def budget(self, step: float) -> float:
        left = self._end - time.monotonic()
        if left <= 0.05:
            raise CommandError("request deadline exhausted")
        return min(step, left)


# The service manager's variables are the daemon's own: a child that inherited NOTIFY_SOCKET
# could send readiness or watchdog messages on its behalf (systemd logs and drops them).
_PRIVATE_ENV = ("NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC", "LISTEN_FDS", "LISTEN_PID")


def start(argv: Sequence[str]) -> subprocess.Popen:
    """Start argv (a list, never a shell string) with stdin closed and output captured."""
    env = {k: v for k, v in os.environ.items() if k not in _PRIVATE_ENV}
    try:
        return subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, close_fds=True, start_new_session=True,
                                env=env)
    except OSError as exc:
        raise CommandError(f"cannot run {argv[0]}: {exc.strerror}") from None


def finish(proc: subprocess.Popen, timeout: float) -> Result:
    """Wait for a started program; kill its whole process group when it overruns."""
    argv0 = proc.args[0] if isinstance(proc.args, list) else str(proc.args)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        _reap(proc)
        raise CommandError(f"{argv0} did not finish within {timeout:.1f} s; killed") from None
    return Result(proc.returncode, _text(out), _text(err))


def run(argv: Sequence[str], timeout: float) -> Result:
    """Run argv to completion within timeout seconds and return its output."""
    return finish(start(argv), timeout)


def run_checked(argv: Sequence[str], timeout: float) -> Result:
    """Like run, but a non-zero exit status is an error that names the program and its stderr."""
    result = run(argv, timeout)
    if result.returncode != 0:
        detail = result.stderr.strip().splitlines()[-1:] or [""]
        raise CommandError(f"{' '.join(argv)} exited with status {result.returncode}"
                           f"{': ' + detail[0] if detail[0] else ''}")
    return result


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        proc.kill()


def _reap(proc: subprocess.Popen) -> None:
    """Collect a killed child without waiting on pipes a detached grandchild may hold open."""
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    try:
        proc.wait(timeout=1.0)
    except subprocess.TimeoutExpired:
        log.warning("process %d survived SIGKILL for 1 s", proc.pid)


def _text(data: bytes) -> str:
    return data[:_MAX_OUTPUT].decode("utf-8", "replace")


def lines(text: str) -> List[str]:
    """Non-empty, stripped output lines."""
    return [line.strip() for line in text.splitlines() if line.strip()]
