"""hostwrites: the daemon's log of same-value host SETs, as watchers read it."""

from __future__ import annotations

import os

import pytest

from pykvpd import protocol as p
from pykvpd.handler import Handler
from pykvpd.hostwrites import LOG_NAME, SLOT_SIZE, SLOTS, HostWrite, HostWriteLog, read_log
from pykvpd.simulator.host import HostRequest
from pykvpd.simulator.messages import to_daemon
from pykvpd.store import PoolDir


def test_entries_round_trip_and_continue_after_a_restart(tmp_path):
    log = HostWriteLog(str(tmp_path))
    log.record(0, b"PatchNow")
    log.record(3, "Schlüssel".encode())
    log.close()
    assert read_log(str(tmp_path)) == [
        HostWrite(1, 0, b"PatchNow"),
        HostWrite(2, 3, "Schlüssel".encode()),
    ]
    again = HostWriteLog(str(tmp_path))
    again.record(0, b"k" * 511)
    again.close()
    assert read_log(str(tmp_path))[-1] == HostWrite(3, 0, b"k" * 511)
    assert os.path.getsize(tmp_path / LOG_NAME) <= SLOTS * SLOT_SIZE


def test_the_ring_keeps_the_newest_slots(tmp_path):
    log = HostWriteLog(str(tmp_path))
    for i in range(SLOTS + 5):
        log.record(0, f"k{i}".encode())
    log.close()
    entries = read_log(str(tmp_path))
    assert [e.seq for e in entries] == list(range(6, SLOTS + 6))
    assert entries[-1].key == f"k{SLOTS + 4}".encode()


def test_a_half_written_slot_is_skipped(tmp_path):
    log = HostWriteLog(str(tmp_path))
    log.record(0, b"A")
    log.record(0, b"B")
    log.close()
    path = tmp_path / LOG_NAME
    data = bytearray(path.read_bytes())
    data[2 * SLOT_SIZE] = 9  # slot 2's leading seq no longer matches its trailing copy
    path.write_bytes(bytes(data))
    assert read_log(str(tmp_path)) == [HostWrite(1, 0, b"A")]


def test_no_log_reads_as_empty_and_a_symlink_or_fifo_is_refused(tmp_path, caplog):
    assert read_log(str(tmp_path)) == []
    target = tmp_path / "elsewhere"
    target.write_bytes(b"precious")
    os.symlink(target, tmp_path / LOG_NAME)
    log = HostWriteLog(str(tmp_path))
    log.record(0, b"A")  # disabled, never raises, never writes through the link
    log.close()
    assert target.read_bytes() == b"precious"
    assert read_log(str(tmp_path)) == []
    assert "watchers will not see a host re-writing a same value" in caplog.text
    os.unlink(tmp_path / LOG_NAME)
    os.mkfifo(tmp_path / LOG_NAME)
    assert read_log(str(tmp_path)) == []  # not opened for reading a FIFO (would block)
    HostWriteLog(str(tmp_path)).record(0, b"A")
    assert "not a regular file" in caplog.text


@pytest.mark.parametrize("pool", [0, 4])
def test_a_daemon_handler_logs_only_sets_that_leave_the_value(tmp_path, pool):
    pools = PoolDir(str(tmp_path), create=True)
    log = HostWriteLog(str(tmp_path))
    handler = Handler(pools, intrinsic=None, host_writes=log)  # type: ignore[arg-type]

    def host_set(key: str, value: str) -> None:
        outcome = handler.handle(to_daemon(HostRequest(p.OP_SET, pool, key, value)))
        assert outcome.status == p.HV_S_OK

    host_set("PatchNow", "1")  # added: the watcher's comparison sees it
    host_set("PatchNow", "2")  # changed: likewise
    assert read_log(str(tmp_path)) == []
    host_set("PatchNow", "2")  # the same value: only the log tells
    host_set("PatchNow", "2")
    assert read_log(str(tmp_path)) == [
        HostWrite(1, pool, b"PatchNow"),
        HostWrite(2, pool, b"PatchNow"),
    ]
    log.close()
    pools.close()


def test_the_log_is_created_at_the_first_write_with_the_pool_mode(tmp_path):
    old = os.umask(0o077)
    try:
        log = HostWriteLog(str(tmp_path), mode=0o640)
        assert not (tmp_path / LOG_NAME).exists()  # nothing until a same-value write
        log.record(0, b"A")
        log.close()
    finally:
        os.umask(old)
    assert (tmp_path / LOG_NAME).stat().st_mode & 0o777 == 0o640
    assert read_log(str(tmp_path)) == [HostWrite(1, 0, b"A")]
