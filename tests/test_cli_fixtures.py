"""kvp dump / fsck / fsck --repair / list --events over every file in fixtures/pools/."""

from __future__ import annotations

import glob
import json
import os
import shutil
from pathlib import Path

import pytest
from test_cli_helpers import ROOT, kvp, read_pool, rec, records_of

FIXTURES = os.path.join(ROOT, "fixtures", "pools")

# File -> (number of whole records, finding kinds in file order).
EXPECTED = {
    "clean.kvp": (2, []),
    "empty.kvp": (0, []),
    "cloud-init-22.4.2.kvp": (6, []),
    "ignition-split-pool0.kvp": (4, []),
    "stale-tails.kvp": (3, ["stale-tail", "stale-tail"]),
    "partial-trailing.kvp": (2, ["partial-record"]),
    "key-without-nul.kvp": (3, ["key-no-nul"]),
    "value-without-nul.kvp": (2, ["value-no-nul"]),
    "invalid-utf8.kvp": (3, ["invalid-utf8", "invalid-utf8"]),
    "duplicates.kvp": (7, ["duplicate", "duplicate-conflict", "case-duplicate"]),
    "zero-record.kvp": (3, ["empty-record"]),
    "misaligned.kvp": (3, ["empty-record"]),
}

# File -> (key, value) of every record after --repair, in order.
REPAIRED = {
    "stale-tails.kvp": [(b"Foo", b"B"), (b"Key", b"x"), (b"Clean", b"yes")],
    "partial-trailing.kvp": [(b"First", b"1"), (b"Second", b"2")],
    "key-without-nul.kvp": [(b"Before", b"ok"), (b"After", b"ok")],
    "value-without-nul.kvp": [(b"Before", b"ok")],
    "invalid-utf8.kvp": [(b"Good", "café".encode())],
    "duplicates.kvp": [
        (b"Same", b"v"),
        (b"Other", b"o"),
        (b"Conflict", b"first"),
        (b"Conflict", b"second"),
        (b"CaseKey", b"upper"),
        (b"casekey", b"lower"),
    ],
    "zero-record.kvp": [(b"A", b"1"), (b"B", b"2")],
    "misaligned.kvp": [(b"A", b"1"), (b"B", b"2")],
}


def test_every_fixture_is_covered():
    names = {os.path.basename(p) for p in glob.glob(os.path.join(FIXTURES, "*.kvp"))}
    assert names == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_dump_reports_what_a_careful_reader_would(name):
    path = os.path.join(FIXTURES, name)
    code, out, _err = kvp("dump", path, "--json")
    assert code == 0
    doc = json.loads(out)
    count, kinds = EXPECTED[name]
    assert doc["size"] == os.path.getsize(path)
    assert len(doc["records"]) == count
    assert [f["kind"] for f in doc["findings"]] == kinds
    assert kvp("dump", path)[0] == 0  # the human form works too


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fsck_exit_status_and_kinds(name, tmp_path):
    pools = tmp_path / "p"
    pools.mkdir()
    shutil.copy(os.path.join(FIXTURES, name), pools / ".kvp_pool_1")
    code, out, _err = kvp("--dir", str(pools), "fsck", "--pool", "guest", "--json")
    doc = json.loads(out)
    kinds = EXPECTED[name][1]
    assert code == (1 if kinds else 0)
    assert doc["clean"] is (not kinds)
    assert [f["kind"] for f in doc["files"][0]["findings"]] == kinds
    assert (pools / ".kvp_pool_1").read_bytes() == Path(FIXTURES, name).read_bytes()


@pytest.mark.parametrize("name", sorted(REPAIRED))
def test_repair_keeps_every_valid_record_and_saves_the_original(name, tmp_path):
    pools = tmp_path / "p"
    pools.mkdir()
    original = Path(FIXTURES, name).read_bytes()
    shutil.copy(os.path.join(FIXTURES, name), pools / ".kvp_pool_1")
    inode = os.stat(pools / ".kvp_pool_1").st_ino
    code, out, _err = kvp("--dir", str(pools), "fsck", "--repair", "--pool", "1", "--json")
    doc = json.loads(out)["files"][0]
    repaired = read_pool(str(pools), 1)
    assert records_of(repaired) == REPAIRED[name]
    assert repaired == b"".join(rec(k, v) for k, v in REPAIRED[name])  # zero-filled
    assert os.stat(pools / ".kvp_pool_1").st_ino == inode  # same file: others' locks hold
    backup = doc["backup"]
    assert backup and os.path.basename(backup).startswith(".pykvpd-fsck-kvp_pool_1-")
    assert Path(backup).read_bytes() == original
    remaining = [f["kind"] for f in doc["findings"] if not f["repairable"]]
    assert code == (1 if remaining else 0)
    # A second run finds only what repair leaves on purpose, and changes nothing.
    code2, out2, _ = kvp("--dir", str(pools), "fsck", "--repair", "--pool", "1", "--json")
    assert [f["kind"] for f in json.loads(out2)["files"][0]["findings"]] == remaining
    assert json.loads(out2)["files"][0]["backup"] is None
    assert read_pool(str(pools), 1) == repaired


def test_fsck_of_clean_dir_and_human_output(tmp_path):
    pools = tmp_path / "p"
    pools.mkdir()
    shutil.copy(os.path.join(FIXTURES, "duplicates.kvp"), pools / ".kvp_pool_0")
    code, out, _ = kvp("--dir", str(pools), "fsck")
    text = out.decode()
    assert code == 1
    assert ".kvp_pool_1: missing" in text
    assert (
        "record 2: duplicate: exact duplicate of record 0 ('Same')  [--repair fixes this]" in text
    )
    assert "record 6: case-duplicate:" in text and "[report only]" in text


def test_list_events_reassembles_cloud_init_fixture(tmp_path):
    pools = tmp_path / "p"
    pools.mkdir()
    shutil.copy(os.path.join(FIXTURES, "cloud-init-22.4.2.kvp"), pools / ".kvp_pool_1")
    code, out, _ = kvp("--dir", str(pools), "list", "--events", "--json")
    assert code == 0
    events = json.loads(out)["events"]
    assert [(e["fields"]["event_type"], e["fields"]["name"]) for e in events] == [
        ("start", "init-local"),
        ("finish", "init-local/long"),
        ("diagnostic", "azure-ds/long"),
    ]
    long_event = events[2]
    assert long_event["msg"] == "L" * 3000
    assert long_event["parts"] == 4 and long_event["complete"] is True
    assert long_event["source"] == "cloud-init" and long_event["pool_name"] == "guest"
    assert events[1]["fields"]["result"] == "SUCCESS"
    human = kvp("--dir", str(pools), "list", "--events")[1].decode().splitlines()
    assert len(human) == 3 and "[4 parts]" in human[2]


def test_get_join_on_ignition_fixture(tmp_path):
    pools = tmp_path / "p"
    pools.mkdir()
    shutil.copy(os.path.join(FIXTURES, "ignition-split-pool0.kvp"), pools / ".kvp_pool_0")
    code, out, _ = kvp("--dir", str(pools), "get", "ignition.config", "--join", "--raw")
    assert code == 0
    doc = json.loads(out)
    assert doc["ignition"]["version"] == "3.4.0" and len(doc["storage"]["files"]) == 151
