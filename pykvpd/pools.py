"""The pool files: record format, locking, freshness and crash-safe writes.

One module owns ``/var/lib/hyperv/.kvp_pool_0..4`` for the daemon, the ``kvp`` tool and any other
Python program, so all of them agree on three things other writers get wrong:

* **Format.** A record is a 512-byte key plus a 2048-byte value, NUL-terminated UTF-8, zero-filled
  after the NUL (the C daemon leaves stale tails and heap bytes there). No header, no count.
* **Locking.** Every read-modify-write holds one lock across the whole of it, taken both as an
  open-file-description ``fcntl`` lock (which excludes the C daemon's classic POSIX lock and C tools
  using it) and as a BSD ``flock`` (which excludes cloud-init and azure-init). Reads take both
  locks shared. The file is never renamed or truncated-and-rewritten, because other programs hold
  locks on its inode.
* **Crash safety.** A change writes at most the records it touches, in place, after first writing
  a checksummed redo journal beside the pool. If the writer is killed at any moment, the next
  writer that takes the lock finishes the change (or, if the journal itself is torn, the change
  never started). A pool is therefore always in its state before or after an operation: never
  empty, never torn, never with a lost acknowledged record.

Usage::

    from pykvpd.pools import PoolDir
    pools = PoolDir("/var/lib/hyperv")
    guest = pools.pool("guest")            # or 1
    guest.set("DeploymentState", "ready")  # str or bytes
    print(guest.get("DeploymentState"))    # b'ready'
    for rec in pools.pool(0).records():
        print(rec.text_key, rec.text_value)
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import select
import stat
import struct
import time
import zlib
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

from .protocol import MAX_KEY_SIZE, MAX_VALUE_SIZE, POOL_COUNT

log = logging.getLogger(__name__)

KEY_SIZE = MAX_KEY_SIZE
VALUE_SIZE = MAX_VALUE_SIZE
RECORD_SIZE = KEY_SIZE + VALUE_SIZE
DEFAULT_POOL_DIR = "/var/lib/hyperv"
DEFAULT_MODE = 0o644

POOL_NAMES = {
    "external": 0,
    "guest": 1,
    "auto": 2,
    "auto-external": 3,
    "auto-internal": 4,
}
POOL_LABELS = {number: name for name, number in POOL_NAMES.items()}

_F_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)
_F_OFD_SETLKW = getattr(fcntl, "F_OFD_SETLKW", 38)
_FLOCK = struct.Struct("hhxxxxqqi4x")  # struct flock on 64-bit Linux (l_pid must be 0 for OFD)
# Whole-file requests (start 0, length 0 = to the end, however the file grows).
_OFD_READ = _FLOCK.pack(fcntl.F_RDLCK, os.SEEK_SET, 0, 0, 0)
_OFD_WRITE = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
_OFD_UNLOCK = _FLOCK.pack(fcntl.F_UNLCK, os.SEEK_SET, 0, 0, 0)

Text = Union[str, bytes]


class PoolError(Exception):
    """A pool file could not be read, locked or written; the message names file and cause."""


class LockTimeout(PoolError):
    """Another process held the pool's lock for longer than we may wait."""


class RecordTooLarge(ValueError):
    """A key or value does not fit its field (with its NUL), or contains a NUL."""


def pool_number(pool: Union[int, str]) -> int:
    """Map ``0..4`` or a pool name (``external``, ``guest``, ...) to the pool number."""
    if isinstance(pool, int):
        number = pool
    elif pool.isdigit():
        number = int(pool)
    elif pool.lower() in POOL_NAMES:
        return POOL_NAMES[pool.lower()]
    else:
        names = ", ".join(POOL_NAMES)
        raise ValueError(f"unknown pool {pool!r}: use 0..{POOL_COUNT - 1} or one of {names}")
    if not 0 <= number < POOL_COUNT:
        raise ValueError(f"pool {number} out of range 0..{POOL_COUNT - 1}")
    return number


