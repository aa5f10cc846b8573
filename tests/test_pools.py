"""pools: record format, semantics, crash recovery, freshness and damaged files, on real files.

Every expectation is stated as the exact bytes of the pool file (records built here by hand, not
with the module's own encoder), so a format drift cannot hide behind a round trip.
"""

from __future__ import annotations

import copy
import logging
import os
import pickle
import stat
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

import pytest

from pykvpd import store as P
from pykvpd.store import (
    RECORD_SIZE,
    PoolDir,
    PoolError,
    PoolFile,
    Record,
    RecordTooLarge,
)
from pykvpd.store import journal as J

RS = 2560
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def R(key: bytes, value: bytes) -> bytes:
    """A record as the spec describes it: 512-byte key + 2048-byte value, zero-filled."""
    assert len(key) < 512 and len(value) < 2048
    return key + bytes(512 - len(key)) + value + bytes(2048 - len(value))


def write(path: Path, data: bytes) -> None:
    """An external writer that keeps the inode (truncate + write), like the C daemon."""
    with open(path, "r+b" if path.exists() else "wb") as f:
        f.truncate(0)
        f.write(data)


@pytest.fixture
def pool_path(tmp_path: Path) -> Path:
    path = tmp_path / ".kvp_pool_1"
    path.write_bytes(b"")
    return path


@pytest.fixture
def pf(pool_path: Path):
    f = PoolFile(str(pool_path))
    yield f
    f.close()


def pairs(records: List[Record]) -> List[tuple]:
    return [(r.key, r.value) for r in records]


# --------------------------------------------------------------------------- record codec


def test_record_size_constants():
    assert RECORD_SIZE == 2560 and P.KEY_SIZE == 512 and P.VALUE_SIZE == 2048


def test_encode_record_zero_filled():
    assert P.encode_record("key", "välue") == R(b"key", "välue".encode())
    assert P.encode_record(b"", b"") == bytes(RS)


def test_encode_record_limits():
    P.encode_record(b"k" * 511, b"v" * 2047)  # the largest that keeps the NUL
    with pytest.raises(RecordTooLarge, match="key is 512 bytes; the limit is 511"):
        P.encode_record(b"k" * 512, b"")
    with pytest.raises(RecordTooLarge, match="value is 2048 bytes; the limit is 2047"):
        P.encode_record(b"k", b"v" * 2048)
    with pytest.raises(RecordTooLarge, match="key contains a NUL"):
        P.encode_record(b"a\0b", b"")
    with pytest.raises(RecordTooLarge, match="value contains a NUL"):
        P.encode_record(b"a", b"x\0")


def test_decode_record_cuts_at_first_nul_ignoring_stale_tail():
    raw = bytearray(R(b"key", b"short"))
    raw[4:10] = b"STALE!"  # after the key's NUL (C daemon leftovers)
    raw[512 + 6 : 512 + 20] = b"old-long-value"
    assert P.decode_record(bytes(raw)) == Record(b"key", b"short", None)


def test_decode_record_problems():
    no_key_nul = P.decode_record(b"k" * 512 + R(b"", b"v")[512:])
    assert no_key_nul.key == b"k" * 512 and "key has no NUL" in no_key_nul.problem
    no_val_nul = P.decode_record(R(b"k", b"")[:512] + b"v" * 2048)
    assert no_val_nul.value == b"v" * 2048 and "value has no NUL" in no_val_nul.problem
    bad_utf8 = P.decode_record(R(b"\xff\xfe", b"v"))
    assert bad_utf8.key == b"\xff\xfe" and "not valid UTF-8" in bad_utf8.problem
    assert not bad_utf8.valid
    with pytest.raises(ValueError):
        P.decode_record(b"x" * 2559)


def test_decode_pool_splits_records_and_trailing():
    image = P.decode_pool(R(b"a", b"1") + R(b"b", b"2") + b"tail")
    assert pairs(list(image.records)) == [(b"a", b"1"), (b"b", b"2")]
    assert image.trailing == b"tail"
    assert image.problems == ["partial record of 4 bytes at offset 5120"]
    assert P.decode_pool(b"").records == () and P.decode_pool(b"").trailing == b""


def test_record_and_image_behave_as_the_named_tuples_they_were():
    """Written out as tuple subclasses (no typing/collections at start-up), they still unpack,
    index, compare and hash as tuples, default ``problem`` to None and show their fields."""
    rec = Record(b"k", b"v")
    key, value, problem = rec
    assert (key, value, problem) == (rec[0], rec[1], rec[2]) == (b"k", b"v", None)
    assert rec == (b"k", b"v", None) and hash(rec) == hash((b"k", b"v", None)) and len(rec) == 3
    assert Record(key=b"k", value=b"v", problem="bad") == (b"k", b"v", "bad")
    assert repr(rec) == "Record(key=b'k', value=b'v', problem=None)"
    assert rec.valid and rec.text_key == "k" and rec.text_value == "v"
    image = P.PoolImage((rec,), b"")
    records, trailing = image
    assert records == (rec,) and trailing == b"" and image.problems == []
    assert repr(image) == (
        "PoolImage(records=(Record(key=b'k', value=b'v', problem=None),), trailing=b'')"
    )
    assert pickle.loads(pickle.dumps(image)) == image
    changed = rec._replace(problem="key has no NUL")
    assert type(changed) is Record and changed == (b"k", b"v", "key has no NUL") and rec.valid
    assert rec._asdict() == {"key": b"k", "value": b"v", "problem": None}
    with pytest.raises(ValueError, match="unexpected field names: \\['nope'\\]"):
        rec._replace(nope=1)
    assert type(copy.deepcopy(rec)) is Record
    with pytest.raises(AttributeError):
        rec.key = b"other"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        rec.extra = 1  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "name,number",
    [
        ("external", 0),
        ("guest", 1),
        ("auto", 2),
        ("auto-external", 3),
        ("AUTO-INTERNAL", 4),
        ("3", 3),
        (0, 0),
        (4, 4),
    ],
)
def test_pool_number(name, number):
    assert P.pool_number(name) == number


