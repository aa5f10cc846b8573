"""``pykvpd reload``: send the daemon SIGHUP and wait until it reports the reload's outcome.

A bare ``kill -HUP`` returns before the daemon has re-read its config, and succeeds whether or
not the config was accepted. The unit's ExecReload= runs this command instead (systemd 252 has no
Type=notify-reload), so ``systemctl reload`` returns only once the reload is done, and fails
when the daemon refused the new configuration. The daemon counts every SIGHUP it handles in its
status file (``reloads``, ``last_reload``); this command waits for that count to grow.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import select
import signal
import sys
import time
from typing import Any, Dict, Optional, Sequence

from .escaping import escape
from .status import (
    DEFAULT_STATUS_PATH,
    EXIT_NOT_RUNNING,
    EXIT_UNKNOWN,
    pid_alive,
    read_status,
)

EXIT_OK = 0
EXIT_FAILED = 1  # the daemon refused the config, did not answer in time, or exited meanwhile
EXIT_USAGE = 2
DEFAULT_TIMEOUT = 30.0
MAX_TIMEOUT = 365 * 24 * 3600.0
PID_MAX = 2**22  # PID_MAX_LIMIT on 64-bit Linux: no pid is larger
# How often the wait checks that the daemon still lives: a daemon killed mid-reload writes no
# status file, so no inotify event would end the wait before the timeout.
LIVENESS_SECONDS = 1.0
POLL_SECONDS = 0.05  # only without inotify (watch limit reached, no libc)


class ReloadError(Exception):
    """The reload could not be confirmed; ``exit_code`` is the command's exit status."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class _StatusChanges:
    """Wakes the wait when the status file is replaced (the daemon writes it by rename).

    inotify on the directory rather than the file: the rename gives the path a new inode, and a
    watch on the old one would never fire again. Falls back to short sleeps without inotify.
    """

    def __init__(self, path: str) -> None:
        self._inotify = None
        try:
            from .inotify import IN_CLOSE_WRITE, IN_MOVED_TO, Inotify

            inotify = Inotify()
        except (OSError, AttributeError):  # no libc inotify (AttributeError from ctypes)
            return
        try:
            inotify.add_watch(os.path.dirname(path) or ".", IN_MOVED_TO | IN_CLOSE_WRITE)
        except OSError:  # no directory (then no status file either: reported next), watch limit
            inotify.close()
            return
        self._inotify = inotify
        self._poller = select.poll()
        self._poller.register(inotify.fileno(), select.POLLIN)

    def wait(self, seconds: float) -> None:
        """Return after a change in the directory, or after ``seconds``."""
        if self._inotify is None:
            time.sleep(min(seconds, POLL_SECONDS))
            return
        if self._poller.poll(max(1, math.ceil(seconds * 1000))):
            self._inotify.read_events()

    def close(self) -> None:
        if self._inotify is not None:
            self._inotify.close()


def _read(path: str) -> Optional[Dict[str, Any]]:
    try:
        return read_status(path)
    except (OSError, ValueError) as exc:
        raise ReloadError(EXIT_UNKNOWN, f"cannot read the status file: {exc}") from None


def _count(fields: Dict[str, Any]) -> Optional[int]:
    count = fields.get("reloads")
    if not isinstance(count, int) or isinstance(count, bool):
        return None
    return count


