"""The redo journal beside each pool file: atomic multi-write changes and crash recovery.

A change first writes a checksummed journal (every write's new bytes and the bytes it covers),
then applies the writes in place, then empties the journal. If the writer is killed at any
moment, the next writer that takes the lock finishes the change from the journal, or, if the
journal itself is torn, the change never started. A pool is therefore always in its state
before or after an operation: never empty, never torn, never with a lost acknowledged record.
A journal is replayed only onto a file nobody else has touched since the crash.
"""

from __future__ import annotations

import os
import struct
import zlib

from ..lazylog import LazyLogger
from .errors import PoolError
from .files import pwrite_all, read_all

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import List, Optional, Sequence, Tuple

    # One write of a change: (offset, new bytes, the bytes that were there before, possibly
    # shorter).
    Write = Tuple[int, bytes, bytes]

log = LazyLogger(__name__)

_JOURNAL_MAGIC = b"PYKVPDJ1"
_JOURNAL_HEAD = struct.Struct("<8sQQI")  # magic, size before, size after, number of writes
_JOURNAL_WRITE = struct.Struct("<QII")  # offset, length of the new bytes, length of the old bytes
_CRC = struct.Struct("<I")


def journal_path(pool_path: str) -> str:
    """The redo journal beside a pool file (its name does not match ``.kvp_pool_*`` globs)."""
    directory, base = os.path.split(pool_path)
    return os.path.join(directory, ".pykvpd-journal-" + base.lstrip("."))


def encode_journal(size_before: int, size_after: int, writes: Sequence[Sequence]) -> bytes:
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


def decode_journal(data: bytes) -> Optional[Tuple[int, int, List[Write]]]:
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


def _size_fits(size: int, before: int, after: int) -> bool:
    return size in (before, after) or min(before, after) < size < max(before, after)


def _replayable(fd: int, before: int, after: int, writes: Sequence[Write]) -> bool:
    """Only a file nobody else touched since the crash may get the journal's change."""
    if not _size_fits(os.fstat(fd).st_size, before, after):
        return False
    return all(
        _interrupted_state(os.pread(fd, max(len(new), len(old)), offset), new, old)
        for offset, new, old in writes
    )


def replayed_in_memory(data: bytes, journal: bytes) -> bytes:
    """The file's bytes as they will be once the pending journal is completed, for a reader
    that may not write it: ``data`` unchanged if the journal is empty, torn or stale."""
    change = decode_journal(journal)
    if change is None:
        return data
    before, after, writes = change
    if not _size_fits(len(data), before, after):
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


def apply(fd: int, writes: Sequence[Tuple[int, bytes]], size_after: Optional[int]) -> None:
    """Write the records, set the size (never shrinking below what the writes need), fsync."""
    for offset, data in writes:
        pwrite_all(fd, data, offset)
    if size_after is not None:
        os.ftruncate(fd, size_after)
    os.fdatasync(fd)  # data and size; the mtime alone need not reach the disk first


def commit(
    fd: int, jfd: int, writes: Sequence[Tuple[int, bytes]], size_after: int, path: str
) -> None:
    """Journal the change, apply it, then retire the journal (caller holds the write lock)."""
    size_before = os.fstat(fd).st_size
    try:
        journaled = [(o, d, os.pread(fd, len(d), o)) for o, d in writes]
        if size_after < size_before:  # remember what the truncation cuts, to recognise it
            cut = os.pread(fd, size_before - size_after, size_after)
            journaled.append((size_after, b"", cut))
    except OSError as exc:
        raise PoolError(f"{path}: read failed: {exc.strerror}") from None
    journal = encode_journal(size_before, size_after, journaled)
    try:
        # The journal is empty between changes. It is not fsynced: against a kill (the
        # crash the daemon must survive) order in the page cache suffices, and one flush
        # per change halves a SET on a disk. Power loss during the change can tear the one
        # record being written, as with any in-place write; the flush below makes every
        # acknowledged change durable.
        pwrite_all(jfd, journal, 0)
        apply(fd, writes, None if size_after == size_before else size_after)
        os.ftruncate(jfd, 0)
    except OSError as exc:
        raise PoolError(f"{path}: write failed: {exc.strerror}") from None


def recover(fd: int, jfd: int, path: str) -> bool:
    """Finish a change a killed writer left in the journal (caller holds the write lock).

    True if the pool file was changed.
    """
    data = read_all(jfd, journal_path(path))
    if not data:
        return False
    change = decode_journal(data)
    replayed = False
    if change is None:
        log.warning("%s: discarding a torn journal (its change never started)", path)
    elif _replayable(fd, *change):
        before, after, writes = change
        apply(fd, [(offset, new) for offset, new, _old in writes], after)
        log.warning("%s: completed a change interrupted by a crash", path)
        replayed = True
    else:
        log.warning(
            "%s: another writer changed the file after a crash; its journal is discarded", path
        )
    os.ftruncate(jfd, 0)
    return replayed
