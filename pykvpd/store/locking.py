"""The pool lock: a BSD ``flock`` plus an open-file-description ``fcntl`` lock, bounded waits.

Every read-modify-write holds one lock across the whole of it, taken both as an OFD ``fcntl``
lock (which excludes the C daemon's classic POSIX lock and C tools using it) and as a ``flock``
(which excludes cloud-init and azure-init). Reads take both locks shared. Files are never
renamed or truncated-and-rewritten, because other programs hold locks on their inode.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import time

from .errors import LockTimeout, PoolError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable

_F_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)
_FLOCK = struct.Struct("hhxxxxqqi4x")  # struct flock on 64-bit Linux (l_pid must be 0 for OFD)
# Whole-file requests (start 0, length 0 = to the end, however the file grows).
_OFD_READ = _FLOCK.pack(fcntl.F_RDLCK, os.SEEK_SET, 0, 0, 0)
_OFD_WRITE = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
_OFD_UNLOCK = _FLOCK.pack(fcntl.F_UNLCK, os.SEEK_SET, 0, 0, 0)
_BUSY = (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK, errno.EINTR)


def lock(fd: int, exclusive: bool, timeout: float, path: str) -> None:
    """flock, then the OFD lock; both released by ``unlock``. Waits at most ``timeout`` s.

    The uncontended case is two system calls; only a lock someone else holds pays for
    the retry loop.
    """
    kind = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
    request = _OFD_WRITE if exclusive else _OFD_READ
    deadline = None
    try:
        fcntl.flock(fd, kind)
    except OSError:
        deadline = time.monotonic() + timeout
        _retry(lambda: fcntl.flock(fd, kind), deadline, timeout, path)
    try:
        fcntl.fcntl(fd, _F_OFD_SETLK, request)
    except OSError:
        try:
            if deadline is None:
                deadline = time.monotonic() + timeout
            _retry(lambda: fcntl.fcntl(fd, _F_OFD_SETLK, request), deadline, timeout, path)
        except BaseException:
            fcntl.flock(fd, fcntl.LOCK_UN)
            raise


def _retry(attempt: Callable[[], object], deadline: float, timeout: float, path: str) -> None:
    """Try a non-blocking lock until it succeeds or the deadline passes (backs off)."""
    delay = 0.0005
    while True:
        try:
            attempt()
            return
        except OSError as exc:
            if exc.errno not in _BUSY:
                raise PoolError(f"{path}: cannot lock: {exc.strerror}") from None
        if time.monotonic() >= deadline:
            raise LockTimeout(f"{path}: still locked by another process after {timeout:g} s")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def unlock(fd: int) -> None:
    fcntl.fcntl(fd, _F_OFD_SETLK, _OFD_UNLOCK)
    fcntl.flock(fd, fcntl.LOCK_UN)