def reload_daemon(status_path: str, pid: Optional[int], timeout: float) -> Dict[str, Any]:
    """SIGHUP the daemon and wait for the outcome: its ``last_reload`` ({"ok", "error", "at"}).

    The daemon is ``pid``, or the one the status file names; the status file must be that
    daemon's (its counter is the one waited on). Raises ReloadError.
    """
    deadline = time.monotonic() + timeout
    changes = _StatusChanges(status_path)  # before the first read: no change is missed
    try:
        fields = _read(status_path)
        if fields is None:
            raise ReloadError(
                EXIT_NOT_RUNNING, f"no status file {status_path}: is the daemon running?"
            )
        owner = fields.get("pid")
        target = owner if pid is None else pid
        if not pid_alive(target):
            shown = escape(str(target))  # from the file when no --pid: may be anything
            raise ReloadError(EXIT_NOT_RUNNING, f"the daemon (pid {shown}) is not running")
        if owner != target:
            raise ReloadError(
                EXIT_NOT_RUNNING,
                f"{status_path} is the status of pid {escape(str(owner))}, not of pid "
                f"{target}: not that daemon's status file, or it is still starting",
            )
        before = _count(fields)
        try:
            os.kill(target, signal.SIGHUP)
        except OSError as exc:
            raise ReloadError(EXIT_FAILED, f"cannot signal pid {target}: {exc}") from None
        if before is None:
            raise ReloadError(
                EXIT_FAILED,
                f"SIGHUP sent, but the daemon (pid {target}) does not report reloads in "
                f"{status_path} (started before an upgrade?): see its log, or restart it",
            )
        return _wait(changes, status_path, target, before, deadline, timeout)
    finally:
        changes.close()


def _wait(
    changes: _StatusChanges,
    status_path: str,
    pid: int,
    before: int,
    deadline: float,
    timeout: float,
) -> Dict[str, Any]:
    while True:
        fields = _read(status_path) or {}
        count = _count(fields)
        if fields.get("pid") == pid and count is not None and count > before:
            outcome = fields.get("last_reload")
            if not isinstance(outcome, dict):
                raise ReloadError(EXIT_UNKNOWN, f"{status_path}: reloads without last_reload")
            return outcome
        if not pid_alive(pid):
            raise ReloadError(EXIT_FAILED, f"the daemon (pid {pid}) exited during the reload")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ReloadError(
                EXIT_FAILED,
                f"the daemon (pid {pid}) did not report the reload within {timeout:g} s "
                "(busy with a host request, or hung); it may still happen: see its log",
            )
        changes.wait(min(remaining, LIVENESS_SECONDS))


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value <= 0 or value > MAX_TIMEOUT:
        raise argparse.ArgumentTypeError(
            f"must be more than 0 and at most {MAX_TIMEOUT:.0f} seconds (a year), not {text!r}"
        )
    return value


def _pid(text: str) -> int:
    if not re.fullmatch(r"[0-9]+", text):
        raise argparse.ArgumentTypeError(f"not a process id: {text!r}")
    value = int(text)
    if not 1 < value <= PID_MAX:
        raise argparse.ArgumentTypeError(f"must be 2..{PID_MAX}, not {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pykvpd reload",
        description="Make the KVP daemon re-read its config file, and wait until it has: "
        "the exit status says whether the new configuration was taken.",
        epilog="Exit status: 0 reloaded, 1 the config was refused (the old one stays), the "
        "daemon did not answer within --timeout or exited, 2 bad options, 3 not running, "
        "4 status file unreadable. systemctl reload pykvpd runs this command.",
    )
    parser.add_argument(
        "--pid", type=_pid, help="the daemon's pid (default: the one in the status file)"
    )
    parser.add_argument(
        "--status-file",
        default=DEFAULT_STATUS_PATH,
        metavar="PATH",
        help="the daemon's status file, as given to it (default %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=_timeout,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="give up after this long (default %(default)g)",
    )
    return parser


def main_reload(argv: Optional[Sequence[str]] = None) -> int:
    """``pykvpd reload``: 0 reloaded, 1 refused or no answer, 2 usage, 3 not running, 4 unknown."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        outcome = reload_daemon(args.status_file, args.pid, args.timeout)
    except ReloadError as exc:
        print(f"pykvpd: {exc}", file=sys.stderr)
        return exc.exit_code
    if outcome.get("ok") is True:
        return EXIT_OK
    error = escape(str(outcome.get("error") or "no reason given"))
    print(f"pykvpd: reload failed, the old configuration stays: {error}", file=sys.stderr)
    return EXIT_FAILED
