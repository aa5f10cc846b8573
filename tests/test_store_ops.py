"""store: chunk splitting and joining, split-event reassembly, fsck findings, batch writes."""

from __future__ import annotations

import json
import os

import pytest
from test_cli_helpers import rec

from pykvpd import store as ev
from pykvpd.store import PoolFile, Record

# --------------------------------------------------------------------------- chunks


def test_split_value_never_cuts_a_character():
    value = ("a€" * 500).encode()  # 1-byte and 3-byte characters
    for size in (4, 5, 6, 990, 1022):
        chunks = ev.split_value(value, size)
        assert b"".join(chunks) == value
        assert all(len(c) <= size for c in chunks)
        for c in chunks:
            c.decode("utf-8")  # each chunk is valid UTF-8 on its own


def test_split_value_exact_sizes_and_empty():
    assert ev.split_value(b"abcdefghij", 4) == [b"abcd", b"efgh", b"ij"]
    assert ev.split_value(b"", 10) == [b""]
    with pytest.raises(ValueError):
        ev.split_value(b"x", 3)


def test_join_chunks_follows_ignition():
    values = {"cfg.0": b"a", "cfg.1": b"b", "cfg.3": b"d"}
    assert ev.join_chunks(values, "cfg") == (b"ab", 2)
    assert ev.join_chunks({**values, "cfg": b"whole"}, "cfg") == (b"whole", 0)
    assert ev.join_chunks({**values, "cfg": b""}, "cfg") == (b"ab", 2)  # empty single: chunks
    assert ev.join_chunks({"cfg": b""}, "cfg") == (b"", 0)
    assert ev.join_chunks({}, "cfg") is None
    assert ev.chunk_index("cfg.12", "cfg") == 12
    assert ev.chunk_index("cfg.x", "cfg") is None
    assert ev.chunk_index("cfgx.1", "cfg") is None


# --------------------------------------------------------------------------- split events

UUID = "0b8f3c2e-1d2a-4b5c-8d9e-0f1a2b3c4d5e"
VMID = "12345678-90ab-cdef-1234-567890abcdef"


def _ci(key: str, body: dict) -> Record:
    return Record(key.encode(), json.dumps(body, separators=(",", ":")).encode())


def test_reassemble_cloud_init_parts_out_of_order_and_both_key_formats():
    base_old = f"CLOUD_INIT|1700000000|diagnostic|azure-ds/x|{UUID}"
    base_new = f"CLOUD_INIT|1700000000|finish|init/y|{VMID}|{UUID}"
    head = {"name": "azure-ds/x", "type": "diagnostic", "ts": "t"}
    records = [
        (1, 0, _ci(base_old + "|1", {**head, "msg_i": 1, "msg": "world"})),
        (1, 1, Record(b"Unrelated", b"x")),
        (1, 2, _ci(base_old + "|0", {**head, "msg_i": 0, "msg": "hello "})),
        (1, 3, _ci(base_new, {"name": "init/y", "type": "finish", "result": "FAIL", "msg": "m"})),
    ]
    found = ev.reassemble_events(records)
    assert [e.key for e in found] == [base_old, base_new]
    old, new = found
    assert old.msg == "hello world" and old.parts == [0, 1] and old.complete
    assert old.fields["vm_id"] is None and old.fields["name"] == "azure-ds/x"
    assert old.fields["incarnation"] == 1700000000 and old.fields["uuid"] == UUID
    assert new.fields["vm_id"] == VMID and new.fields["result"] == "FAIL" and new.parts == [0]


def test_missing_middle_part_is_incomplete():
    base = f"CLOUD_INIT|1|diagnostic|n|{UUID}"
    records = [
        (1, i, _ci(f"{base}|{i}", {"name": "n", "type": "diagnostic", "msg_i": i, "msg": str(i)}))
        for i in (0, 2)
    ]
    (event,) = ev.reassemble_events(records)
    assert event.msg == "02" and event.parts == [0, 2] and not event.complete


def test_azure_init_repeated_keys_concatenate():
    key = b"azure-init-1.0|vm|INFO|provision|span1"
    records = [(1, 0, Record(key, b"Time: a ")), (1, 1, Record(key, b"| Event: b"))]
    (event,) = ev.reassemble_events(records)
    assert event.source == "azure-init" and event.msg == "Time: a | Event: b"
    assert event.fields["level"] == "INFO" and event.fields["name"] == "provision"


def test_boot_time_from_proc(tmp_path):
    (tmp_path / "stat").write_text("cpu 1 2 3\nbtime 1700000123\n")
    assert ev.boot_time(str(tmp_path)) == 1700000123.0
    (tmp_path / "stat").write_text("cpu 1 2 3\n")
    (tmp_path / "uptime").write_text("100.00 50.00\n")
    now_minus = ev.boot_time(str(tmp_path))
    assert now_minus is not None and now_minus > 1700000000
    assert ev.boot_time(str(tmp_path / "none")) is None


# --------------------------------------------------------------------------- fsck


def test_findings_and_repair_on_bytes():
    stale = rec(b"Foo", b"Bar")
    stale = stale[:512] + b"B\0" + stale[514:]
    data = rec(b"A", b"1") + stale + rec(b"A", b"1") + rec(b"a", b"2") + b"\x01" * 7
    kinds = [(f.kind, f.index) for f in ev.fsck_findings(data)]
    assert kinds == [
        ("stale-tail", 1),
        ("duplicate", 2),
        ("case-duplicate", 3),
        ("partial-record", None),
    ]
    fixed, repaired = ev.repair_image(data)
    assert fixed == rec(b"A", b"1") + rec(b"Foo", b"B") + rec(b"a", b"2")
    assert {f.kind for f in repaired} == {"stale-tail", "duplicate", "partial-record"}


def test_empty_key_with_value_is_reported_not_removed():
    data = rec(b"", b"orphan value")
    assert [f.kind for f in ev.fsck_findings(data)] == ["empty-key"]
    assert ev.repair_image(data)[0] == data


# --------------------------------------------------------------------------- batch writes


def test_transact_rewrites_only_from_first_difference_and_keeps_inode(tmp_path):
    path = str(tmp_path / ".kvp_pool_1")
    original = rec(b"A", b"1") + rec(b"B", b"2") + rec(b"C", b"3")
    with open(path, "wb") as f:
        f.write(original)
    inode = os.stat(path).st_ino
    pool = PoolFile(path)
    seen = []

    def edit(data: bytes, st: os.stat_result) -> bytes:
        seen.append((data, st.st_size))
        return data[:2560] + rec(b"C", b"3")

    assert pool.transaction(edit) is True
    assert seen == [(original, len(original))]
    with open(path, "rb") as f:
        assert f.read() == rec(b"A", b"1") + rec(b"C", b"3")
    assert os.stat(path).st_ino == inode
    assert pool.get("C") == b"3" and pool.get("B") is None  # the pool's cache was refreshed
    assert pool.transaction(lambda d, s: None) is False
    assert not os.path.getsize(str(tmp_path / ".pykvpd-journal-kvp_pool_1"))  # journal retired
    pool.close()


def test_write_chunks_pads_a_partial_tail_before_appending(tmp_path):
    path = tmp_path / ".kvp_pool_1"
    path.write_bytes(rec(b"A", b"1") + b"xyz")
    pool = PoolFile(str(path))
    assert ev.write_chunks(pool, "B", b"2", 100) == 1
    pool.close()
    data = path.read_bytes()
    assert data == rec(b"A", b"1") + b"xyz".ljust(2560, b"\0") + rec(b"B.0", b"2")
