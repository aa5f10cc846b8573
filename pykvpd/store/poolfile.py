"""One pool file: GET, SET, DELETE and ENUMERATE at a cost independent of the pool's size.

Reads and writes take the pool lock (``locking``); a change goes through the redo journal
(``journal``) and writes only the records it touches. In memory there is only the index
(``index``: key -> slot, first-match and valid-record order); values are read from the file when
asked for. With a directory watch (``freshness``) the index is reloaded only when another writer
changed the file; without one (one-shot tools) every call reloads it under the lock.
"""

from __future__ import annotations

import os

from ..lazylog import LazyLogger
from . import journal, locking
from .errors import PoolError
from .files import DirHandle, read_all, read_at
from .handle import Held, OpenPool
from .index import PoolIndex
from .records import (
    RECORD_SIZE,
    PoolImage,
    Record,
    as_bytes,
    check_sizes,
    decode_record,
    encode_record,
    indexable,
    padded,
)
from .sidecars import keep_partial

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Dict, Iterator, List, Optional, Tuple

    from .freshness import DirWatch
    from .records import Text

log = LazyLogger(__name__)

DEFAULT_MODE = 0o644
_BATCH = 64  # records per read while loading the index: 160 KiB, whatever the pool's size
_CACHED = 256  # decoded records kept for lock-free repeat reads: at most 256 x 2.5 KiB


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
        writable: Optional[bool] = True,
        watch: Optional[DirWatch] = None,
        lock_timeout: float = 20.0,
        directory: Optional[DirHandle] = None,
    ) -> None:
        self.path = path
        self.name = os.path.basename(path)
        self._file = OpenPool(path, directory, create=create, mode=mode, writable=writable,
                              lock_timeout=lock_timeout)  # fmt: skip
        self._journal_name = self._file.journal_name
        self._watch = watch
        self._index = PoolIndex()
        # Records read since the file last changed (slot -> record), for the daemon's repeated
        # GETs and ENUMERATEs: served without a lock or a read while the watch shows no event.
        self._cache: Dict[int, Record] = {}
        self._trailing = b""
        # A read-only reader's view of a change a killed writer left pending: the whole file as
        # the journal will leave it (values are then read from here, not from the file).
        self._overlay: Optional[bytes] = None
        self._snapshot: Optional[Tuple[int, ...]] = None
        self._reported: Optional[Tuple[int, ...]] = None

    @property
    def writable(self) -> bool:
        """Whether changes are allowed (with ``writable=None``: decided when first opened)."""
        if self._file.writable is None:
            self._file.open()
        return bool(self._file.writable)

    @property
    def directory(self) -> DirHandle:
        """The pool directory, open (files beside the pool are made through it)."""
        return self._file.dir

    def ensure_exists(self) -> None:
        """Create the file if missing (mode ``mode``); an existing file is left untouched,
        unless a killed writer left a change in its journal: that change is completed now."""
        self._file.open()
        self._recover_if_needed()

    def close(self) -> None:
        self._file.close()
        self._snapshot = None

    def __enter__(self) -> PoolFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _locked(self, exclusive: bool) -> Held:
        """Both locks on the file at ``path`` now; a watch with no event for the name since we
        last held the lock vouches that it is still the same file."""
        return self._file.locked(exclusive, self._same_as_before, self._forget)

    def _same_as_before(self) -> bool:
        watch = self._watch
        return watch is not None and self._snapshot is not None and not watch.changed(self.name)

    def _forget(self) -> None:
        self._snapshot = None

    # ----------------------------------------------------------------- the index

    @staticmethod
    def _stat_key(fd: int) -> Tuple[int, ...]:
        st = os.fstat(fd)
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def _fresh(self, fd: int) -> None:
        """Make the index match the file (caller holds a lock)."""
        if not self._same_as_before():  # inotify proves nothing was written (mmap excepted)
            self._reload(fd)

    def _reload(self, fd: int) -> None:
        """Rebuild the index from the file, ``_BATCH`` records at a time."""
        self._overlay = None if self.writable else self._file.as_completed(fd)
        index, problems, tail = PoolIndex(), [], []
        for rec in self._scan(fd, tail):
            slot = index.append(rec.key if indexable(rec) else None, rec.valid)
            if rec.problem and len(problems) < 6:
                problems.append(f"record {slot}: {rec.problem}")
        self._trailing, offset = tail[0], len(index) * RECORD_SIZE
        self._index = index
        self._cache.clear()
        self._snapshot = self._stat_key(fd)
        if self._watch is not None:
            self._watch.mark_clean(self.name)
        if self._trailing:
            problems.append(f"partial record of {len(self._trailing)} bytes at offset {offset}")
        self._report_damage(problems, len(index.bad) + bool(self._trailing))

    def _scan(self, fd: int, tail: List[bytes]) -> Iterator[Record]:
        """Every whole record of the file in order, read ``_BATCH`` at a time; the bytes of a
        partial record after them are appended to ``tail``."""
        offset = 0
        while True:
            data = self._read(fd, _BATCH * RECORD_SIZE, offset)
            whole = len(data) - len(data) % RECORD_SIZE
            for start in range(0, whole, RECORD_SIZE):
                yield decode_record(data[start : start + RECORD_SIZE])
            if len(data) < _BATCH * RECORD_SIZE:
                tail.append(data[whole:])
                return
            offset += whole

    def _read(self, fd: int, length: int, offset: int) -> bytes:
        if self._overlay is not None:
            return self._overlay[offset : offset + length]
        return read_at(fd, length, offset, self.path)

    def _record(self, fd: int, slot: int) -> Record:
        record = self._cache.get(slot)
        if record is None:
            record = decode_record(self._read(fd, RECORD_SIZE, slot * RECORD_SIZE))
            if len(self._cache) >= _CACHED:
                self._cache.clear()
            self._cache[slot] = record
        return record

    def _unchanged(self) -> bool:
        """The watch shows no event for the pool or its journal since we last held the lock:
        the index and the cached records are still the file's content (every writer's
        ``write()`` queues its event before returning), so no lock is needed to use them."""
        watch = self._watch
        return (
            watch is not None
            and self._snapshot is not None
            and not watch.changed(self.name, self._journal_name)
        )

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
        jfd = self._file.journal(create=False)
        if jfd is not None and journal.recover(fd, jfd, self.path):
            self._snapshot = None

    def _recover_if_needed(self) -> None:
        if self._watch is not None:
            self._watch.mark_clean(self._journal_name)  # before looking: later events count
        if self.writable and self._file.journal_pending():
            with self._locked(exclusive=True) as fd:
                self._recover(fd)

    def _reading(self) -> Held:
        """``with``: the shared lock, with the index current.

        With a watch, a journal with no inotify event since we last looked needs no check, and a
        pool with none needs no reload: every writer's ``write()`` queues its event before
        returning. The daemon's GET and ENUMERATE then cost the lock and one ``pread``.
        """
        return Held(self._lock_for_reading)

    def _lock_for_reading(self) -> int:
        watch = self._watch
        if watch is None or self._snapshot is None or watch.changed(self._journal_name):
            self._recover_if_needed()
        fd = self._file.lock(False, self._same_as_before, self._forget)
        try:
            self._fresh(fd)
        except BaseException:
            locking.unlock(fd)
            raise
        return fd

    # ----------------------------------------------------------------- reading

    def image(self) -> PoolImage:
        """All records (valid or not) and any partial tail, read under a shared lock."""
        with self._reading() as fd:
            return PoolImage(tuple(self._scan(fd, [])), self._trailing)

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
        return self._find(lambda ix: ix.shown(index))

    def get(self, key: Text) -> Optional[bytes]:
        """Value of the first record whose key is exactly ``key`` (case-sensitive), or None."""
        k = as_bytes(key)
        record = self._find(lambda ix: ix.first.get(k))
        return None if record is None else record.value

    def _find(self, slot_of: Callable[[PoolIndex], Optional[int]]) -> Optional[Record]:
        """The record in the slot ``slot_of`` picks from the index (None: no such record);
        from the cache without a lock while the watch shows no change."""
        if self._unchanged():
            slot = slot_of(self._index)
            cached = None if slot is None else self._cache.get(slot)
            if slot is None or cached is not None:
                return cached
        with self._reading() as fd:
            slot = slot_of(self._index)
            return None if slot is None else self._record(fd, slot)

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
                self._cache[slot] = Record(k, v)
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
            partial = self._trailing
            if tail is not None and keep_partial(self.directory, self.path, partial, tail.valid):
                pad_at = count * RECORD_SIZE + len(partial)
                writes.append((pad_at, bytes(RECORD_SIZE - len(partial))))
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
            for gone in (slot, len(index) - 1, *(src for src, _dst in moves)):
                self._cache.pop(gone, None)
            index.apply_delete(slot, moves)
            return True

    def clear(self) -> None:
        """Remove every record (used by ``kvp clear``); the inode stays the same."""
        with self._write() as fd:
            self._commit(fd, [], 0)
            self._index, self._trailing = PoolIndex(), b""
            self._cache.clear()

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

    def _write(self) -> Held:
        """``with``: the exclusive lock, any interrupted change completed, the index current."""
        return Held(self._lock_for_writing)

    def _lock_for_writing(self) -> int:
        if not self.writable:
            raise PoolError(f"{self.path}: opened read-only")
        fd = self._file.lock(True, self._same_as_before, self._forget)
        try:
            watch = self._watch
            if watch is None or watch.changed(self._journal_name):
                if watch is not None:
                    watch.mark_clean(self._journal_name)  # before reading: later events count
                self._recover(fd)
            self._fresh(fd)
        except BaseException:
            locking.unlock(fd)
            raise
        return fd

    def _commit(self, fd: int, writes: List[Tuple[int, bytes]], size_after: int) -> None:
        """Make one change through the journal (caller holds the write lock)."""
        jfd = self._file.journal(create=True)
        assert jfd is not None
        try:
            journal.commit(fd, jfd, writes, size_after, self.path)
        except PoolError:
            self._snapshot = None
            raise
        self._snapshot = self._stat_key(fd)
        if self._watch is not None:
            self._watch.mark_clean(self.name, self._journal_name)