def pool_filename(number: int) -> str:
    return f".kvp_pool_{number}"


def _as_bytes(text: Text) -> bytes:
    return text.encode("utf-8") if isinstance(text, str) else bytes(text)


# --------------------------------------------------------------------------- records


class Record(NamedTuple):
    """One decoded record. ``problem`` is None for a record every reader can use.

    ``key``/``value`` are the bytes before the first NUL of each field; for a field without a NUL
    they are the whole field, and ``problem`` says so.
    """

    key: bytes
    value: bytes
    problem: Optional[str] = None

    @property
    def valid(self) -> bool:
        return self.problem is None

    @property
    def text_key(self) -> str:
        return self.key.decode("utf-8", "replace")

    @property
    def text_value(self) -> str:
        return self.value.decode("utf-8", "replace")


def _field(raw: bytes, what: str) -> Tuple[bytes, Optional[str]]:
    end = raw.find(b"\0")
    if end < 0:
        return raw, f"{what} has no NUL in its {len(raw)} bytes"
    text = raw[:end]
    try:
        text.decode("utf-8")
    except UnicodeDecodeError:
        return text, f"{what} is not valid UTF-8"
    return text, None


def decode_record(raw: bytes) -> Record:
    """Decode one 2560-byte record, keeping whatever is readable of a damaged one."""
    if len(raw) != RECORD_SIZE:
        raise ValueError(f"a record is {RECORD_SIZE} bytes, got {len(raw)}")
    key, key_problem = _field(raw[:KEY_SIZE], "key")
    value, value_problem = _field(raw[KEY_SIZE:], "value")
    return Record(key, value, key_problem or value_problem)


def encode_record(key: Text, value: Text) -> bytes:
    """A 2560-byte record, zero-filled after each NUL."""
    k, v = _as_bytes(key), _as_bytes(value)
    check_sizes(k, v)
    return k.ljust(KEY_SIZE, b"\0") + v.ljust(VALUE_SIZE, b"\0")


def check_sizes(key: bytes, value: bytes) -> None:
    """Raise RecordTooLarge naming the limit and the actual size."""
    if b"\0" in key:
        raise RecordTooLarge("key contains a NUL byte")
    if b"\0" in value:
        raise RecordTooLarge("value contains a NUL byte")
    if len(key) > KEY_SIZE - 1:
        raise RecordTooLarge(f"key is {len(key)} bytes; the limit is {KEY_SIZE - 1}")
    if len(value) > VALUE_SIZE - 1:
        raise RecordTooLarge(f"value is {len(value)} bytes; the limit is {VALUE_SIZE - 1}")


class PoolImage(NamedTuple):
    """Everything a reader can say about a pool file's bytes."""

    records: Tuple[Record, ...]
    trailing: bytes  # bytes of a partial record at the end (not a multiple of 2560)

    @property
    def problems(self) -> List[str]:
        found = [f"record {i}: {r.problem}" for i, r in enumerate(self.records) if r.problem]
        if self.trailing:
            found.append(
                f"partial record of {len(self.trailing)} bytes at offset "
                f"{len(self.records) * RECORD_SIZE}"
            )
        return found


def decode_pool(data: bytes) -> PoolImage:
    """Decode a whole pool file; never raises, whatever the bytes."""
    whole = len(data) - len(data) % RECORD_SIZE
    view = memoryview(data)
    records = tuple(
        decode_record(bytes(view[off : off + RECORD_SIZE])) for off in range(0, whole, RECORD_SIZE)
    )
    return PoolImage(records, bytes(data[whole:]))


# --------------------------------------------------------------------------- journal

_JOURNAL_MAGIC = b"PYKVPDJ1"
_JOURNAL_HEAD = struct.Struct("<8sQQI")  # magic, size before, size after, number of writes
_JOURNAL_WRITE = struct.Struct("<QII")  # offset, length of the new bytes, length of the old bytes
_CRC = struct.Struct("<I")