@pytest.mark.parametrize("bad", [5, -1, "5", "nope", 255])
def test_pool_number_rejects(bad):
    with pytest.raises(ValueError):
        P.pool_number(bad)


# --------------------------------------------------------------------------- directory set-up


def test_init_files_creates_five_files_mode_0644_despite_umask(tmp_path: Path):
    directory = tmp_path / "hyperv"
    old = os.umask(0o077)
    try:
        pools = PoolDir(str(directory), create=True)
        pools.init_files()
        pools.close()
    finally:
        os.umask(old)
    assert sorted(os.listdir(directory)) == [f".kvp_pool_{i}" for i in range(5)]
    for i in range(5):
        st = os.stat(directory / f".kvp_pool_{i}")
        assert stat.S_IMODE(st.st_mode) == 0o644
        assert st.st_size == 0
    assert stat.S_ISDIR(os.stat(directory).st_mode)


def test_init_files_leaves_existing_files_untouched(tmp_path: Path):
    existing = tmp_path / ".kvp_pool_1"
    content = R(b"a", b"1") + b"partial"
    existing.write_bytes(content)
    os.chmod(existing, 0o600)
    os.utime(existing, ns=(1_000_000_000, 1_500_000_123))
    before = os.stat(existing)
    pools = PoolDir(str(tmp_path), create=True)
    pools.init_files()
    pools.close()
    after = os.stat(existing)
    assert stat.S_IMODE(after.st_mode) == 0o600
    assert after.st_mtime_ns == 1_500_000_123 == before.st_mtime_ns
    assert after.st_ino == before.st_ino
    assert existing.read_bytes() == content
    assert stat.S_IMODE(os.stat(tmp_path / ".kvp_pool_0").st_mode) == 0o644


def test_missing_file_without_create_is_pool_error(tmp_path: Path):
    pools = PoolDir(str(tmp_path))
    with pytest.raises(PoolError, match="no such pool file"):
        pools.pool(1).get("x")
    with pytest.raises(PoolError):
        pools.pool(1).set("x", "y")
    assert not (tmp_path / ".kvp_pool_1").exists()


def test_pool_lookup_by_name_and_number_same_object(tmp_path: Path):
    pools = PoolDir(str(tmp_path))
    assert pools.pool("guest") is pools.pool(1)
    assert pools.path("auto-external") == str(tmp_path / ".kvp_pool_3")


# --------------------------------------------------------------------------- semantics


def test_set_appends_in_order_with_exact_bytes(pf, pool_path):
    ino = os.stat(pool_path).st_ino
    assert pf.set("a", "1") is True
    assert pool_path.read_bytes() == R(b"a", b"1")
    assert pf.set(b"b", b"2") is True
    assert pf.set("c", "ünï") is True
    assert pool_path.read_bytes() == R(b"a", b"1") + R(b"b", b"2") + R(b"c", "ünï".encode())
    assert os.stat(pool_path).st_size == 3 * RS
    assert os.stat(pool_path).st_ino == ino


def test_modify_in_place_zero_fills_shorter_value(pf, pool_path):
    pf.set("a", "a-long-old-value")
    pf.set("b", "2")
    ino = os.stat(pool_path).st_ino
    assert pf.set("a", "x") is False
    assert pool_path.read_bytes() == R(b"a", b"x") + R(b"b", b"2")
    assert os.stat(pool_path).st_ino == ino


def test_modify_foreign_record_with_stale_tail_zero_fills(pf, pool_path):
    raw = bytearray(R(b"a", b"new"))
    raw[512 + 4 : 512 + 12] = b"leftover"
    write(pool_path, bytes(raw))
    assert pf.get("a") == b"new"
    pf.set("a", "v2")
    assert pool_path.read_bytes() == R(b"a", b"v2")


def test_get_exact_case_sensitive_c_string_match(pf, pool_path):
    write(pool_path, R(b"abcd", b"1") + R(b"abc", b"2") + R(b"Foo", b"3") + R(b"", b"4"))
    assert pf.get("abc") == b"2"
    assert pf.get("abcd") == b"1"
    assert pf.get("ab") is None
    assert pf.get("abcde") is None
    assert pf.get("foo") is None
    assert pf.get("FOO") is None
    assert pf.get("Foo") == b"3"
    assert pf.get("") == b"4"


def test_set_is_case_sensitive(pf, pool_path):
    pf.set("Foo", "1")
    assert pf.set("foo", "2") is True
    assert pool_path.read_bytes() == R(b"Foo", b"1") + R(b"foo", b"2")


