"""Record-level helpers above ``pools``: split events, chunked values, fsck and batch writes.

``pools`` reads and writes one record at a time. Some things other programs put in the pools span
several records, and some changes must touch several records at once:

* cloud-init splits a long telemetry event over keys ``CLOUD_INIT|...|<uuid>|0..N``, each value a
  whole JSON object with ``"msg_i": i`` (``reassemble_events``); azure-init repeats one key per
  1022-byte chunk;
* Ignition and libhvee read a long value from ``KEY.0``, ``KEY.1``, ... up to the first missing
  index, after looking for ``KEY`` itself (``split_value``, ``join_chunks``);
* ``kvp set --chunk``, ``kvp clear --if-stale`` and ``kvp fsck --repair`` change several records
  in one step, journaled and under the pool's lock (``transact``);
* ``fsck_findings``/``repair_image`` say what is wrong with a file's bytes and how to fix it
  without losing a valid record.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from .pools import (
    KEY_SIZE,
    RECORD_SIZE,
    PoolFile,
    Record,
    decode_pool,
    decode_record,
    encode_record,
)

# --------------------------------------------------------------------------- chunked values


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


# --------------------------------------------------------------------------- batch writes


def read_raw(fd: int) -> bytes:
    """The whole file behind ``fd`` (the caller holds the pool's lock)."""
    chunks, offset = [], 0
    while True:
        chunk = os.pread(fd, 1 << 20, offset)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        offset += len(chunk)


def transact(pool: PoolFile, edit: Callable[[bytes, os.stat_result], Optional[bytes]]) -> bool:
    """Replace a pool's bytes with ``edit(old_bytes, stat)`` in one journaled change
    (``PoolFile.transaction``); None from ``edit`` changes nothing."""
    return pool.transaction(edit)


def read_locked(pool: PoolFile) -> bytes:
    """A pool's exact bytes (stale tails included) under its shared lock."""
    return pool.raw()


class RawPool:
    """A pool file's bytes as a list of whole records plus a partial tail, for editing."""

    def __init__(self, data: bytes) -> None:
        whole = len(data) - len(data) % RECORD_SIZE
        self.raw: List[bytes] = [data[o : o + RECORD_SIZE] for o in range(0, whole, RECORD_SIZE)]
        self.trailing = data[whole:]

    def records(self) -> List[Record]:
        return [decode_record(r) for r in self.raw]

    def first_index(self) -> Dict[bytes, int]:
        """Position of the first valid record of each key (the one GET returns and SET modifies)."""
        index: Dict[bytes, int] = {}
        for i, rec in enumerate(self.records()):
            if rec.valid:
                index.setdefault(rec.key, i)
        return index

    def to_bytes(self) -> bytes:
        return b"".join(self.raw) + self.trailing

    def append(self, record: bytes) -> None:
        """Append a record; a partial tail is zero-padded into a record first (never dropped)."""
        if self.trailing:
            self.raw.append(self.trailing.ljust(RECORD_SIZE, b"\0"))
            self.trailing = b""
        self.raw.append(record)


# --------------------------------------------------------------------------- split events

_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


@dataclass
class KvpEvent:
    """One telemetry event, reassembled from one or more records."""

    source: str  # "cloud-init" or "azure-init"
    pool: int
    key: str  # the key without the part suffix
    fields: Dict[str, object] = field(default_factory=dict)
    msg: str = ""
    parts: List[int] = field(default_factory=list)  # msg_i of each part found, sorted
    first_index: int = 0  # record position of the first part (keeps file order)

    @property
    def complete(self) -> bool:
        """All parts from 0 to the highest one seen are present (a lost last part is invisible)."""
        return self.parts == list(range(len(self.parts)))


def _cloud_init_key(key: str, value: str) -> Optional[Tuple[str, Optional[int], Dict[str, object]]]:
    """(base key, part index or None, fields from the key) for a cloud-init event key."""
    parts = key.split("|")
    if len(parts) < 5 or parts[0] != "CLOUD_INIT":
        return None
    index: Optional[int] = None
    if len(parts) >= 6 and parts[-1].isdigit() and '"msg_i"' in value:
        index = int(parts.pop())
    fields: Dict[str, object] = {}
    try:
        fields["incarnation"] = int(parts[1])
    except ValueError:
        fields["incarnation"] = parts[1]
    fields["event_type"] = parts[2]
    fields["uuid"] = parts[-1]
    middle = parts[3:-1]
    if len(middle) >= 2 and _GUID.match(middle[-1]):
        fields["vm_id"] = middle.pop()  # cloud-init >= 25.x puts the VM id before the uuid
    else:
        fields["vm_id"] = None
    fields["name"] = "|".join(middle)
    return "|".join(parts), index, fields


def _azure_init_key(key: str) -> Optional[Dict[str, object]]:
    parts = key.split("|")
    if len(parts) < 5 or not parts[0].startswith("azure-init-"):
        return None
    return {
        "agent": parts[0],
        "vm_id": parts[1],
        "level": parts[2],
        "name": "|".join(parts[3:-1]),
        "span_id": parts[-1],
    }


def reassemble_events(records: Iterable[Tuple[int, int, Record]]) -> List[KvpEvent]:
    """cloud-init and azure-init events from ``(pool, index, record)`` triples, in file order.

    cloud-init parts are joined by ``msg_i`` (the other JSON fields come from part 0); azure-init's
    repeated keys are concatenated in file order. Records of other programs are ignored.
    """
    events: Dict[Tuple[int, str], KvpEvent] = {}
    pieces: Dict[Tuple[int, str], Dict[int, dict]] = {}
    for pool, index, rec in records:
        if not rec.valid:
            continue
        key, value = rec.text_key, rec.text_value
        parsed = _cloud_init_key(key, value)
        if parsed is not None:
            base, part, fields = parsed
            ident = (pool, base)
            try:
                body = json.loads(value)
                if not isinstance(body, dict):
                    raise ValueError("not an object")
            except ValueError:
                body = {"msg": value}
            part_no = part if part is not None else int(body.get("msg_i", 0) or 0)
            if ident not in events:
                events[ident] = KvpEvent("cloud-init", pool, base, fields, first_index=index)
            pieces.setdefault(ident, {}).setdefault(part_no, body)
            continue
        az = _azure_init_key(key)
        if az is not None:
            ident = (pool, key)
            if ident not in events:
                events[ident] = KvpEvent("azure-init", pool, key, az, first_index=index)
            event = events[ident]
            event.msg += value
            event.parts.append(len(event.parts))
    for ident, parts in pieces.items():
        event = events[ident]
        event.parts = sorted(parts)
        head = parts[event.parts[0]]
        for name, val in head.items():
            if name not in ("msg", "msg_i"):
                event.fields[name] = val
        event.msg = "".join(str(parts[i].get("msg", "")) for i in event.parts)
    return sorted(events.values(), key=lambda e: (e.pool, e.first_index))


def boot_time(proc: str = "/proc") -> Optional[float]:
    """Boot time in epoch seconds: ``btime`` of /proc/stat, else now minus /proc/uptime.

    ``btime`` is rounded down, so a file written during this boot is never older than it.
    """
    try:
        with open(os.path.join(proc, "stat"), "rb") as f:
            for line in f:
                if line.startswith(b"btime "):
                    return float(int(line.split()[1]))
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open(os.path.join(proc, "uptime"), "rb") as f:
            return time.time() - float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


# --------------------------------------------------------------------------- fsck

# Finding kinds. Repairable ones are fixed by ``repair_image``; the others are only reported.
PARTIAL = "partial-record"
KEY_NO_NUL = "key-no-nul"
VALUE_NO_NUL = "value-no-nul"
INVALID_UTF8 = "invalid-utf8"
STALE_TAIL = "stale-tail"
EMPTY_RECORD = "empty-record"
EMPTY_KEY = "empty-key"
DUPLICATE = "duplicate"
CONFLICT = "duplicate-conflict"
CASE_DUPLICATE = "case-duplicate"

REPAIRS = {
    PARTIAL: "removed",
    KEY_NO_NUL: "removed",
    VALUE_NO_NUL: "removed",
    INVALID_UTF8: "removed",
    STALE_TAIL: "zero-filled",
    EMPTY_RECORD: "removed",
    DUPLICATE: "removed",
}


@dataclass(frozen=True)
class Finding:
    kind: str
    index: Optional[int]  # record position (None for the partial tail)
    offset: int
    message: str

    @property
    def repairable(self) -> bool:
        return self.kind in REPAIRS


def _record_problem_kind(problem: str) -> str:
    if problem.startswith("key has no NUL"):
        return KEY_NO_NUL
    if problem.startswith("value has no NUL"):
        return VALUE_NO_NUL
    return INVALID_UTF8


def _stale_bytes(field_bytes: bytes) -> int:
    end = field_bytes.find(b"\0")
    if end < 0:
        return 0
    return sum(1 for b in field_bytes[end + 1 :] if b)


def fsck_findings(data: bytes) -> List[Finding]:
    """Everything a careful reader would notice about a pool file's bytes, in file order."""
    image = decode_pool(data)
    raw = RawPool(data).raw
    found: List[Finding] = []
    first: Dict[bytes, int] = {}
    folded: Dict[str, int] = {}
    for i, rec in enumerate(image.records):
        offset = i * RECORD_SIZE
        if rec.problem:
            found.append(Finding(_record_problem_kind(rec.problem), i, offset, rec.problem))
            continue
        if not rec.key and not rec.value:
            junk = sum(1 for b in raw[i] if b)
            detail = f" (and {junk} stray bytes after the NULs)" if junk else " (all zero bytes)"
            found.append(Finding(EMPTY_RECORD, i, offset, "empty key and value" + detail))
            continue
        for name, part in (("key", raw[i][:KEY_SIZE]), ("value", raw[i][KEY_SIZE:])):
            stale = _stale_bytes(part)
            if stale:
                found.append(
                    Finding(
                        STALE_TAIL,
                        i,
                        offset,
                        f"{name} field has {stale} non-zero bytes after its NUL "
                        "(left by an in-place modify; readers that strip NULs see them)",
                    )
                )
        if not rec.key:
            found.append(Finding(EMPTY_KEY, i, offset, "key is empty"))
        if rec.key in first:
            j = first[rec.key]
            if image.records[j].value == rec.value:
                found.append(
                    Finding(
                        DUPLICATE, i, offset, f"exact duplicate of record {j} ({rec.text_key!r})"
                    )
                )
            else:
                found.append(
                    Finding(
                        CONFLICT,
                        i,
                        offset,
                        f"key {rec.text_key!r} also in record {j} with another value: "
                        f"the daemon returns record {j}, Windows reads the last one",
                    )
                )
            continue
        first[rec.key] = i
        fold = rec.text_key.upper()
        if fold in folded and image.records[folded[fold]].key != rec.key:
            j = folded[fold]
            found.append(
                Finding(
                    CASE_DUPLICATE,
                    i,
                    offset,
                    f"key {rec.text_key!r} differs only in case from "
                    f"{image.records[j].text_key!r} (record {j}); Windows reads only the last",
                )
            )
        folded.setdefault(fold, i)
    if image.trailing:
        offset = len(image.records) * RECORD_SIZE
        found.append(
            Finding(
                PARTIAL,
                None,
                offset,
                f"partial record of {len(image.trailing)} bytes at offset {offset}",
            )
        )
    return found


def repair_image(data: bytes) -> Tuple[bytes, List[Finding]]:
    """The repaired bytes and the findings that were fixed.

    Keeps every valid record, in order, with its key and value unchanged: only unreadable records
    (no NUL, invalid UTF-8), all-zero records, a partial tail and later exact duplicates (same key
    and same value, so every reader sees the same value afterwards) are removed, and stale bytes
    after NULs are zeroed. Conflicting duplicates and case-duplicates are left as they are.
    """
    findings = fsck_findings(data)
    raw = RawPool(data).raw
    drop = {f.index for f in findings if REPAIRS.get(f.kind) == "removed" and f.index is not None}
    kept: List[bytes] = []
    for i, rec in enumerate(raw):
        if i in drop:
            continue
        decoded = decode_record(rec)
        kept.append(encode_record(decoded.key, decoded.value))
    fixed = [f for f in findings if f.repairable]
    return b"".join(kept), fixed


def remaining_findings(findings: Sequence[Finding], repaired: bool) -> List[Finding]:
    return [f for f in findings if not (repaired and f.repairable)]