# One write of a change: (offset, new bytes, the bytes that were there before, possibly shorter).
Write = Tuple[int, bytes, bytes]


def journal_path(pool_path: str) -> str:
    """The redo journal beside a pool file (its name does not match ``.kvp_pool_*`` globs)."""
    directory, base = os.path.split(pool_path)
    return os.path.join(directory, ".pykvpd-journal-" + base.lstrip("."))


def _encode_journal(size_before: int, size_after: int, writes: Sequence[Sequence]) -> bytes:
    """Journal a change; a write without its old bytes means "beyond the end of the file"."""
    parts = [_JOURNAL_HEAD.pack(_JOURNAL_MAGIC, size_before, size_after, len(writes))]
    for write in writes:
        offset, new = write[0], write[1]
        old = write[2] if len(write) > 2 else b""
        parts.append(_JOURNAL_WRITE.pack(offset, len(new), len(old)))
        parts.append(new)
        parts.append(old)
    body = b"".join(parts)
    return body + _CRC.pack(zlib.crc32(body))


def _decode_journal(data: bytes) -> Optional[Tuple[int, int, List[Write]]]:
    """The journal's change, or None when it is empty or torn (then the change never started)."""
    if len(data) < _JOURNAL_HEAD.size + _CRC.size:
        return None
    body, crc = data[: -_CRC.size], _CRC.unpack(data[-_CRC.size :])[0]
    if zlib.crc32(body) != crc:
        return None
    magic, before, after, count = _JOURNAL_HEAD.unpack_from(body, 0)
    if magic != _JOURNAL_MAGIC:
        return None
    pos, writes = _JOURNAL_HEAD.size, []
    for _ in range(count):
        offset, new_len, old_len = _JOURNAL_WRITE.unpack_from(body, pos)
        pos += _JOURNAL_WRITE.size
        new = body[pos : pos + new_len]
        old = body[pos + new_len : pos + new_len + old_len]
        writes.append((offset, new, old))
        pos += new_len + old_len
    return before, after, writes


def _interrupted_state(current: bytes, new: bytes, old: bytes) -> bool:
    """True if ``current`` is what a write of ``new`` over ``old`` can leave when killed:
    a prefix of the new bytes followed by the rest of the old ones (the kernel stops a
    killed write at a page boundary). Anything else means another writer changed the file."""
    same, limit, step = 0, min(len(current), len(new)), 4096
    while same + step <= limit and current[same : same + step] == new[same : same + step]:
        same += step
    while same < limit and current[same] == new[same]:
        same += 1
    if same == len(current):
        return True
    return current[same:] == old[same : len(current)]


def _replayable(fd: int, before: int, after: int, writes: Sequence[Write]) -> bool:
    """Only a file nobody else touched since the crash may get the journal's change."""
    size = os.fstat(fd).st_size
    if not (size in (before, after) or min(before, after) < size < max(before, after)):
        return False
    return all(
        _interrupted_state(os.pread(fd, max(len(new), len(old)), offset), new, old)
        for offset, new, old in writes
    )


def _replayed_in_memory(data: bytes, journal: bytes) -> bytes:
    """The file's bytes as they will be once the pending journal is completed, for a reader
    that may not write it: ``data`` unchanged if the journal is empty, torn or stale."""
    change = _decode_journal(journal)
    if change is None:
        return data
    before, after, writes = change
    size = len(data)
    if not (size in (before, after) or min(before, after) < size < max(before, after)):
        return data
    if not all(
        _interrupted_state(data[o : o + max(len(new), len(old))], new, old)
        for o, new, old in writes
    ):
        return data
    patched = bytearray(data)
    for offset, new, _old in writes:
        if len(patched) < offset + len(new):
            patched.extend(bytes(offset + len(new) - len(patched)))
        patched[offset : offset + len(new)] = new
    del patched[after:]
    return bytes(patched.ljust(after, b"\0"))