def test_duplicates_first_match_wins(pf, pool_path):
    """Duplicates appended by a foreign writer: GET/SET/DELETE act on the first only."""
    write(pool_path, R(b"k", b"first") + R(b"x", b"0") + R(b"k", b"second"))
    assert pf.get("k") == b"first"
    assert pf.set("k", "changed") is False
    assert pool_path.read_bytes() == R(b"k", b"changed") + R(b"x", b"0") + R(b"k", b"second")
    assert pairs([pf.enumerate(i) for i in range(3)]) == [
        (b"k", b"changed"),
        (b"x", b"0"),
        (b"k", b"second"),
    ]
    assert pf.delete("k") is True
    # The last record moves into the freed slot: it is the next "k", so it stays the first.
    assert pool_path.read_bytes() == R(b"k", b"second") + R(b"x", b"0")
    assert pf.get("k") == b"second"


def test_delete_never_moves_a_duplicate_in_front_of_its_key(pf, pool_path):
    """The last record is a later "k": moved into slot 0 it would jump the other later "k"s.
    Each "k" after the freed slot moves up into the previous one's place instead."""
    write(pool_path, R(b"a", b"") + R(b"k", b"1") + R(b"b", b"") + R(b"k", b"2") + R(b"k", b"3"))
    assert pf.delete("a") is True
    assert pool_path.read_bytes() == R(b"k", b"1") + R(b"k", b"2") + R(b"b", b"") + R(b"k", b"3")
    assert [pf.get("k"), pf.delete("k"), pf.get("k"), pf.delete("k"), pf.get("k")] == [
        b"1",
        True,
        b"2",
        True,
        b"3",
    ]
    assert pf.delete("k") is True and pf.get("k") is None
    assert pool_path.read_bytes() == R(b"b", b"")


def _model_set(model: List[Tuple[bytes, bytes]], key: bytes, value: bytes) -> None:
    for i, (k, _v) in enumerate(model):
        if k == key:
            model[i] = (key, value)
            return
    model.append((key, value))


def _model_delete(model: List[Tuple[bytes, bytes]], key: bytes) -> None:
    for i, (k, _v) in enumerate(model):
        if k == key:
            del model[i]
            return


def _per_key(records) -> dict:
    """Each key's values in file order: all that first-match-wins readers can ever tell apart."""
    out: dict = {}
    for key, value in records:
        out.setdefault(key, []).append(value)
    return out


@pytest.mark.parametrize("seed", range(6))
def test_random_changes_keep_every_keys_record_order(pf, pool_path, seed):
    """Against a model that shifts on DELETE (the C daemon's order): the same records, and for
    every key the same values in the same order, after every change; GET agrees."""
    import random

    rng = random.Random(seed)
    keys = [b"k%d" % i for i in range(6)]
    model = [(rng.choice(keys), b"v%d" % i) for i in range(30)]  # a foreign writer's duplicates
    write(pool_path, b"".join(R(k, v) for k, v in model))
    for step in range(300):
        key = rng.choice(keys)
        if rng.random() < 0.5:
            assert pf.delete(key) == any(k == key for k, _ in model)
            _model_delete(model, key)
        else:
            value = b"s%d" % step
            pf.set(key, value)
            _model_set(model, key, value)
        data = pool_path.read_bytes()
        on_disk = [(r.key, r.value) for r in P.decode_pool(data).records]
        assert _per_key(on_disk) == _per_key(model), step
        assert sorted(on_disk) == sorted(model)
        for k in keys:
            assert pf.get(k) == next((v for kk, v in model if kk == k), None)
    assert sorted(pairs(pf.valid_records())) == sorted(model)


def test_delete_writes_one_record_whatever_the_pool_size(pf, pool_path, monkeypatch):
    """A DELETE at the head of 10,000 records journals and writes one record and a cut."""
    write(pool_path, b"".join(R(b"key-%05d" % i, b"v" * 100) for i in range(10_000)))
    assert pf.get("key-00000") == b"v" * 100
    seen = []
    real = J.encode_journal
    monkeypatch.setattr(J, "encode_journal", lambda *args: seen.append(args) or real(*args))
    assert pf.delete("key-00000") is True
    [(before, after, writes)] = seen
    assert (before, after) == (10_000 * RS, 9_999 * RS)
    assert [(offset, len(new), len(old)) for offset, new, old in writes] == [
        (0, RS, RS),  # key-09999 into slot 0, over the deleted record
        (9_999 * RS, 0, RS),  # the cut, to recognise an interrupted truncation
    ]
    with open(pool_path, "rb") as f:
        assert f.read(RS) == R(b"key-09999", b"v" * 100)
    assert pf.get("key-09999") == b"v" * 100 and pf.get("key-00000") is None


def test_index_of_a_large_pool_holds_no_values(tmp_path: Path):
    """Loading 10,000 records of 2 KB values (25 MB of file) allocates a few MB at most."""
    import tracemalloc

    path = tmp_path / ".kvp_pool_1"
    with open(path, "wb") as f:
        for i in range(10_000):
            f.write(R(b"key-%05d" % i, b"v" * 2000))
    pool = PoolFile(str(path))
    tracemalloc.start()
    try:
        assert pool.get("key-09999") == b"v" * 2000
        assert pool.enumerate(9_999) == Record(b"key-09999", b"v" * 2000)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        pool.close()
    assert peak < 4 * 1024 * 1024, peak


