"""The daemon's log of host writes, so ``kvp watch`` fires when a host re-writes the same value.

A host SET that stores the value a key already has leaves the pool file's bytes as they were,
so a watcher comparing states sees nothing; yet a host trigger (``PatchNow=1`` sent again) must
fire every time. The daemon therefore notes each host SET that stored the value the key already
had in ``.pykvpd-host-writes`` beside the pools, and watchers read the entries newer than the last
one they saw. SETs that change a value are not logged: the watcher's comparison of states sees
them, and logging them too would report them twice when the log is read after the pool.

The file is a ring of ``SLOTS`` fixed-size slots: slot ``seq % SLOTS`` holds write number
``seq`` as ``seq, pool, key length, key, seq``. Writing one is one ``pwrite`` (no lock, no
fsync: it is a notification, not data; only the daemon writes it). A reader accepts a slot only
if both copies of ``seq`` agree, so a slot read half-written is skipped (its inotify event, queued
when the write completes, makes the reader look again). A burst of more than ``SLOTS`` host
writes between two reads loses the oldest same-value re-writes; changed values are still seen
by the watcher's own comparison. A same-value write followed quickly by a change of the same
key may be reported as the change alone (watch events coalesce per key).
"""

from __future__ import annotations

import logging
import os
import stat
import struct
from typing import List, NamedTuple, Optional

from .protocol import MAX_KEY_SIZE

log = logging.getLogger(__name__)

LOG_NAME = ".pykvpd-host-writes"
SLOTS = 128
_HEAD = struct.Struct("<QBxH4x")  # seq, pool, key length
_TAIL = struct.Struct("<Q")  # seq again: both copies agree only in a whole slot
SLOT_SIZE = _HEAD.size + MAX_KEY_SIZE + _TAIL.size
FILE_SIZE = SLOTS * SLOT_SIZE


class HostWrite(NamedTuple):
    """One logged host SET: its sequence number (from 1), pool number and raw key."""

    seq: int
    pool: int
    key: bytes


def _open_regular(
    path: str, flags: int, mode: int = 0o644, dir_fd: Optional[int] = None
) -> int:
    """Open without following a symlink; refuse anything but a regular file. With ``dir_fd``,
    ``path`` is opened by its last component in that directory (``path`` still names it)."""
    name = path if dir_fd is None else os.path.basename(path)
    fd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode, dir_fd=dir_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path}: not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def decode(data: bytes) -> List[HostWrite]:
    """Every whole slot of a log file's bytes, oldest first."""
    writes = []
    for start in range(0, len(data) - SLOT_SIZE + 1, SLOT_SIZE):
        seq, pool, size = _HEAD.unpack_from(data, start)
        (tail,) = _TAIL.unpack_from(data, start + SLOT_SIZE - _TAIL.size)
        if seq and seq == tail and size <= MAX_KEY_SIZE:
            key = data[start + _HEAD.size : start + _HEAD.size + size]
            writes.append(HostWrite(seq, pool, key))
    writes.sort()
    return writes


def read_log(directory: str, dir_fd: Optional[int] = None) -> List[HostWrite]:
    """The entries of a pool directory's log; [] if there is none (e.g. the C daemon runs).

    ``dir_fd``: the directory, already opened (inside a disk image: the path, joined again,
    could lead out of it); ``directory`` then only names it in messages."""
    path = os.path.join(directory, LOG_NAME)
    try:
        fd = _open_regular(path, os.O_RDONLY, dir_fd=dir_fd)
    except FileNotFoundError:
        return []
    except OSError as exc:
        log.warning("%s: cannot read (%s): re-writes of a same value are not seen", path, exc)
        return []
    try:
        return decode(os.pread(fd, FILE_SIZE, 0))
    except OSError as exc:
        log.warning("%s: cannot read (%s)", path, exc.strerror)
        return []
    finally:
        os.close(fd)


class HostWriteLog:
    """The daemon's writer: ``record`` after a host SET that left the value as it was; never
    raises (a log that cannot be written only costs watchers the re-write events).

    The file is created at the first such write, so a pool directory has none until then.
    """

    def __init__(self, directory: str, mode: int = 0o644) -> None:
        self.path = os.path.join(directory, LOG_NAME)
        self._mode = mode
        self._fd: Optional[int] = None
        self._seq = 0
        self._disabled = False
        try:
            self._open(create=False)
        except FileNotFoundError:
            pass
        except OSError as exc:
            self._disable(exc)

    def _open(self, create: bool) -> None:
        """Open the log (continuing its numbering after a restart), creating it if asked."""
        if create:
            try:
                fd = _open_regular(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, self._mode)
                os.fchmod(fd, self._mode)  # as the pool files: independent of the umask
                self._fd = fd
                return
            except FileExistsError:
                pass
        self._fd = _open_regular(self.path, os.O_RDWR)
        existing = decode(os.pread(self._fd, FILE_SIZE, 0))
        self._seq = existing[-1].seq if existing else 0

    def _disable(self, exc: OSError) -> None:
        log.warning(
            "%s: %s; watchers will not see a host re-writing a same value",
            self.path,
            exc.strerror or exc,
        )
        self._disabled = True
        if self._fd is not None:
            os.close(self._fd)
        self._fd = None

    def record(self, pool: int, key: bytes) -> None:
        """Log one host SET (after the pool was written)."""
        if self._fd is None:
            if self._disabled:
                return
            try:
                self._open(create=True)
            except OSError as exc:
                self._disable(exc)
                return
        assert self._fd is not None
        seq = self._seq + 1
        slot = _HEAD.pack(seq, pool, len(key)) + key.ljust(MAX_KEY_SIZE, b"\0") + _TAIL.pack(seq)
        try:
            os.pwrite(self._fd, slot, (seq % SLOTS) * SLOT_SIZE)
        except OSError as exc:
            self._disable(exc)
            return
        self._seq = seq

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