# --------------------------------------------------------------------------- change detection


class DirWatch:
    """Tells, without reading them, which files of a directory changed since last asked.

    inotify queues an event before a writer's ``write()`` returns, so draining the queue before
    each request cannot miss a completed write (unlike size+mtime, which two same-size writes in
    one timestamp tick leave unchanged). Writes through ``mmap`` are the exception.
    """

    def __init__(self, directory: str) -> None:
        from . import inotify

        self._ino = inotify
        self._inotify = inotify.Inotify()
        mask = (
            inotify.IN_MODIFY
            | inotify.IN_ATTRIB
            | inotify.IN_CLOSE_WRITE
            | inotify.IN_MOVED_FROM
            | inotify.IN_MOVED_TO
            | inotify.IN_CREATE
            | inotify.IN_DELETE
            | inotify.IN_DELETE_SELF
            | inotify.IN_MOVE_SELF
        )
        self._inotify.add_watch(directory, mask)
        self._poller = select.poll()  # poll(0) is cheaper than a read that fails with EAGAIN
        self._poller.register(self._inotify.fileno(), select.POLLIN)
        self._dirty: set = set()
        self._epoch = 1  # bumped when the queue overflowed: every file may have changed
        self._clean_at: Dict[str, int] = {}

    def fileno(self) -> int:
        return self._inotify.fileno()

    def _drain(self) -> None:
        if not self._poller.poll(0):
            return
        ino = self._ino
        for event in self._inotify.read_events():
            if event.mask & (ino.IN_Q_OVERFLOW | ino.IN_DELETE_SELF | ino.IN_MOVE_SELF):
                self._epoch += 1
            elif event.name:
                self._dirty.add(event.name)

    def changed(self, name: str, other: Optional[str] = None) -> bool:
        """True if ``name`` (or ``other``) may have changed since its last ``mark_clean``."""
        self._drain()
        dirty, epoch, clean_at = self._dirty, self._epoch, self._clean_at
        if name in dirty or clean_at.get(name) != epoch:
            return True
        return other is not None and (other in dirty or clean_at.get(other) != epoch)

    def mark_clean(self, *names: str) -> None:
        """Forget events for these names (with the lock held, after re-reading or writing)."""
        self._drain()
        for name in names:
            self._dirty.discard(name)
            self._clean_at[name] = self._epoch

    def close(self) -> None:
        self._inotify.close()