@pytest.mark.parametrize(
    "victim,rest",
    [(b"a", [b"d", b"b", b"c"]), (b"b", [b"a", b"d", b"c"]), (b"d", [b"a", b"b", b"c"])],
)
def test_delete_moves_the_last_record_into_the_freed_slot(pf, pool_path, victim, rest):
    for key in (b"a", b"b", b"c", b"d"):
        pf.set(key, key.upper() * 3)
    ino = os.stat(pool_path).st_ino
    assert pf.delete(victim) is True
    assert pool_path.read_bytes() == b"".join(R(k, k.upper() * 3) for k in rest)
    assert os.stat(pool_path).st_size == 3 * RS
    assert os.stat(pool_path).st_ino == ino
    assert [pf.enumerate(i).key for i in range(3)] == rest
    assert pf.enumerate(3) is None


def test_delete_absent_leaves_file_alone(pf, pool_path):
    pf.set("a", "1")
    before = os.stat(pool_path)
    assert pf.delete("A") is False
    assert pf.delete("") is False
    assert pool_path.read_bytes() == R(b"a", b"1")
    assert os.stat(pool_path).st_mtime_ns == before.st_mtime_ns


def test_delete_only_record_leaves_empty_file(pf, pool_path):
    pf.set("a", "1")
    assert pf.delete("a") is True
    assert pool_path.read_bytes() == b""
    assert pf.enumerate(0) is None


def test_enumerate_indices(pf):
    pf.set("a", "1")
    pf.set("b", "2")
    assert pf.enumerate(0) == Record(b"a", b"1")
    assert pf.enumerate(1) == Record(b"b", b"2")
    for index in (2, 3, -1, 2**31, 2**32 - 1):
        assert pf.enumerate(index) is None


def test_set_value_none_keeps_existing_and_stores_empty_for_new(pf, pool_path):
    pf.set("a", "keep")
    mtime = os.stat(pool_path).st_mtime_ns
    assert pf.set("a", None) is False
    assert pool_path.read_bytes() == R(b"a", b"keep")
    assert os.stat(pool_path).st_mtime_ns == mtime
    assert pf.set("b", None) is True
    assert pool_path.read_bytes() == R(b"a", b"keep") + R(b"b", b"")
    assert pf.get("b") == b""


def test_set_rejects_oversize_without_touching_file(pf, pool_path):
    pf.set("a", "1")
    with pytest.raises(RecordTooLarge):
        pf.set("k" * 512, "v")
    with pytest.raises(RecordTooLarge):
        pf.set("k", "v" * 2048)
    assert pool_path.read_bytes() == R(b"a", b"1")


def test_max_sizes_round_trip(pf, pool_path):
    key, value = b"k" * 511, b"v" * 2047
    pf.set(key, value)
    assert pool_path.read_bytes() == key + b"\0" + value + b"\0"
    assert pf.get(key) == value


def test_clear_keeps_inode(pf, pool_path):
    pf.set("a", "1")
    pf.set("b", "2")
    ino = os.stat(pool_path).st_ino
    pf.clear()
    assert pool_path.read_bytes() == b""
    assert os.stat(pool_path).st_ino == ino
    assert pf.enumerate(0) is None
    pf.set("c", "3")
    assert pool_path.read_bytes() == R(b"c", b"3")


def test_read_only_pool_refuses_writes(pool_path):
    write(pool_path, R(b"a", b"1"))
    ro = PoolFile(str(pool_path), writable=False)
    assert ro.get("a") == b"1"
    with pytest.raises(PoolError, match="read-only"):
        ro.set("b", "2")
    with pytest.raises(PoolError, match="read-only"):
        ro.delete("a")
    ro.close()
    assert pool_path.read_bytes() == R(b"a", b"1")


def test_journal_retired_after_each_write(pf, pool_path):
    pf.set("a", "1")
    journal = Path(P.journal_path(str(pool_path)))
    assert journal.name == ".pykvpd-journal-kvp_pool_1"
    assert journal.exists() and journal.stat().st_size == 0
    assert stat.S_IMODE(journal.stat().st_mode) == 0o600


# --------------------------------------------------------------------------- crash recovery


def crash(pool_path: Path, before: int, after: int, writes, file_bytes: bytes) -> None:
    """Leave what a killed writer leaves: a complete journal and the file in some middle state."""
    Path(P.journal_path(str(pool_path))).write_bytes(J.encode_journal(before, after, writes))
    write(pool_path, file_bytes)


def test_crash_before_append_is_completed_by_next_read(pf, pool_path):
    base = R(b"a", b"1")
    crash(pool_path, RS, 2 * RS, [(RS, R(b"new", b"v"))], base)
    assert pf.get("new") == b"v"
    assert pool_path.read_bytes() == base + R(b"new", b"v")
    assert os.stat(P.journal_path(str(pool_path))).st_size == 0


def test_crash_mid_append_is_completed_by_next_set(pf, pool_path):
    base = R(b"a", b"1")
    new = R(b"new", b"value")
    crash(pool_path, RS, 2 * RS, [(RS, new)], base + new[:1000])  # torn record at the end
    ino = os.stat(pool_path).st_ino
    assert pf.set("b", "2") is True
    assert pool_path.read_bytes() == base + new + R(b"b", b"2")
    assert os.stat(pool_path).st_ino == ino


def test_crash_mid_delete_is_completed(pf, pool_path):
    a, b, c, d = (R(k, k * 2) for k in (b"a", b"b", b"c", b"d"))
    # delete "b": the tail c+d moves up one slot, then the file shrinks to 3 records.
    # killed after one record; the journal remembers what the shifted region held (b + c)
    crash(pool_path, 4 * RS, 3 * RS, [(RS, c + d, b + c)], a + c + c + d)
    assert [pf.enumerate(i).key for i in range(4) if pf.enumerate(i)] == [b"a", b"c", b"d"]
    assert pool_path.read_bytes() == a + c + d


