"""A pool file and its journal as open descriptors: opened safely, locked, reopened if replaced.

``PoolFile`` decides what to read and write; this decides which inode that is. Both files are
opened relative to the pool directory's descriptor, never through a symlink, only if regular
(``files.open_file``). A pool may be replaced by rename while we wait for its lock (Ignition
rewrites pools that way): the lock is then dropped and the new file opened and locked instead.
"""

from __future__ import annotations

import errno
import os

from . import journal, locking
from .errors import PoolError
from .files import DirHandle, lstat_in, open_file, read_all

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Optional


class Held:
    """``with Held(take) as fd``: ``take()`` locks a pool file and returns its descriptor on
    entering; both locks are released on leaving, whatever happened inside.

    A class rather than a ``@contextmanager`` generator: contextlib, with functools and
    collections behind it, costs every ``kvp get`` about 3 ms (benchmarks/bench_cli.py).
    """

    __slots__ = ("_take", "_fd")

    def __init__(self, take: Callable[[], int]) -> None:
        self._take = take
        self._fd = -1

    def __enter__(self) -> int:
        self._fd = self._take()
        return self._fd

    def __exit__(self, *exc: object) -> None:
        locking.unlock(self._fd)


class OpenPool:
    """The descriptors of one pool file and its journal, opened when first needed.

    ``writable=None`` opens the pool read-write where this user may, else read-only
    (``writable`` then says which it got).
    """

    def __init__(
        self,
        path: str,
        directory: Optional[DirHandle],
        *,
        create: bool,
        mode: int,
        writable: Optional[bool],
        lock_timeout: float,
    ) -> None:
        self.path = path
        self.name = os.path.basename(path)
        self.journal_path = journal.journal_path(path)
        self.journal_name = os.path.basename(self.journal_path)
        self._own_dir = directory is None
        self.dir = DirHandle(os.path.dirname(path) or ".") if directory is None else directory
        self._create = create
        self._mode = mode
        self.writable = writable
        self._lock_timeout = lock_timeout
        self.fd: Optional[int] = None
        self._journal_fd: Optional[int] = None

    # ----------------------------------------------------------------- opening

    def open(self) -> int:
        """The pool's descriptor; creates the file with ``mode`` if allowed and missing, and
        never touches an existing one."""
        if self.fd is None:
            self.fd = self._open()
        return self.fd

    def _open(self) -> int:
        dir_fd = self.dir.fd()  # a missing or forbidden directory is its own error
        if self.writable is None:
            try:
                fd = self._open_as(dir_fd, os.O_RDWR)
                self.writable = True
                return fd
            except PermissionError:
                pass
            except PoolError as exc:
                if getattr(exc, "errno", None) != errno.EROFS and "Read-only" not in str(exc):
                    raise
            self.writable = False
        return self._open_as(dir_fd, os.O_RDWR if self.writable else os.O_RDONLY)

    def _open_as(self, dir_fd: int, flags: int) -> int:
        try:
            return open_file(dir_fd, self.name, flags, self.path)
        except FileNotFoundError:
            if not self._create:
                raise PoolError(f"{self.path}: no such pool file") from None
        try:
            fd = open_file(dir_fd, self.name, flags | os.O_CREAT | os.O_EXCL, self.path, self._mode)
            os.fchmod(fd, self._mode)  # independent of the umask
            return fd
        except FileExistsError:
            return open_file(dir_fd, self.name, flags, self.path)
        except FileNotFoundError:
            raise PoolError(f"{self.path}: cannot create: the directory is gone") from None

    def journal(self, create: bool) -> Optional[int]:
        """The journal's descriptor (None if it does not exist and ``create`` is False)."""
        if self._journal_fd is None:
            flags = os.O_RDWR | (os.O_CREAT if create else 0)
            try:
                self._journal_fd = open_file(
                    self.dir.fd(), self.journal_name, flags, self.journal_path
                )
            except FileNotFoundError:
                return None
        return self._journal_fd

    def journal_pending(self) -> bool:
        st = lstat_in(self.dir.fd(), self.journal_name, self.journal_path)
        return st is not None and st.st_size > 0

    def pending_change(self) -> bytes:
        """The journal's bytes for a reader that may not write (b"" if none or unreadable)."""
        try:
            jfd = open_file(self.dir.fd(), self.journal_name, os.O_RDONLY, self.journal_path)
        except (OSError, PoolError):  # no journal, or not ours to read (0600)
            return b""
        try:
            return read_all(jfd, self.journal_path)
        finally:
            os.close(jfd)

    def as_completed(self, fd: int) -> Optional[bytes]:
        """A read-only reader cannot complete a change a killed writer left in the journal,
        but it can show the pool as it will be: never the half-done change. None when no
        change is pending (the file is then read as it is)."""
        pending = self.pending_change()
        if not pending:
            return None
        data = read_all(fd, self.path)
        completed = journal.replayed_in_memory(data, pending)
        return None if completed is data else completed

    # ----------------------------------------------------------------- locking

    def locked(
        self, exclusive: bool, known_same: Callable[[], bool], replaced: Callable[[], None]
    ) -> Held:
        """``with``: both locks held on the file at ``path`` (see ``lock``)."""
        return Held(lambda: self.lock(exclusive, known_same, replaced))

    def lock(
        self, exclusive: bool, known_same: Callable[[], bool], replaced: Callable[[], None]
    ) -> int:
        """Take both locks on the file that is at ``path`` now and return its descriptor
        (``locking.unlock`` it). ``known_same()`` may vouch that it still is (no inotify event
        for its name) and save the check; ``replaced()`` is told when it was not and a new
        descriptor is being taken."""
        for _ in range(10):
            fd = self.open()
            locking.lock(fd, exclusive, self._lock_timeout, self.path)
            try:
                same = known_same() or self._same_file(fd)
            except BaseException:
                locking.unlock(fd)
                raise
            if same:
                return fd
            # Replaced by rename or deleted while we waited: drop the stale inode and retry.
            locking.unlock(fd)
            os.close(fd)
            self.fd = None
            replaced()
        raise PoolError(f"{self.path}: file keeps being replaced; giving up")

    def _same_file(self, fd: int) -> bool:
        on_disk = lstat_in(self.dir.fd(), self.name, self.path)
        if on_disk is None:
            return False
        held = os.fstat(fd)
        return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)

    def close(self) -> None:
        for fd in (self.fd, self._journal_fd):
            if fd is not None:
                os.close(fd)
        self.fd = self._journal_fd = None
        if self._own_dir:
            self.dir.close()
