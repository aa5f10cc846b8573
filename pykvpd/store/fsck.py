"""fsck for pool files: what is wrong with a file's bytes, and a repair that loses no record."""

from __future__ import annotations

import os
from typing import Dict, List, NamedTuple, Optional, Tuple

from .poolfile import PoolFile
from .records import (
    KEY_SIZE,
    RECORD_SIZE,
    PoolImage,
    decode_pool,
    decode_record,
    encode_record,
    split_records,
)
from .sidecars import save_backup, saved_partials

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
SAVED_PARTIAL = "saved-partial"  # beside the pool, not in it (see ``sidecars``)

REPAIRS = {
    PARTIAL: "removed",
    KEY_NO_NUL: "removed",
    VALUE_NO_NUL: "removed",
    INVALID_UTF8: "removed",
    STALE_TAIL: "zero-filled",
    EMPTY_RECORD: "removed",
    DUPLICATE: "removed",
}


class Finding(NamedTuple):
    """One thing fsck noticed about a pool file, at a record (or the partial tail)."""

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
    raw, _trailing = split_records(data)
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
    raw, _trailing = split_records(data)
    drop = {f.index for f in findings if REPAIRS.get(f.kind) == "removed" and f.index is not None}
    kept: List[bytes] = []
    for i, rec in enumerate(raw):
        if i in drop:
            continue
        decoded = decode_record(rec)
        kept.append(encode_record(decoded.key, decoded.value))
    fixed = [f for f in findings if f.repairable]
    return b"".join(kept), fixed


class FsckReport(NamedTuple):
    """What fsck found in one pool file and, with a repair, what it fixed."""

    findings: List[Finding]
    records: int  # whole records in the file as found
    repaired: List[Finding]
    backup: Optional[str]  # where the original bytes were saved before a repair

    def remaining(self) -> List[Finding]:
        """The findings still true of the file afterwards."""
        return [f for f in self.findings if f not in self.repaired]


def check(pool: PoolFile) -> FsckReport:
    """fsck one pool, changing nothing (under the shared lock)."""
    data = pool.raw()
    findings = fsck_findings(data) + saved_partial_findings(pool)
    return FsckReport(findings, len(data) // RECORD_SIZE, [], None)


def saved_partial_findings(pool: PoolFile) -> List[Finding]:
    """One report-only finding per partial record an earlier write saved beside the pool."""
    return [
        Finding(
            SAVED_PARTIAL,
            None,
            0,
            f"a partial record of {len(data)} bytes (no record even when padded) was moved out "
            f"of the pool into {path}: {data[:32].hex()}{'...' if len(data) > 32 else ''}; "
            "remove that file once inspected",
        )
        for path, data in saved_partials(pool.directory, pool.path)
    ]


def repair(pool: PoolFile) -> FsckReport:
    """fsck one pool and fix what ``repair_image`` can, as one journaled change, after saving
    the original bytes beside it (``write_backup``); a clean file is left alone."""
    seen: Dict[str, object] = {}

    def edit(data: bytes, _st: os.stat_result) -> Optional[bytes]:
        seen["findings"] = fsck_findings(data)
        seen["records"] = len(data) // RECORD_SIZE
        fixed_data, fixed = repair_image(data)
        if not fixed:
            return None
        seen["backup"] = save_backup(pool.directory, pool.path, data)
        seen["fixed"] = fixed
        return fixed_data

    pool.transaction(edit)
    return FsckReport(
        seen["findings"] + saved_partial_findings(pool),  # type: ignore[operator]
        seen["records"],  # type: ignore[arg-type]
        seen.get("fixed", []),  # type: ignore[arg-type]
        seen.get("backup"),  # type: ignore[arg-type]
    )


class Inspection(NamedTuple):
    """A pool file's bytes decoded for display (``kvp dump``): every record, damaged or not."""

    size: int
    image: PoolImage
    findings: List[Finding]


def inspect(data: bytes) -> Inspection:
    """Decode any bytes as a pool file and say what is wrong with them; never raises."""
    return Inspection(len(data), decode_pool(data), fsck_findings(data))