# --------------------------------------------------------------------------- one pool file


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
        self._journal_path = journal_path(path)
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

    def _lock_fd(self, fd: int, exclusive: bool) -> None:
        """flock, then the OFD lock; both released by ``_unlock_fd``. Bounded wait.

        The uncontended case is two system calls; only a lock someone else holds pays for
        the retry loop.
        """
        kind = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
        request = _OFD_WRITE if exclusive else _OFD_READ
        deadline = None
        try:
            fcntl.flock(fd, kind)
        except OSError:
            deadline = time.monotonic() + self._lock_timeout
            self._retry(lambda: fcntl.flock(fd, kind), deadline)
        try:
            fcntl.fcntl(fd, _F_OFD_SETLK, request)
        except OSError:
            try:
                if deadline is None:
                    deadline = time.monotonic() + self._lock_timeout
                self._retry(lambda: fcntl.fcntl(fd, _F_OFD_SETLK, request), deadline)
            except BaseException:
                fcntl.flock(fd, fcntl.LOCK_UN)
                raise

    def _retry(self, attempt, deadline: float) -> None:  # noqa: ANN001
        """Try a non-blocking lock until it succeeds or the deadline passes (backs off)."""
        delay = 0.0005
        while True:
            try:
                attempt()
                return
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK, errno.EINTR):
                    raise PoolError(f"{self.path}: cannot lock: {exc.strerror}") from None
            if time.monotonic() >= deadline:
                raise LockTimeout(
                    f"{self.path}: still locked by another process after {self._lock_timeout:g} s"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    @staticmethod
    def _unlock_fd(fd: int) -> None:
        fcntl.fcntl(fd, _F_OFD_SETLK, _OFD_UNLOCK)
        fcntl.flock(fd, fcntl.LOCK_UN)

    @contextmanager
    def _locked(self, exclusive: bool) -> Iterator[int]:
        """Hold both locks on the file that is at ``path`` now (reopening after a rename)."""
        for _ in range(10):
            if self._fd is None:
                self._fd = self._open()
            fd = self._fd
            self._lock_fd(fd, exclusive)
            try:
                # No event for the name since we last held the lock: still the file at path.
                same = (
                    self._watch is not None
                    and self._snapshot is not None
                    and not self._watch.changed(self.name)
                ) or self._same_file(fd)
            except BaseException:
                self._unlock_fd(fd)
                raise
            if same:
                break
            # Replaced by rename or deleted while we waited: drop the stale inode and retry.
            self._unlock_fd(fd)
            os.close(fd)
            self._fd, self._snapshot = None, None
        else:
            raise PoolError(f"{self.path}: file keeps being replaced; giving up")
        try:
            yield fd
        finally:
            self._unlock_fd(fd)

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
        data = _read_all(fd, self.path)
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
            if not rec.problem or not rec.problem.startswith("key has no NUL"):
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
        if jfd is None:
            return
        data = _read_all(jfd, self._journal_path)
        if not data:
            return
        change = _decode_journal(data)
        if change is None:
            log.warning("%s: discarding a torn journal (its change never started)", self.path)
        elif _replayable(fd, *change):
            before, after, writes = change
            _apply(fd, [(offset, new) for offset, new, _old in writes], after)
            log.warning("%s: completed a change interrupted by a crash", self.path)
            self._snapshot = None
        else:
            log.warning(
                "%s: another writer changed the file after a crash; its journal is discarded",
                self.path,
            )
        os.ftruncate(jfd, 0)

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
            with open(self._journal_path, "rb") as journal:
                pending = journal.read()
        except OSError:  # no journal, or not ours to read (0600): the file as it is
            return data
        return _replayed_in_memory(data, pending) if pending else data

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
        k = _as_bytes(key)
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
        k = _as_bytes(key)
        v = b"" if value is None else _as_bytes(value)
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
            if self._trailing and _padded(self._trailing).key == k:
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
                self._records.append(_padded(self._trailing))
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
        k = _as_bytes(key)
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
            return _read_all(fd, self.path)

    def transaction(self, edit: Callable[[bytes, os.stat_result], Optional[bytes]]) -> bool:
        """Replace the file's bytes with ``edit(old_bytes, stat)`` as one crash-safe change.

        For multi-record edits (``kvp set --chunk``, ``kvp fsck --repair``). Runs under the
        exclusive dual lock after completing any interrupted change; ``edit`` returns None to
        leave the file alone. Only the records from the first difference on are rewritten, in
        place (same inode), through the journal. True if ``edit`` asked for a change.
        """
        with self._write() as (fd, _count):
            before = _read_all(fd, self.path)
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
        """Journal the change, apply it, then retire the journal (caller holds the write lock)."""
        jfd = self._journal(create=True)
        assert jfd is not None
        size_before = os.fstat(fd).st_size
        try:
            journaled = [(o, d, os.pread(fd, len(d), o)) for o, d in writes]
            if size_after < size_before:  # remember what the truncation cuts, to recognise it
                cut = os.pread(fd, size_before - size_after, size_after)
                journaled.append((size_after, b"", cut))
        except OSError as exc:
            raise PoolError(f"{self.path}: read failed: {exc.strerror}") from None
        journal = _encode_journal(size_before, size_after, journaled)
        try:
            # The journal is empty between changes. It is not fsynced: against a kill (the
            # crash the daemon must survive) order in the page cache suffices, and one flush
            # per change halves a SET on a disk. Power loss during the change can tear the one
            # record being written, as with any in-place write; the flush below makes every
            # acknowledged change durable.
            _pwrite_all(jfd, journal, 0)
            _apply(fd, writes, None if size_after == size_before else size_after)
            os.ftruncate(jfd, 0)
        except OSError as exc:
            self._snapshot = None
            raise PoolError(f"{self.path}: write failed: {exc.strerror}") from None
        self._snapshot = self._stat_key(fd)
        if self._watch is not None:
            self._watch.mark_clean(self.name, self._journal_name)


def _padded(partial: bytes) -> Record:
    """A partial trailing record as it reads once zero-padded to a whole record."""
    return decode_record(partial.ljust(RECORD_SIZE, b"\0"))


def all_valid(records: Sequence[Record]) -> bool:
    return all(r.problem is None for r in records)


def _read_all(fd: int, path: str) -> bytes:
    try:
        size = os.fstat(fd).st_size
        chunks, offset = [], 0
        while True:
            chunk = os.pread(fd, max(size - offset, 65536), offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise PoolError(f"{path}: read failed: {exc.strerror}") from None


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        done = os.pwrite(fd, view, offset)
        view, offset = view[done:], offset + done


def _apply(fd: int, writes: Sequence[Tuple[int, bytes]], size_after: Optional[int]) -> None:
    """Write the records, set the size (never shrinking below what the writes need), fsync."""
    for offset, data in writes:
        _pwrite_all(fd, data, offset)
    if size_after is not None:
        os.ftruncate(fd, size_after)
    os.fdatasync(fd)  # data and size; the mtime alone need not reach the disk first


# --------------------------------------------------------------------------- the directory


class PoolDir:
    """The five pool files of one directory (``/var/lib/hyperv`` on a guest)."""

    def __init__(
        self,
        directory: str = DEFAULT_POOL_DIR,
        *,
        create: bool = False,
        mode: int = DEFAULT_MODE,
        writable: bool = True,
        watch: bool = False,
        lock_timeout: float = 20.0,
    ) -> None:
        self.directory = directory
        self._create = create
        self._mode = mode
        self._writable = writable
        self._lock_timeout = lock_timeout
        if create:
            _make_dir(directory)
        self._watch: Optional[DirWatch] = None
        if watch:
            try:
                self._watch = DirWatch(directory)
            except (OSError, ImportError) as exc:
                log.warning(
                    "no inotify on %s (%s): re-reading pools on every request", directory, exc
                )
        self._pools: Dict[int, PoolFile] = {}

    def path(self, pool: Union[int, str]) -> str:
        return os.path.join(self.directory, pool_filename(pool_number(pool)))

    def pool(self, pool: Union[int, str]) -> PoolFile:
        known = self._pools.get(pool)  # type: ignore[arg-type]  # the daemon's per-request path
        if known is not None:
            return known
        number = pool_number(pool)
        if number not in self._pools:
            self._pools[number] = PoolFile(
                self.path(number),
                create=self._create,
                mode=self._mode,
                writable=self._writable,
                watch=self._watch,
                lock_timeout=self._lock_timeout,
            )
        return self._pools[number]

    def init_files(self) -> None:
        """Create missing pool files; existing ones keep their mode, mtime and bytes."""
        for number in range(POOL_COUNT):
            self.pool(number).ensure_exists()

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        if self._watch is not None:
            self._watch.close()


def _make_dir(directory: str) -> None:
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
    except OSError as exc:
        raise PoolError(f"{directory}: cannot create the pool directory: {exc.strerror}") from None
    if not stat.S_ISDIR(os.stat(directory).st_mode):
        raise PoolError(f"{directory}: not a directory")
