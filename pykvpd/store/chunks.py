"""Values split over several records: ``KEY.0``, ``KEY.1``, ... as Ignition and libhvee read them.

They read a long value from ``KEY.0``, ``KEY.1``, ... up to the first missing index, after
looking for ``KEY`` itself. Writing or deleting such a value touches several records at once,
so the edits here run as one journaled change of the pool (``PoolFile.transaction``).
"""

from __future__ import annotations

from .poolfile import PoolFile
from .records import RECORD_SIZE, decode_record, encode_record, split_records

TYPE_CHECKING = False
if TYPE_CHECKING:  # not imported at run time: kvp get's start-up is measured (bench_cli.py)
    from typing import Dict, List, Mapping, Optional, Tuple


def chunk_key(key: str, index: int) -> str:
    """The key of chunk ``index`` of ``key``, as Ignition reads it (``ignition.config.0``)."""
    return f"{key}.{index}"


def split_value(value: bytes, size: int) -> List[bytes]:
    """Split ``value`` into chunks of at most ``size`` bytes, never inside a UTF-8 character.

    Each chunk is then valid UTF-8 on its own, which the host needs (the kernel converts every
    value to UTF-16 separately). An empty value is one empty chunk.
    """
    if size < 4:
        raise ValueError(f"chunk size must be at least 4 bytes (one UTF-8 character), got {size}")
    chunks: List[bytes] = []
    start = 0
    while start < len(value) or not chunks:
        end = min(start + size, len(value))
        while end < len(value) and end > start and value[end] & 0xC0 == 0x80:
            end -= 1  # value[end] continues a character: cut before that character
        chunks.append(value[start:end])
        start = end
    return chunks


def join_chunks(values: Mapping[str, bytes], key: str) -> Optional[Tuple[bytes, int]]:
    """``(value, chunks)`` the way Ignition reads a possibly split value, or None if absent.

    ``key`` itself wins when present and non-empty (``chunks`` is then 0); otherwise the values of
    ``key.0``, ``key.1``, ... up to the first missing index are concatenated.
    """
    single = values.get(key)
    if single:
        return single, 0
    parts: List[bytes] = []
    while chunk_key(key, len(parts)) in values:
        parts.append(values[chunk_key(key, len(parts))])
    if parts:
        return b"".join(parts), len(parts)
    if single is not None:
        return single, 0
    return None


def chunk_index(key: str, base: str) -> Optional[int]:
    """``i`` when ``key`` is ``base.i`` (decimal), else None."""
    prefix = base + "."
    if key.startswith(prefix):
        rest = key[len(prefix) :]
        if rest.isdigit() and rest.isascii():
            return int(rest)
    return None


def _belongs(raw: bytes, key: str, first_dropped: int) -> bool:
    """True for a valid record of ``key`` itself or of its chunk ``first_dropped`` or later."""
    rec = decode_record(raw)
    if not rec.valid:
        return False
    index = chunk_index(rec.text_key, key)
    return rec.text_key == key or (index is not None and index >= first_dropped)


def _set_chunks(data: bytes, key: str, chunks: List[bytes]) -> bytes:
    """Pool bytes with KEY.0..N-1 set, and KEY and any KEY.i (i >= N) removed."""
    raw, trailing = split_records(data)
    kept = [blob for blob in raw if not _belongs(blob, key, len(chunks))]
    first: Dict[bytes, int] = {}
    for i, blob in enumerate(kept):
        rec = decode_record(blob)
        if rec.valid:
            first.setdefault(rec.key, i)
    for i, chunk in enumerate(chunks):
        name = chunk_key(key, i).encode("utf-8")
        record = encode_record(name, chunk)
        if name in first:
            kept[first[name]] = record
        else:
            if trailing:  # a partial tail is zero-padded into a record first (never dropped)
                kept.append(trailing.ljust(RECORD_SIZE, b"\0"))
                trailing = b""
            kept.append(record)
    return b"".join(kept) + trailing


def _delete_chunks(data: bytes, key: str) -> Tuple[Optional[bytes], int]:
    """Pool bytes without KEY and every KEY.i (None if there were none), and how many went."""
    raw, trailing = split_records(data)
    kept = [blob for blob in raw if not _belongs(blob, key, 0)]
    if len(kept) == len(raw):
        return None, 0
    return b"".join(kept) + trailing, len(raw) - len(kept)


def write_chunks(pool: PoolFile, key: str, value: bytes, size: int) -> int:
    """Store ``value`` as ``KEY.0..N-1`` (chunks of at most ``size`` bytes) in one change,
    removing ``KEY`` itself and any older ``KEY.i`` beyond the new last chunk; returns N."""
    chunks = split_value(value, size)
    pool.transaction(lambda data, _st: _set_chunks(data, key, chunks))
    return len(chunks)


def delete_chunked(pool: PoolFile, key: str) -> int:
    """Remove ``KEY`` and every ``KEY.i`` in one change; how many records went."""
    removed = [0]

    def edit(data: bytes, _st: object) -> Optional[bytes]:
        after, removed[0] = _delete_chunks(data, key)
        return after

    pool.transaction(edit)
    return removed[0]