def test_crash_after_apply_before_truncate_of_delete(pf, pool_path):
    a, b, c = (R(k, k) for k in (b"a", b"b", b"c"))
    crash(pool_path, 3 * RS, 2 * RS, [(0, b + c, a + b)], b + c + c)  # written, size not yet cut
    assert pf.delete("zzz") is False
    assert pool_path.read_bytes() == b + c


def test_crash_of_clear_is_completed(pf, pool_path):
    crash(pool_path, 2 * RS, 0, [], R(b"a", b"1") + R(b"b", b"2"))
    assert pf.enumerate(0) is None
    assert pool_path.read_bytes() == b""


def test_completed_change_replayed_again_is_harmless(pf, pool_path):
    """Killed after applying but before retiring the journal: replay must be idempotent."""
    done = R(b"a", b"new")
    crash(pool_path, RS, RS, [(0, done)], done)
    assert pf.get("a") == b"new"
    assert pool_path.read_bytes() == done


def test_torn_journal_is_discarded_and_file_unchanged(pf, pool_path, caplog):
    base = R(b"a", b"1")
    journal = bytearray(J.encode_journal(RS, 2 * RS, [(RS, R(b"x", b"y"))]))
    journal[-1] ^= 0xFF  # CRC mismatch
    Path(P.journal_path(str(pool_path))).write_bytes(bytes(journal))
    write(pool_path, base)
    with caplog.at_level(logging.WARNING, logger="pykvpd.store"):
        assert pf.get("x") is None
    assert pool_path.read_bytes() == base
    assert os.stat(P.journal_path(str(pool_path))).st_size == 0
    assert "torn journal" in caplog.text


@pytest.mark.parametrize("cut", [1, 10, 27, 100, 2000])
def test_truncated_journal_is_discarded(pf, pool_path, cut):
    base = R(b"a", b"1")
    journal = J.encode_journal(RS, 2 * RS, [(RS, R(b"x", b"y"))])
    Path(P.journal_path(str(pool_path))).write_bytes(journal[:cut])
    write(pool_path, base)
    assert pf.set("b", "2") is True
    assert pool_path.read_bytes() == base + R(b"b", b"2")


def test_journal_with_wrong_magic_is_discarded(pf, pool_path):
    base = R(b"a", b"1")
    journal = bytearray(J.encode_journal(RS, 2 * RS, [(RS, R(b"x", b"y"))]))
    journal[0:8] = b"NOTMAGIC"
    body = bytes(journal[:-4])
    import zlib

    journal[-4:] = zlib.crc32(body).to_bytes(4, "little")
    Path(P.journal_path(str(pool_path))).write_bytes(bytes(journal))
    write(pool_path, base)
    assert pf.get("x") is None
    assert pool_path.read_bytes() == base


def test_init_files_completes_interrupted_change(tmp_path: Path):
    path = tmp_path / ".kvp_pool_0"
    crash(path, 0, RS, [(0, R(b"k", b"v"))], b"")
    pools = PoolDir(str(tmp_path), create=True)
    pools.init_files()
    pools.close()
    assert path.read_bytes() == R(b"k", b"v")


def test_journal_round_trip():
    writes = [(0, b"abc", b"old"), (RS * 7, b"x" * 3000, b"")]
    assert J.decode_journal(J.encode_journal(5, 9, writes)) == (5, 9, writes)
    # a write given without its old bytes was beyond the end of the file
    assert J.decode_journal(J.encode_journal(5, 9, [(0, b"abc")])) == (5, 9, [(0, b"abc", b"")])
    assert J.decode_journal(b"") is None


def test_stale_journal_not_replayed_over_foreign_rewrite(pf, pool_path):
    """Killed between journal fsync and apply; cloud-init then truncates pool 1 at boot and
    appends two records of its own (under flock, honouring our lock but not our journal)."""
    Path(P.journal_path(str(pool_path))).write_bytes(
        J.encode_journal(RS, 2 * RS, [(RS, R(b"ours", b"stale"))])
    )
    foreign = R(b"ci-1", b"telemetry") + R(b"ci-2", b"telemetry")
    write(pool_path, foreign)  # size == the journal's size_after, by coincidence of counts
    pf.get("ci-2")
    assert pool_path.read_bytes()[: 2 * RS] == foreign
    assert pool_path.read_bytes() == foreign
    assert os.stat(P.journal_path(str(pool_path))).st_size == 0


def test_crash_mid_modify_is_completed(pf, pool_path):
    """A killed in-place modify: a prefix of the new record, then the rest of the old one."""
    old, new, other = R(b"k", b"o" * 2000), R(b"k", b"n" * 100), R(b"z", b"1")
    journal = J.encode_journal(2 * RS, 2 * RS, [(0, new, old)])
    Path(P.journal_path(str(pool_path))).write_bytes(journal)
    write(pool_path, new[:1024] + old[1024:] + other)
    assert pf.get("k") == b"n" * 100
    assert pool_path.read_bytes() == new + other


