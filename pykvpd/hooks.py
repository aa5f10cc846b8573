"""Run ``kvp watch --exec`` commands: one per event, each in its own session, stopped as a group.

A hook is a program, never a shell line: host-supplied text reaches it only as its environment
and stdin. Each run gets a new session (so a new process group) and is stopped with everything it
started in that group: at its time limit, and when ``kvp watch`` itself is stopped (SIGTERM,
SIGINT, or any exception unwinding through ``run``). SIGTERM and SIGINT are blocked while the
child is being started, so a stop signal cannot fall between the fork and the moment the runner
knows the child: either the hook is not started, or it is stopped.

What a hook that exited left running in the background is not touched (its group may be gone
and its number reused); a hook that must leave a daemon behind starts it with ``setsid`` or
``systemd-run``; under ``kvp-watch@.service`` systemd stops such leftovers with the unit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import stat
import subprocess
import time
from typing import Optional, Sequence

from .watch import Change

log = logging.getLogger(__name__)

COULD_NOT_START = 127  # the status a shell reports for a command it cannot run
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


class HookError(ValueError):
    """The command cannot be run at all (missing, not executable): a usage error."""


def resolve_command(name: str) -> str:
    """The executable ``name`` means (searched in ``$PATH`` without a slash), or HookError.

    Checked at start so that ``kvp watch --exec typo`` fails at once instead of logging
    "cannot run" once per event for ever.
    """
    if not name:
        raise HookError("--exec needs a command")
    if "/" in name:
        candidates = [name]
    else:
        dirs = os.environ.get("PATH", os.defpath).split(os.pathsep)
        candidates = [os.path.join(d or ".", name) for d in dirs]
    problem = "not found" if "/" not in name else "no such file"
    for path in candidates:
        try:
            mode = os.stat(path).st_mode
        except OSError:
            continue
        if not stat.S_ISREG(mode):
            problem = "not a regular file"
        elif not os.access(path, os.X_OK):
            problem = "not executable"
        else:
            return path
    where = "" if "/" in name else " in $PATH"
    raise HookError(f"--exec {name}: {problem}{where}")


def hook_environment(change: Change) -> dict:
    """The environment of one run: ours plus the event (value also on stdin)."""
    env = dict(os.environ)
    # Inherited ones would describe some other event, or make the hook speak for the service.
    for name in ("KVP_VALUE", "KVP_OLD_VALUE", "NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC"):
        env.pop(name, None)
    env.update(
        KVP_OP=change.op,
        KVP_POOL="" if change.pool is None else str(change.pool),
        KVP_POOL_NAME=change.pool_name,
        KVP_KEY=change.key,
    )
    if change.value is not None:
        env["KVP_VALUE"] = change.value
    if change.old_value is not None:
        env["KVP_OLD_VALUE"] = change.old_value
    return env


def _block_stop_signals() -> Optional[set]:
    """Block SIGTERM/SIGINT; the previous mask, or None where there is no signal mask."""
    try:
        return signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    except (OSError, ValueError):  # pragma: no cover
        return None


def _set_mask(mask: Optional[set]) -> None:
    if mask is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


class HookRunner:
    """Runs one command per event, one at a time; a failing command never raises here.

    ``run`` returns the exit status (negative: killed by that signal; 127: could not start) or
    None when the run was stopped at its time limit.
    """

    def __init__(self, argv: Sequence[str], timeout: Optional[float], grace: float = 2.0) -> None:
        self.argv = list(argv)
        self.timeout = timeout
        self.grace = grace

    def run(self, change: Change, limit: Optional[float] = None) -> Optional[int]:
        """Run the command for ``change``; ``limit`` (seconds) caps this run below ``timeout``."""
        limits = [t for t in (self.timeout, limit) if t is not None]
        timeout = min(limits) if limits else None
        data = (change.value or "").encode("utf-8", "surrogateescape")
        env = hook_environment(change)
        mask = _block_stop_signals()
        try:
            proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.PIPE,
                env=env,
                start_new_session=True,
                # exec keeps the signal mask: the hook must start with ours, not the blocked one
                preexec_fn=lambda: _set_mask(mask),
            )
        except OSError as exc:
            _set_mask(mask)
            log.error("cannot run %s: %s", self.argv[0], exc.strerror or exc)
            return COULD_NOT_START
        except BaseException:  # from a signal not blocked here: the mask must not stay blocked
            _set_mask(mask)
            raise
        try:
            _set_mask(mask)  # a stop signal pending since the fork is handled inside this try
            proc.communicate(data, timeout=timeout)
        except subprocess.TimeoutExpired:
            log.error(
                "%s (%s %s) still running after %g s: stopped",
                self.argv[0],
                change.op,
                change.key,
                timeout,
            )
            self.stop(proc)
            return None
        except BaseException:  # SIGTERM (SystemExit), SIGINT, a broken stdin pipe...
            self.stop(proc)
            raise
        status = proc.returncode
        if status != 0:
            log.warning(
                "%s (%s %s) exited with status %d", self.argv[0], change.op, change.key, status
            )
        else:
            log.info("%s (%s %s) done", self.argv[0], change.op, change.key)
        return status

    def stop(self, proc: subprocess.Popen) -> None:
        """SIGTERM the run's process group, SIGKILL what is left after ``grace``, reap.

        The leader is not reaped until the SIGKILL went out: while it is a zombie its number
        cannot be reused, so the group signalled is always this run's. A leader already reaped
        (the stop came just after it exited) is not signalled: its number may be anyone's now.
        """
        if proc.returncode is not None:
            return
        mask = _block_stop_signals()  # a second SIGTERM must not cut the stop short
        try:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + self.grace
            while time.monotonic() < deadline and not _exited(proc.pid):
                time.sleep(0.02)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                if proc.stdin:
                    proc.stdin.close()
            proc.wait()
        finally:
            _set_mask(mask)


def _exited(pid: int) -> bool:
    """True once ``pid`` (our child) has exited; it stays a zombie (WNOWAIT)."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None
