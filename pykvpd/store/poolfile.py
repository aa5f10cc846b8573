"""One pool file: GET, SET, DELETE and ENUMERATE at a cost independent of the pool's size.

Reads and writes take the pool lock (``locking``); a change goes through the redo journal
(``journal``) and writes only the records it touches. In memory there is only the index
(``index``: key -> slot, first-match and valid-record order); values are read from the file when
asked for. With a directory watch (``freshness``) the index is reloaded only when another writer
changed the file; without one (one-shot tools) every call reloads it under the lock.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Callable, Iterator, List, Optional, Tuple

from . import journal, locking
from .errors import PoolError
from .files import DirHandle, lstat_in, open_file, read_all, read_at, save_aside
from .freshness import DirWatch
from .index import PoolIndex
from .records import (
    RECORD_SIZE,
    PoolImage,
    Record,
    Text,
    as_bytes,
    check_sizes,
    decode_record,
    encode_record,
    indexable,
    padded,
)

log = logging.getLogger(__name__)

DEFAULT_MODE = 0o644
_BATCH = 64  # records per read while loading the index: 160 KiB, whatever the pool's size


class PoolFile:
    """One pool file, always read fresh and written crash-safely under the dual lock.

    ``directory`` is the pool directory (``PoolDir`` passes its own); without it the file's
    directory is opened by path. The file itself is never opened through a symlink, and only if
    it is a regular file.
    """

    def __init__(
        self,
        path: str,
        *,
        create: bool = False,
        mode: int = DEFAULT_MODE,
        writable: bool = True,
        watch: Optional[DirWatch] = None,
        lock_timeout: float = 20.0,
        directory: Optional[DirHandle] = None,
    ) -> None:
        self.path = path
        self.name = os.path.basename(path)
        self._journal_path = journal.journal_path(path)
        self._journal_name = os.path.basename(self._journal_path)
        self._create = create
        self._mode = mode
        self._writable = writable
        self._watch = watch
        self._lock_timeout = lock_timeout
        self._own_dir = directory is None
        self._directory = (
            DirHandle(os.path.dirname(path) or ".") if directory is None else directory
        )
        self._fd: Optional[int] = None
        self._journal_fd: Optional[int] = None
        self._index = PoolIndex()
        self._trailing = b""
        # A read-only reader's view of a change a killed writer left pending: the whole file as
        # the journal will leave it (values are then read from here, not from the file).
        self._overlay: Optional[bytes] = None
        self._snapshot: Optional[Tuple[int, ...]] = None
        self._reported: Optional[Tuple[int, ...]] = None

    # ----------------------------------------------------------------- open / close

    def _dir(self) -> int:
        return self._directory.fd()

    def _open(self) -> int:
        """Open, creating with ``mode`` if allowed and missing; never touch an existing file."""
        flags = os.O_RDWR if self._writable else os.O_RDONLY
        self._dir()  # a missing or forbidden directory is its own error, not a missing pool
        try:
            return open_file(self._dir(), self.name, flags, self.path)
        except FileNotFoundError:
            if not self._create:
                raise PoolError(f"{self.path}: no such pool file") from None
        try:
            fd = open_file(
                self._dir(), self.name, flags | os.O_CREAT | os.O_EXCL, self.path, self._mode
            )
            os.fchmod(fd, self._mode)  # independent of the umask
            return fd
        except FileExistsError:
            return open_file(self._dir(), self.name, flags, self.path)
        except FileNotFoundError:
            raise PoolError(f"{self.path}: cannot create: the directory is gone") from None

    def ensure_exists(self) -> None:
        """Create the file if missing (mode ``mode``); an existing file is left untouched,
        unless a killed writer left a change in its journal: that change is completed now."""
        if self._fd is None:
            self._fd = self._open()
        self._recover_if_needed()

    def close(self) -> None:
        for fd in (self._fd, self._journal_fd):
            if fd is not None:
                os.close(fd)
        if self._own_dir:
            self._directory.close()
        self._fd = self._journal_fd = None
        self._snapshot = None

    def __enter__(self) -> PoolFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- locking

    @contextmanager
    def _locked(self, exclusive: bool) -> Iterator[int]:
        """Hold both locks on the file that is at ``path`` now (reopening after a rename)."""
        for _ in range(10):
            if self._fd is None:
                self._fd = self._open()
            fd = self._fd
            locking.lock(fd, exclusive, self._lock_timeout, self.path)
            try:
                # No event for the name since we last held the lock: still the file at path.
                same = (
                    self._watch is not None
                    and self._snapshot is not None
                    and not self._watch.changed(self.name)
                ) or self._same_file(fd)
            except BaseException:
                locking.unlock(fd)
                raise
            if same:
                break
            # Replaced by rename or deleted while we waited: drop the stale inode and retry.
            locking.unlock(fd)
            os.close(fd)
            self._fd, self._snapshot = None, None
        else:
            raise PoolError(f"{self.path}: file keeps being replaced; giving up")
        try:
            yield fd
        finally:
            locking.unlock(fd)

    def _same_file(self, fd: int) -> bool:
        on_disk = lstat_in(self._dir(), self.name, self.path)
        if on_disk is None:
            return False
        held = os.fstat(fd)
        return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)

    # ----------------------------------------------------------------- the index

    @staticmethod
    def _stat_key(fd: int) -> Tuple[int, ...]:
        st = os.fstat(fd)
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def _fresh(self, fd: int) -> None:
        """Make the index match the file (caller holds a lock)."""
        if (
            self._watch is not None
            and self._snapshot is not None
            and not self._watch.changed(self.name)
        ):
            return  # inotify proves nothing was written since (writes through mmap excepted)
        self._reload(fd)

    def _reload(self, fd: int) -> None:
        """Rebuild the index from the file, ``_BATCH`` records at a time."""
        self._overlay = None if self._writable else self._as_completed(fd)
        index, problems, offset = PoolIndex(), [], 0
        while True:
            data = self._read(fd, _BATCH * RECORD_SIZE, offset)
            whole = len(data) - len(data) % RECORD_SIZE
            for start in range(0, whole, RECORD_SIZE):
                rec = decode_record(data[start : start + RECORD_SIZE])
                slot = index.append(rec.key if indexable(rec) else None, rec.valid)
                if rec.problem and len(problems) < 6:
                    problems.append(f"record {slot}: {rec.problem}")
            offset += whole
            if len(data) < _BATCH * RECORD_SIZE:
                self._trailing = data[whole:]
                break
        self._index = index
        self._snapshot = self._stat_key(fd)
        if self._watch is not None:
            self._watch.mark_clean(self.name)
        if self._trailing:
            problems.append(f"partial record of {len(self._trailing)} bytes at offset {offset}")
        self._report_damage(problems, len(index.bad) + bool(self._trailing))

    def _read(self, fd: int, length: int, offset: int) -> bytes:
        if self._overlay is not None:
            return self._overlay[offset : offset + length]
        return read_at(fd, length, offset, self.path)

    def _record(self, fd: int, slot: int) -> Record:
        return decode_record(self._read(fd, RECORD_SIZE, slot * RECORD_SIZE))

    def _report_damage(self, problems: List[str], count: int) -> None:
        """Log a damaged file once per state of the file, not once per request."""
        if not problems or self._snapshot == self._reported:
            return
        self._reported = self._snapshot
        shown = "; ".join(problems[:5]) + (f"; and {count - 5} more" if count > 5 else "")
        log.warning("%s is damaged, serving the valid records: %s", self.path, shown)

    # ----------------------------------------------------------------- the journal

    def _recover(self, fd: int) -> None:
        """Finish a change a killed writer left in the journal (caller holds the write lock)."""
        jfd = self._journal(create=False)
        if jfd is not None and journal.recover(fd, jfd, self.path):
            self._snapshot = None

    def _journal(self, create: bool) -> Optional[int]:
        if self._journal_fd is None:
            flags = os.O_RDWR | (os.O_CREAT if create else 0)
            try:
                self._journal_fd = open_file(
                    self._dir(), self._journal_name, flags, self._journal_path
                )
            except FileNotFoundError:
                return None
        return self._journal_fd

    def _as_completed(self, fd: int) -> Optional[bytes]:
        """A read-only reader cannot complete a change a killed writer left in the journal,
        but it can show the pool as it will be: never the half-done change. None when no
        change is pending (the file is then read as it is)."""
        try:
            jfd = open_file(self._dir(), self._journal_name, os.O_RDONLY, self._journal_path)
        except (OSError, PoolError):  # no journal, or not ours to read (0600)
            return None
        try:
            pending = read_all(jfd, self._journal_path)
        finally:
            os.close(jfd)
        if not pending:
            return None
        data = read_all(fd, self.path)
        completed = journal.replayed_in_memory(data, pending)
        return None if completed is data else completed

    def _journal_pending(self) -> bool:
        st = lstat_in(self._dir(), self._journal_name, self._journal_path)
        return st is not None and st.st_size > 0

    def _recover_if_needed(self) -> None:
        if self._watch is not None:
            self._watch.mark_clean(self._journal_name)  # before looking: later events count
        if self._writable and self._journal_pending():
            with self._locked(exclusive=True) as fd:
                self._recover(fd)

    @contextmanager
    def _reading(self) -> Iterator[int]:
        """The shared lock, with the index current.

        With a watch, a journal with no inotify event since we last looked needs no check, and a
        pool with none needs no reload: every writer's ``write()`` queues its event before
        returning. The daemon's GET and ENUMERATE then cost the lock and one ``pread``.
        """
        watch = self._watch
        if watch is None or self._snapshot is None or watch.changed(self._journal_name):
            self._recover_if_needed()
        with self._locked(exclusive=False) as fd:
            self._fresh(fd)
            yield fd

    # ----------------------------------------------------------------- reading

    def image(self) -> PoolImage:
        """All records (valid or not) and any partial tail, read under a shared lock."""
        with self._reading() as fd:
            records = tuple(self._record(fd, slot) for slot in range(len(self._index)))
            return PoolImage(records, self._trailing)

    def records(self) -> List[Record]:
        """All whole records in file order, including damaged ones (see ``Record.problem``)."""
        return list(self.image().records)

    def valid_records(self) -> List[Record]:
        """The records a host can be shown: NUL-terminated, valid UTF-8."""
        return [r for r in self.image().records if r.valid]

    def count(self) -> int:
        """How many whole records the file holds (damaged ones included)."""
        with self._reading():
            return len(self._index)

    def enumerate(self, index: int) -> Optional[Record]:
        """The index-th valid record (what the host's ENUMERATE walks), or None past the end."""
        with self._reading() as fd:
            slot = self._index.shown(index)
            return None if slot is None else self._record(fd, slot)

    def get(self, key: Text) -> Optional[bytes]:
        """Value of the first record whose key is exactly ``key`` (case-sensitive), or None."""
        k = as_bytes(key)
        with self._reading() as fd:
            slot = self._index.first.get(k)
            if slot is None:
                return None
            return self._record(fd, slot).value

    def raw(self) -> bytes:
        """The file's exact bytes (stale tails after NULs included), under the shared lock."""
        self._recover_if_needed()
        with self._locked(exclusive=False) as fd:
            return read_all(fd, self.path)

    # ----------------------------------------------------------------- writing

    def set(self, key: Text, value: Optional[Text]) -> bool:
        """Add or modify the first record with this key; True if it was added.

        ``value=None`` (the kernel sent no value: an unrenderable value type) keeps an existing
        value and stores an empty one for a new key, as the C daemon's copy of 0 bytes does,
        minus its uninitialised bytes.
        """
        k = as_bytes(key)
        v = b"" if value is None else as_bytes(value)
        check_sizes(k, v)
        with self._write() as fd:
            index, count = self._index, len(self._index)
            slot = index.first.get(k)
            if slot is not None:
                if value is None:
                    return False
                size = count * RECORD_SIZE + len(self._trailing)  # a partial tail stays as it is
                self._commit(fd, [(slot * RECORD_SIZE, encode_record(k, v))], size)
                index.set_valid(slot)
                return False
            writes: List[Tuple[int, bytes]] = []
            tail = padded(self._trailing) if self._trailing else None
            if tail is not None and tail.key == k:
                # The partial record is this key's first occurrence: complete it with the value.
                end = (count + 1) * RECORD_SIZE
                self._commit(fd, [(count * RECORD_SIZE, encode_record(k, v))], end)
                self._trailing = b""
                index.append(k, True)
                return False
            if tail is not None and self._keep_partial(tail):
                pad_at = count * RECORD_SIZE + len(self._trailing)
                writes.append((pad_at, bytes(RECORD_SIZE - len(self._trailing))))
                count += 1
            else:
                tail = None
            writes.append((count * RECORD_SIZE, encode_record(k, v)))
            self._commit(fd, writes, (count + 1) * RECORD_SIZE)
            if tail is not None:
                index.append(tail.key if indexable(tail) else None, tail.valid)
            self._trailing = b""
            index.append(k, True)
            return True

    def _keep_partial(self, tail: Record) -> bool:
        """Before a record is appended over a partial one: a partial record that reads as a
        record once zero-padded is padded and kept in place (True); one that does not is saved
        beside the pool (``.pykvpd-partial-*``, shown by fsck) and then overwritten (False)."""
        if tail.valid:
            log.warning(
                "%s: keeping a partial record of %d bytes by padding it to a whole record",
                self.path,
                len(self._trailing),
            )
            return True
        saved = save_aside(
            self._dir(), self._directory.shown, partial_prefix(self.name), self._trailing
        )
        log.warning(
            "%s: a partial record of %d bytes that is no record even when padded was saved as %s",
            self.path,
            len(self._trailing),
            saved,
        )
        return False

    def delete(self, key: Text) -> bool:
        """Remove the first record with this key; False if absent.

        The last record moves into the freed slot (``PoolIndex.plan_delete``: never in front of
        a record with the same key), so a DELETE writes one record whatever the pool's size.
        A partial trailing record is kept after the records.
        """
        k = as_bytes(key)
        with self._write() as fd:
            index = self._index
            slot = index.first.get(k)
            if slot is None:
                return False
            moves = index.plan_delete(slot)
            writes = [
                (dst * RECORD_SIZE, self._read(fd, RECORD_SIZE, src * RECORD_SIZE))
                for src, dst in moves
            ]
            end = (len(index) - 1) * RECORD_SIZE
            if self._trailing:
                writes.append((end, self._trailing))
            self._commit(fd, writes, end + len(self._trailing))
            index.apply_delete(slot, moves)
            return True

    def clear(self) -> None:
        """Remove every record (used by ``kvp clear``); the inode stays the same."""
        with self._write() as fd:
            self._commit(fd, [], 0)
            self._index, self._trailing = PoolIndex(), b""

    def transaction(self, edit: Callable[[bytes, os.stat_result], Optional[bytes]]) -> bool:
        """Replace the file's bytes with ``edit(old_bytes, stat)`` as one crash-safe change.

        For the multi-record operations (``chunks``, ``fsck``, ``staleness``). Runs under the
        exclusive dual lock after completing any interrupted change; ``edit`` returns None to
        leave the file alone. Only the records from the first difference on are rewritten, in
        place (same inode), through the journal. True if ``edit`` asked for a change.
        """
        with self._write() as fd:
            before = read_all(fd, self.path)
            after = edit(before, os.fstat(fd))
            if after is None:
                return False
            same, limit = 0, min(len(before), len(after))
            while (
                same + RECORD_SIZE <= limit
                and before[same : same + RECORD_SIZE] == after[same : same + RECORD_SIZE]
            ):
                same += RECORD_SIZE
            self._commit(fd, [(same, after[same:])] if len(after) > same else [], len(after))
            self._snapshot = None  # re-read on next access: the index knows nothing of the edit
            return True

    @contextmanager
    def _write(self) -> Iterator[int]:
        if not self._writable:
            raise PoolError(f"{self.path}: opened read-only")
        with self._locked(exclusive=True) as fd:
            watch = self._watch
            if watch is None or watch.changed(self._journal_name):
                if watch is not None:
                    watch.mark_clean(self._journal_name)  # before reading: later events count
                self._recover(fd)
            self._fresh(fd)
            yield fd

    def _commit(self, fd: int, writes: List[Tuple[int, bytes]], size_after: int) -> None:
        """Make one change through the journal (caller holds the write lock)."""
        jfd = self._journal(create=True)
        assert jfd is not None
        try:
            journal.commit(fd, jfd, writes, size_after, self.path)
        except PoolError:
            self._snapshot = None
            raise
        self._snapshot = self._stat_key(fd)
        if self._watch is not None:
            self._watch.mark_clean(self.name, self._journal_name)


def partial_prefix(pool_name: str) -> str:
    """Name prefix of the files that keep a pool's undecodable partial records (fsck lists
    them); like the journal's, it matches no ``.kvp_pool_*`` glob."""
    return ".pykvpd-partial-" + pool_name.lstrip(".")