def test_journal_discarded_when_foreign_writer_changed_the_record(pf, pool_path, caplog):
    old, new = R(b"k", b"old"), R(b"k", b"ours")
    Path(P.journal_path(str(pool_path))).write_bytes(J.encode_journal(RS, RS, [(0, new, old)]))
    foreign = R(b"k", b"theirs")
    write(pool_path, foreign)
    with caplog.at_level(logging.WARNING, logger="pykvpd.store"):
        assert pf.get("k") == b"theirs"
    assert pool_path.read_bytes() == foreign
    assert "another writer changed the file" in caplog.text
    assert os.stat(P.journal_path(str(pool_path))).st_size == 0


def test_journal_records_old_bytes_of_each_write(pf, pool_path, monkeypatch):
    """What _commit journals: the new bytes and what they overwrite (for the replay check)."""
    write(pool_path, R(b"a", b"1") + R(b"b", b"2") + R(b"c", b"3"))
    seen = []
    real = J.encode_journal
    monkeypatch.setattr(J, "encode_journal", lambda *args: seen.append(args) or real(*args))
    pf.delete("a")
    moved = (0, R(b"c", b"3"), R(b"a", b"1"))  # the last record into the freed slot
    cut = (2 * RS, b"", R(b"c", b"3"))  # what the truncation removes, to recognise it later
    assert seen == [(3 * RS, 2 * RS, [moved, cut])]
    seen.clear()
    pf.set("n", "4")
    assert seen == [(2 * RS, 3 * RS, [(2 * RS, R(b"n", b"4"), b"")])]


def test_completed_delete_replay_keeps_later_foreign_append(pf, pool_path):
    a, b, c, x = R(b"a", b"1"), R(b"b", b"2"), R(b"c", b"3"), R(b"ci", b"foreign")
    # delete "b" from a+b+c: applied (file a+c), killed before the journal was retired
    Path(P.journal_path(str(pool_path))).write_bytes(
        J.encode_journal(3 * RS, 2 * RS, [(RS, c, b), (2 * RS, b"", c)])
    )
    write(pool_path, a + c + x)  # then cloud-init appended one record under flock
    assert pf.get("ci") == b"foreign"
    assert pool_path.read_bytes() == a + c + x


def test_completed_clear_replay_keeps_later_foreign_append(pf, pool_path):
    x = R(b"ci", b"foreign")
    journal = J.encode_journal(2 * RS, 0, [(0, b"", R(b"a", b"1") + R(b"b", b"2"))])
    Path(P.journal_path(str(pool_path))).write_bytes(journal)
    write(pool_path, x)  # size RS lies strictly between size_after 0 and size_before 2*RS
    assert pf.get("ci") == b"foreign"
    assert pool_path.read_bytes() == x


# --------------------------------------------------------------------------- freshness


def test_unwatched_sees_other_instance_writes(pool_path):
    a, b = PoolFile(str(pool_path)), PoolFile(str(pool_path))
    a.set("k", "1")
    assert b.get("k") == b"1"
    b.set("k", "2")
    assert a.get("k") == b"2"
    b.delete("k")
    assert a.get("k") is None and a.enumerate(0) is None
    a.close()
    b.close()


def _same_size_same_mtime_write(path: Path, data: bytes) -> None:
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_size == st.st_size and os.stat(path).st_mtime_ns == st.st_mtime_ns


def _replace_by_rename(path: Path, data: bytes) -> None:
    tmp = path.with_name("tmp-new")
    tmp.write_bytes(data)
    os.rename(tmp, path)


