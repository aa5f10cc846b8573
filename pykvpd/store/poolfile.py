"""One pool file: reads served from a cache proven current, writes made crash-safe.

Reads and writes take the pool lock (``locking``); a change goes through the redo journal
(``journal``); with a directory watch (``freshness``) the decoded records are cached and re-read
only when the file changed.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from . import journal, locking
from .errors import PoolError
from .files import read_all
from .freshness import DirWatch
from .records import (
    RECORD_SIZE,
    PoolImage,
    Record,
    Text,
    all_valid,
    as_bytes,
    check_sizes,
    decode_pool,
    encode_record,
    indexable,
    padded,
)

log = logging.getLogger(__name__)

DEFAULT_MODE = 0o644


class PoolFile:
    """One pool file, always read fresh and written crash-safely under the dual lock.

    With a ``DirWatch`` (the daemon) the decoded records are cached and re-read only when the
    file changed; without one (one-shot tools) every call re-reads under the lock.
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
        self._fd: Optional[int] = None
        self._journal_fd: Optional[int] = None
        self._records: List[Record] = []
        # What ENUMERATE walks: the record list itself when every record is valid (kept right by
        # the in-place updates), else a filtered copy rebuilt after a change. Computing it per
        # request made a full enumeration of a large pool quadratic.
        self._enum_view: Optional[List[Record]] = None
        self._trailing = b""
        self._index: Dict[bytes, int] = {}
        self._snapshot: Optional[Tuple[int, ...]] = None
        self._reported: Optional[Tuple[int, ...]] = None

    # ----------------------------------------------------------------- open / close

    def _open(self) -> int:
        """Open, creating with ``mode`` if allowed and missing; never touch an existing file."""
        flags = (os.O_RDWR if self._writable else os.O_RDONLY) | os.O_CLOEXEC
        try:
            return os.open(self.path, flags)
        except FileNotFoundError:
            if not self._create:
                raise PoolError(f"{self.path}: no such pool file") from None
        except OSError as exc:
            raise PoolError(f"{self.path}: cannot open: {exc.strerror}") from None
        try:
            fd = os.open(self.path, flags | os.O_CREAT | os.O_EXCL, self._mode)
            os.fchmod(fd, self._mode)  # independent of the umask
            return fd
        except FileExistsError:
            return os.open(self.path, flags)
        except OSError as exc:
            raise PoolError(f"{self.path}: cannot create: {exc.strerror}") from None

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
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            return False
        held = os.fstat(fd)
        return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)

    # ----------------------------------------------------------------- reading

    @staticmethod
    def _stat_key(fd: int) -> Tuple[int, ...]:
        st = os.fstat(fd)
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def _fresh(self, fd: int) -> None:
        """Make the cache match the file (caller holds a lock)."""
        if (
            self._watch is not None
            and self._snapshot is not None
            and not self._watch.changed(self.name)
        ):
            return  # inotify proves nothing was written since (writes through mmap excepted)
        self._reload(fd)

    def _reload(self, fd: int) -> None:
        data = read_all(fd, self.path)
        if not self._writable:
            data = self._as_completed(data)
        image = decode_pool(data)
        self._records = list(image.records)
        self._enum_view = None
        self._trailing = image.trailing
        self._reindex()
        self._snapshot = self._stat_key(fd)
        if self._watch is not None:
            self._watch.mark_clean(self.name)
        self._report_damage(image)

    def _changed(self) -> None:
        """The record list changed: a filtered enumeration view must be rebuilt."""
        if self._enum_view is not self._records:
            self._enum_view = None

    def _reindex(self) -> None:
        self._changed()
        index: Dict[bytes, int] = {}
        for i, rec in enumerate(self._records):
            if indexable(rec):
                index.setdefault(rec.key, i)
        self._index = index

    def _report_damage(self, image: PoolImage) -> None:
        """Log a damaged file once per state of the file, not once per request."""
        problems = image.problems
        if not problems or self._snapshot == self._reported:
            return
        self._reported = self._snapshot
        shown = "; ".join(problems[:5]) + (
            f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
        )
        log.warning("%s is damaged, serving the valid records: %s", self.path, shown)

    def _recover(self, fd: int) -> None:
        """Finish a change a killed writer left in the journal (caller holds the write lock)."""
        jfd = self._journal(create=False)
        if jfd is not None and journal.recover(fd, jfd, self.path):
            self._snapshot = None

    def _journal(self, create: bool) -> Optional[int]:
        if self._journal_fd is None:
            flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
            try:
                self._journal_fd = os.open(self._journal_path, flags, 0o600)
            except FileNotFoundError:
                return None
            except OSError as exc:
                if create:
                    raise PoolError(f"{self._journal_path}: {exc.strerror}") from None
                return None
        return self._journal_fd

    def _as_completed(self, data: bytes) -> bytes:
        """A read-only reader cannot complete a change a killed writer left in the journal,
        but it can show the pool as it will be: never the half-done change."""
        try:
            with open(self._journal_path, "rb") as pending_file:
                pending = pending_file.read()
        except OSError:  # no journal, or not ours to read (0600): the file as it is
            return data
        return journal.replayed_in_memory(data, pending) if pending else data

    def _journal_pending(self) -> bool:
        try:
            return os.stat(self._journal_path).st_size > 0
        except OSError:
            return False

    def _sync_for_read(self) -> None:
        """Make the cache current for a read.

        With a watch, a pool and journal with no inotify event since we last read or wrote them
        under the lock are known unchanged: every writer's ``write()`` queues its event before
        returning, so no write has completed since, and the cache (consistent when it was made)
        is still the file's content. No lock and no system call but a ``poll`` are needed then:
        the daemon's GET and ENUMERATE cost no more than the kernel round trip.
        """
        watch = self._watch
        if (
            watch is not None
            and self._snapshot is not None
            and not watch.changed(self.name, self._journal_name)
        ):
            return
        self._recover_if_needed()
        with self._locked(exclusive=False) as fd:
            self._fresh(fd)

    def image(self) -> PoolImage:
        """All records (valid or not) and any partial tail, read under a shared lock."""
        self._sync_for_read()
        return PoolImage(tuple(self._records), self._trailing)

    def records(self) -> List[Record]:
        """All whole records in file order, including damaged ones (see ``Record.problem``)."""
        return list(self.image().records)

    def valid_records(self) -> List[Record]:
        """The records a host can be shown: NUL-terminated, valid UTF-8."""
        return [r for r in self.image().records if r.valid]

    def enumerate(self, index: int) -> Optional[Record]:
        """The index-th valid record (what the host's ENUMERATE walks), or None past the end."""
        self._sync_for_read()
        view = self._enum_view
        if view is None:
            records = self._records
            view = records if all_valid(records) else [r for r in records if r.valid]
            self._enum_view = view
        return view[index] if 0 <= index < len(view) else None

    def get(self, key: Text) -> Optional[bytes]:
        """Value of the first record whose key is exactly ``key`` (case-sensitive), or None."""
        k = as_bytes(key)
        self._sync_for_read()
        pos = self._index.get(k)
        return None if pos is None else self._records[pos].value

    def _recover_if_needed(self) -> None:
        if self._watch is not None:
            self._watch.mark_clean(self._journal_name)  # before looking: later events count
        if self._writable and self._journal_pending():
            with self._locked(exclusive=True) as fd:
                self._recover(fd)

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
        with self._write() as (fd, count):
            pos = self._index.get(k)
            if pos is not None:
                if value is None:
                    return False
                size = count * RECORD_SIZE + len(self._trailing)  # a partial tail stays as it is
                self._commit(fd, [(pos * RECORD_SIZE, encode_record(k, v))], size)
                self._records[pos] = Record(k, v)
                self._changed()
                return False
            if self._trailing and padded(self._trailing).key == k:
                # The partial record is this key's first occurrence: complete it with the value.
                self._commit(
                    fd, [(count * RECORD_SIZE, encode_record(k, v))], (count + 1) * RECORD_SIZE
                )
                self._records.append(Record(k, v))
                self._trailing = b""
                self._reindex()
                return False
            writes, base = self._tail_fix(count)
            writes.append((base, encode_record(k, v)))
            self._commit(fd, writes, base + RECORD_SIZE)
            self._index.setdefault(k, len(self._records) + (1 if self._trailing else 0))
            if self._trailing:
                self._records.append(padded(self._trailing))
                self._trailing = b""
                self._records.append(Record(k, v))
                self._enum_view = None  # the padded record may be one a host cannot be shown
                self._reindex()
            else:
                self._records.append(Record(k, v))
                self._changed()
            return True

    def delete(self, key: Text) -> bool:
        """Remove the first record with this key, keeping the order of the rest; False if absent.

        The later records shift up by one (as the C daemon does, so enumeration order matches),
        made atomic by the journal. A partial trailing record is kept after them.
        """
        k = as_bytes(key)
        with self._write() as (fd, count):
            pos = self._index.get(k)
            if pos is None:
                return False
            start = (pos + 1) * RECORD_SIZE
            tail = os.pread(fd, count * RECORD_SIZE - start + len(self._trailing), start)
            self._commit(
                fd, [(pos * RECORD_SIZE, tail)], (count - 1) * RECORD_SIZE + len(self._trailing)
            )
            del self._records[pos]
            self._reindex()
            return True

    def clear(self) -> None:
        """Remove every record (used by ``kvp clear``); the inode stays the same."""
        with self._write() as (fd, _count):
            self._commit(fd, [], 0)
            self._records, self._trailing, self._index = [], b"", {}
            self._enum_view = None

    def raw(self) -> bytes:
        """The file's exact bytes (stale tails after NULs included), under the shared lock."""
        self._recover_if_needed()
        with self._locked(exclusive=False) as fd:
            return read_all(fd, self.path)

    def transaction(self, edit: Callable[[bytes, os.stat_result], Optional[bytes]]) -> bool:
        """Replace the file's bytes with ``edit(old_bytes, stat)`` as one crash-safe change.

        For multi-record edits (``kvp set --chunk``, ``kvp fsck --repair``). Runs under the
        exclusive dual lock after completing any interrupted change; ``edit`` returns None to
        leave the file alone. Only the records from the first difference on are rewritten, in
        place (same inode), through the journal. True if ``edit`` asked for a change.
        """
        with self._write() as (fd, _count):
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
            self._snapshot = None  # re-read on next access: the cache knows nothing of the edit
            return True

    def _tail_fix(self, count: int) -> Tuple[List[Tuple[int, bytes]], int]:
        """Where a new record goes; a partial trailing record is zero-padded, never dropped."""
        if not self._trailing:
            return [], count * RECORD_SIZE
        log.warning(
            "%s: keeping a partial record of %d bytes by padding it to a whole record",
            self.path,
            len(self._trailing),
        )
        pad_at = count * RECORD_SIZE + len(self._trailing)
        return [(pad_at, bytes(RECORD_SIZE - len(self._trailing)))], (count + 1) * RECORD_SIZE

    @contextmanager
    def _write(self) -> Iterator[Tuple[int, int]]:
        if not self._writable:
            raise PoolError(f"{self.path}: opened read-only")
        with self._locked(exclusive=True) as fd:
            watch = self._watch
            if watch is None or watch.changed(self._journal_name):
                if watch is not None:
                    watch.mark_clean(self._journal_name)  # before reading: later events count
                self._recover(fd)
            self._fresh(fd)
            yield fd, len(self._records)

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