def _append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def _truncate(path: Path, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.truncate(len(data))


CHANGES = {
    "same_size_same_mtime": (
        _same_size_same_mtime_write,
        R(b"k", b"2") + R(b"j", b"1"),
        [(b"k", b"2"), (b"j", b"1")],
    ),
    "rename": (_replace_by_rename, R(b"z", b"9"), [(b"z", b"9")]),
    "truncate": (_truncate, R(b"k", b"1"), [(b"k", b"1")]),
    "append": (
        _append,
        R(b"n", b"3"),
        [(b"k", b"1"), (b"j", b"1"), (b"n", b"3")],
    ),
}


@pytest.mark.parametrize("watch", [False, True], ids=["unwatched", "watched"])
@pytest.mark.parametrize("change", list(CHANGES))
def test_external_change_seen_at_next_call(tmp_path: Path, watch, change):
    func, data, expected = CHANGES[change]
    path = tmp_path / ".kvp_pool_1"
    path.write_bytes(R(b"k", b"1") + R(b"j", b"1"))
    pools = PoolDir(str(tmp_path), watch=watch)
    try:
        pool = pools.pool(1)
        assert pool.get("k") == b"1"  # primes the cache
        assert pool.get("z") is None
        func(path, data)
        assert pairs(pool.valid_records()) == expected
        got = [pool.enumerate(i) for i in range(len(expected) + 1)]
        assert pairs(got[:-1]) == expected and got[-1] is None
        # and a write through the watched instance lands on the file at the path now
        pool.set("w", "5")
        assert path.read_bytes() == b"".join(R(k, v) for k, v in expected) + R(b"w", b"5")
    finally:
        pools.close()


def test_watched_pool_uses_its_cache_until_a_change(tmp_path: Path, monkeypatch):
    """The watch must actually be in effect (else the freshness tests above prove nothing)."""
    path = tmp_path / ".kvp_pool_1"
    path.write_bytes(R(b"k", b"1"))
    pools = PoolDir(str(tmp_path), watch=True)
    pool = pools.pool(1)
    assert pool.get("k") == b"1"
    reads: List[int] = []
    real = PoolFile._reload
    monkeypatch.setattr(PoolFile, "_reload", lambda self, fd: reads.append(fd) or real(self, fd))
    for _ in range(3):
        assert pool.get("k") == b"1"
        assert pool.enumerate(0) == Record(b"k", b"1")
    assert reads == []
    pool.set("k", "2")  # our own write does not invalidate the cache either
    assert pool.get("k") == b"2" and reads == []
    _same_size_same_mtime_write(path, R(b"k", b"3"))
    assert pool.get("k") == b"3"
    assert len(reads) == 1
    pools.close()


def test_watched_change_detected_even_if_stat_cannot_see_it(tmp_path: Path, monkeypatch):
    """Two same-size writes within one timestamp tick: only inotify can tell. Freeze the stat
    key so the test does not depend on the filesystem's timestamp granularity."""
    monkeypatch.setattr(PoolFile, "_stat_key", staticmethod(lambda fd: (1,)))
    path = tmp_path / ".kvp_pool_1"
    path.write_bytes(R(b"k", b"1"))
    other = PoolFile(str(path))
    pools = PoolDir(str(tmp_path), watch=True)
    pool = pools.pool(1)
    assert pool.get("k") == b"1"
    other.set("k", "2")
    assert pool.get("k") == b"2"
    with open(path, "r+b") as f:
        f.write(R(b"k", b"3"))
    assert pool.get("k") == b"3"
    other.close()
    pools.close()


def test_dirwatch_changed_and_mark_clean(tmp_path: Path):
    watch = P.DirWatch(str(tmp_path))
    try:
        assert watch.changed("f") is True  # never marked clean
        watch.mark_clean("f")
        assert watch.changed("f") is False
        (tmp_path / "g").write_bytes(b"x")
        assert watch.changed("f") is False
        (tmp_path / "f").write_bytes(b"x")
        assert watch.changed("f") is True
        watch.mark_clean("f")
        assert watch.changed("f") is False
        assert watch.changed("g") is True
    finally:
        watch.close()


# --------------------------------------------------------------------------- damaged files


def test_partial_trailing_record_served_and_padded_on_append(pf, pool_path, caplog):
    tail = b"half-a-key\0" + b"x" * 100
    write(pool_path, R(b"a", b"1") + tail)
    assert pf.get("a") == b"1"
    assert pf.get("half-a-key") is None
    assert pf.enumerate(0) == Record(b"a", b"1") and pf.enumerate(1) is None
    image = pf.image()
    assert image.trailing == tail
    with caplog.at_level(logging.WARNING, logger="pykvpd.store"):
        assert pf.set("b", "2") is True
    expected = R(b"a", b"1") + tail + bytes(RS - len(tail)) + R(b"b", b"2")
    assert pool_path.read_bytes() == expected
    assert os.stat(pool_path).st_size == 3 * RS
    assert "partial record of 111 bytes" in caplog.text
    assert pf.get("b") == b"2"


def test_undecodable_partial_record_is_saved_aside_not_padded(pf, pool_path, caplog):
    """100 bytes of 0xff padded would be a record no strict reader can decode: its bytes go to
    a file beside the pool (logged), and the new record takes its place."""
    tail = b"\xff" * 100
    write(pool_path, R(b"a", b"1") + tail)
    with caplog.at_level(logging.WARNING, logger="pykvpd.store"):
        assert pf.set("b", "2") is True
    assert pool_path.read_bytes() == R(b"a", b"1") + R(b"b", b"2")
    [saved] = [p for p in pool_path.parent.iterdir() if p.name.startswith(".pykvpd-partial-")]
    assert saved.name.startswith(".pykvpd-partial-kvp_pool_1-")
    assert saved.read_bytes() == tail
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert str(saved) in caplog.text and "100 bytes" in caplog.text
    assert pf.valid_records() == [Record(b"a", b"1"), Record(b"b", b"2")]


def test_partial_trailing_record_kept_by_delete(pf, pool_path):
    tail = b"partial"
    write(pool_path, R(b"a", b"1") + R(b"b", b"2") + tail)
    assert pf.delete("a") is True
    assert pool_path.read_bytes() == R(b"b", b"2") + tail


def test_partial_trailing_record_kept_by_modify(pf, pool_path):
    tail = b"partial"
    write(pool_path, R(b"a", b"1") + tail)
    pf.set("a", "2")
    assert pool_path.read_bytes() == R(b"a", b"2") + tail


def test_set_after_padding_partial_record_with_same_key(pf, pool_path):
    write(pool_path, R(b"a", b"1") + b"foo\0".ljust(512, b"\0") + b"old")
    assert pf.set("foo", "new") is False  # the partial record was its first occurrence
    assert pf.get("foo") == b"new"
    assert pool_path.read_bytes() == R(b"a", b"1") + R(b"foo", b"new")
    assert pairs([pf.enumerate(0), pf.enumerate(1)]) == [(b"a", b"1"), (b"foo", b"new")]
    assert pf.enumerate(2) is None


def test_key_without_nul_never_matched_nor_enumerated_nor_rewritten(pf, pool_path):
    bad = b"K" * 512 + R(b"", b"value")[512:]
    write(pool_path, R(b"a", b"1") + bad + R(b"b", b"2"))
    assert pf.get(b"K" * 512) is None
    assert pf.get(b"K" * 511) is None
    assert pairs([pf.enumerate(0), pf.enumerate(1)]) == [(b"a", b"1"), (b"b", b"2")]
    assert pf.enumerate(2) is None
    assert pf.set("c", "3") is True
    assert pf.set("b", "22") is False
    assert pool_path.read_bytes() == R(b"a", b"1") + bad + R(b"b", b"22") + R(b"c", b"3")
    assert pf.delete("a") is True  # the last record fills the slot; the damaged one stays
    assert pool_path.read_bytes() == R(b"c", b"3") + bad + R(b"b", b"22")
    assert pf.delete("b") is True
    assert pool_path.read_bytes() == R(b"c", b"3") + bad
    assert pf.delete("c") is True  # the damaged record moves, bytes unchanged
    assert pool_path.read_bytes() == bad


def test_invalid_utf8_and_unterminated_value_skipped_by_enumerate(pf, pool_path):
    bad_utf8 = R(b"bad\xff", b"v")
    bad_value = R(b"nv", b"")[:512] + b"v" * 2048
    write(pool_path, R(b"a", b"1") + bad_utf8 + bad_value + R(b"b", b"2"))
    assert pairs([pf.enumerate(0), pf.enumerate(1)]) == [(b"a", b"1"), (b"b", b"2")]
    assert pf.enumerate(2) is None
    assert len(pf.records()) == 4
    assert pairs(pf.valid_records()) == [(b"a", b"1"), (b"b", b"2")]
    assert [r.valid for r in pf.records()] == [True, False, False, True]


def test_damage_logged_once_per_file_state(pf, pool_path, caplog):
    write(pool_path, R(b"a", b"1") + b"tail")
    with caplog.at_level(logging.WARNING, logger="pykvpd.store"):
        pf.get("a")
        pf.get("a")
        pf.enumerate(0)
    assert caplog.text.count("is damaged") == 1
    assert "partial record of 4 bytes at offset 2560" in caplog.text


# --------------------------------------------------------------------------- read-only readers


def test_read_only_reader_sees_an_interrupted_change_completed(pool_path):
    """A reader that may not write (kvp as a user, kvp get) shows the pool as the journal will
    leave it, never the half-done change; the file itself is left for a writer to complete."""
    a, b, c, d = (R(k, k * 2) for k in (b"a", b"b", b"c", b"d"))
    # delete "b" from a+b+c+d was killed after shifting one record: the bare file has c twice
    crash(pool_path, 4 * RS, 3 * RS, [(RS, c + d, b + c), (3 * RS, b"", d)], a + c + c + d)
    reader = PoolFile(str(pool_path), writable=False)
    assert [r.key for r in reader.records()] == [b"a", b"c", b"d"]
    assert reader.get("b") is None and reader.get("d") == b"dd"
    assert pool_path.read_bytes() == a + c + c + d  # untouched: reading never writes
    reader.close()


def test_read_only_reader_ignores_a_stale_journal(pool_path):
    """A journal that does not fit the file (another writer changed it) is not applied."""
    x = R(b"ci", b"foreign")
    crash(pool_path, 2 * RS, 0, [(0, b"", R(b"a", b"1") + R(b"b", b"2"))], x)
    reader = PoolFile(str(pool_path), writable=False)
    assert [r.key for r in reader.records()] == [b"ci"]
    reader.close()


# --------------------------------------------------------------------------- start-up cost

# What ``kvp get``/``kvp set`` do with the store (cli/access.py), then a read of a damaged pool.
_ONE_SHOT = """
import sys
import pykvpd.store as s

directory = sys.argv[1]
pools = s.PoolDir(directory, create=True, writable=True)
pools.exists(1)
pool = pools.pool(1)
pool.ensure_exists()
pool.set(b"k", b"v")
print(pool.image())
pools.close()
reader = s.PoolDir(directory, writable=False)
reader.exists(1)
print(reader.pool(1).image().records)
reader.close()
print(sorted(m for m in sys.argv[2].split() if m in sys.modules))
with open(directory + "/.kvp_pool_2", "wb") as f:
    f.write(b"k" * s.RECORD_SIZE)  # a key without its NUL
damaged = s.PoolDir(directory, writable=False)
print(len(damaged.pool(2).image().records), "logging" in sys.modules)
damaged.close()
"""
_HEAVY = (
    "typing logging contextlib functools collections re enum signal threading weakref json "
    "argparse traceback string locale gettext dataclasses inspect"
)


def test_one_get_or_set_imports_no_heavy_stdlib_module(tmp_path: Path):
    """A get or set through the store imports none of the modules that made ``kvp get`` three
    times ``python3 -c pass`` (benchmarks/bench_cli.py); a damaged pool's warning still reaches
    stderr, through logging imported only then (its last-resort handler).

    ``-S``: the .pth hooks of site-packages (an editable install's finder) import some of those
    modules before any program runs; the store is imported from the source tree instead.
    """
    done = subprocess.run(
        [sys.executable, "-S", "-c", _ONE_SHOT, str(tmp_path), _HEAVY],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    assert done.stdout.splitlines() == [
        "PoolImage(records=(Record(key=b'k', value=b'v', problem=None),), trailing=b'')",
        "(Record(key=b'k', value=b'v', problem=None),)",
        "[]",
        "1 True",
    ]
    assert (
        f"{tmp_path}/.kvp_pool_2 is damaged, serving the valid records: record 0: key has no NUL"
        in done.stderr
    )
