"""End to end: the real daemon process (``python3 -m pykvpd -n``) against the fake kernel.

No root needed: the daemon gets ``--device SOCKET --pool-dir DIR`` (tests/cdaemon.py). The
assertions are on the raw replies the kernel receives and on the exact bytes of the pool files.
"""

from __future__ import annotations

import os
import signal
import struct
import time

import pytest
from cdaemon import KvpPeer

from pykvpd import protocol as p
from pykvpd.simulator.kernel import DaemonGone, FakeKernel
from pykvpd.store import RECORD_SIZE, encode_record

ALL_POOLS = range(p.POOL_COUNT)


@pytest.fixture
def peer(tmp_path):
    with KvpPeer.py(str(tmp_path)) as daemon:
        yield daemon


def kset(pool: int, key: bytes, value: bytes) -> bytes:
    return p.build_key_message(p.OP_SET, pool, key, value)


def with_u32(msg: bytes, offset: int, value: int) -> bytes:
    buf = bytearray(msg)
    struct.pack_into("<I", buf, offset, value)
    return bytes(buf)


# --------------------------------------------------------------------------- handshake


def test_handshake_and_identity(tmp_path):
    with KvpPeer.py(str(tmp_path), kernel_version="9.8") as daemon:
        kernel = daemon.kernel
        assert kernel.registrations == 1 and kernel.version_seen == p.OP_REGISTER1
        with open(f"/proc/{daemon.proc.pid}/comm") as fh:
            assert fh.read().strip() == "hv_kvp_daemon"  # LISA and waagent look it up by name
        # IntegrationServicesVersion comes from the kernel's registration reply.
        assert daemon.enumerate(p.POOL_AUTO, 1) == (
            p.HV_S_OK,
            b"IntegrationServicesVersion",
            b"9.8",
        )
        for pool in ALL_POOLS:
            assert os.stat(daemon.pool_path(pool)).st_mode & 0o777 == 0o644
            assert daemon.pool_bytes(pool) == b""


def test_existing_pool_files_untouched_at_start(tmp_path):
    daemon = KvpPeer.py(str(tmp_path))
    os.makedirs(daemon.pool_dir)
    path = daemon.pool_path(1)
    with open(path, "wb") as fh:
        fh.write(encode_record(b"from", b"last boot"))
    os.chmod(path, 0o600)
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    with daemon:
        assert daemon.enumerate(1, 0) == (p.HV_S_OK, b"from", b"last boot")
        st = os.stat(path)
        assert st.st_mode & 0o777 == 0o600 and st.st_mtime_ns == 1_000_000_000


# --------------------------------------------------------------------------- operations


@pytest.mark.parametrize("pool", [0, 1, 3, 4])
def test_every_operation_on_a_file_pool(peer, pool):
    assert peer.get(pool, b"a") == (p.HV_S_CONT, b"")
    assert peer.delete(pool, b"a") == p.HV_S_CONT
    assert peer.enumerate(pool, 0)[0] == p.HV_S_CONT
    assert peer.set(pool, b"a", b"first") == p.HV_S_OK
    assert peer.set(pool, b"b", b"second") == p.HV_S_OK
    assert peer.set(pool, b"a", b"1st") == p.HV_S_OK
    assert peer.pool_bytes(pool) == encode_record(b"a", b"1st") + encode_record(b"b", b"second")
    assert peer.get(pool, b"a") == (p.HV_S_OK, b"1st")
    assert peer.enumerate(pool, 1) == (p.HV_S_OK, b"b", b"second")
    assert peer.enumerate(pool, 2)[0] == p.HV_S_CONT
    assert peer.delete(pool, b"a") == p.HV_S_OK
    assert peer.pool_bytes(pool) == encode_record(b"b", b"second")
    assert peer.enumerate(pool, 0) == (p.HV_S_OK, b"b", b"second")
    for other in ALL_POOLS:
        if other != pool:
            assert peer.pool_bytes(other) == b""


def test_auto_pool(peer):
    items = peer.enumerate_all(p.POOL_AUTO)
    assert [k for k, _ in items] == [
        b"FullyQualifiedDomainName",
        b"IntegrationServicesVersion",
        b"NetworkAddressIPv4",
        b"NetworkAddressIPv6",
        b"OSBuildNumber",
        b"OSName",
        b"OSMajorVersion",
        b"OSMinorVersion",
        b"OSVersion",
        b"ProcessorArchitecture",
    ]
    values = dict(items)
    assert values[b"ProcessorArchitecture"] == os.uname().machine.encode()
    assert values[b"OSBuildNumber"] == os.uname().release.encode()
    assert values[b"OSVersion"] == os.uname().release.split("-")[0].encode()
    assert peer.enumerate(p.POOL_AUTO, 10)[0] == p.HV_S_CONT
    # SET on pool 2 is stored in its file but never enumerated.
    assert peer.set(p.POOL_AUTO, b"k", b"v") == p.HV_S_OK
    assert peer.pool_bytes(p.POOL_AUTO) == encode_record(b"k", b"v")
    assert peer.get(p.POOL_AUTO, b"k") == (p.HV_S_OK, b"v")
    assert [k for k, _ in peer.enumerate_all(p.POOL_AUTO)] == [k for k, _ in items]


def test_ip_operations_answer_cleanly(peer):
    info = p.IpInfo(adapter_id="00:15:5D:00:00:99")
    reply = peer.transact(p.build_ip_message(p.OP_GET_IP_INFO, info))
    assert p.reply_status(reply) in (p.HV_E_FAIL, p.HV_S_OK)  # no such MAC here: HV_E_FAIL
    assert peer.enumerate(0, 0)[0] == p.HV_S_CONT  # still serving


# --------------------------------------------------------------------------- malformed input

MALFORMED = {
    "pool 5": kset(5, b"k", b"v"),
    "pool 255": p.build_enumerate_message(255, 0),
    "unknown op 6": bytes([6]) + bytes(p.MSG_SIZE - 1),
    "unknown op 255": bytes([255, 0]) + bytes(p.MSG_SIZE - 2),
    "REGISTER1 after the handshake": bytes([p.OP_REGISTER1]) + bytes(p.MSG_SIZE - 1),
    "key_size 0": with_u32(kset(0, b"k", b"v"), p.OFF_SET_KEY_SIZE, 0),
    "key_size 513": with_u32(kset(0, b"k", b"v"), p.OFF_SET_KEY_SIZE, 513),
    "key without NUL": with_u32(kset(0, b"key", b"v"), p.OFF_SET_KEY_SIZE, 2),
    "value_size 2049": with_u32(kset(0, b"k", b"v"), p.OFF_SET_VALUE_SIZE, 2049),
    "value without NUL": with_u32(kset(0, b"k", b"value"), p.OFF_SET_VALUE_SIZE, 2),
    "delete key_size 4G": with_u32(
        p.build_key_message(p.OP_DELETE, 0, b"k"), p.OFF_DEL_KEY_SIZE, 0xFFFFFFFF
    ),
    "all 0xff": b"\xff" * p.MSG_SIZE,
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_message_gets_an_error_and_serving_goes_on(peer, name):
    assert peer.set(0, b"kept", b"yes") == p.HV_S_OK
    before = peer.pool_bytes(0)
    reply = peer.transact(MALFORMED[name])
    assert p.reply_status(reply) == p.HV_E_FAIL, name
    assert peer.pool_bytes(0) == before
    assert peer.get(0, b"kept") == (p.HV_S_OK, b"yes")
    assert peer.alive() and peer.kernel.registrations == 1


def test_enumerate_index_beyond_2_31_is_end_of_list(peer):
    peer.set(0, b"k", b"v")
    for index in (2**31 - 1, 2**31, 2**32 - 1):
        assert peer.enumerate(0, index)[0] == p.HV_S_CONT
    assert peer.alive()


@pytest.mark.parametrize("length", [0, 2, 7431])
def test_short_message_makes_the_daemon_reopen(peer, length):
    with pytest.raises(DaemonGone):
        peer.transact_raw(p.build_enumerate_message(0, 0)[:length])
    peer.wait_registered(2)
    assert peer.set(1, b"after", b"reopen") == p.HV_S_OK
    assert peer.kernel.registrations == 2 and peer.alive()


def test_oversize_message_is_cut_and_processed(peer):
    reply = peer.transact_raw(kset(0, b"big", b"message").ljust(8000, b"\x01"))
    assert p.reply_status(reply) == p.HV_S_OK
    assert peer.pool_bytes(0) == encode_record(b"big", b"message")
    assert peer.kernel.registrations == 1


def test_kernel_drops_the_connection(peer):
    for round_ in range(1, 4):
        peer.drop_connection()
        peer.wait_registered(round_ + 1)
        assert peer.set(0, f"k{round_}".encode(), b"v") == p.HV_S_OK
    assert peer.records(0) == [(b"k1", b"v"), (b"k2", b"v"), (b"k3", b"v")]
    assert peer.alive()


def test_kernel_gone_for_a_while(peer):
    """The device disappears (module unloaded) and comes back: the daemon re-registers."""
    peer.kernel.close()
    time.sleep(0.3)  # the daemon retries with backoff meanwhile
    assert peer.alive()
    peer.kernel = FakeKernel(peer.socket_path, timeout=peer.timeout).start()
    assert peer.kernel.wait_registered(15)
    assert peer.set(0, b"back", b"again") == p.HV_S_OK


def test_sigterm_exits_0(peer):
    peer.set(0, b"k", b"v")
    assert peer.kill(signal.SIGTERM) == 0
    assert peer.pool_bytes(0) == encode_record(b"k", b"v")


# --------------------------------------------------------------------------- other writers


def test_same_size_rewrite_within_one_timestamp_tick(peer):
    """Another writer replaces a record with one of the same size and restores the mtime."""
    path = peer.pool_path(0)
    peer.set(0, b"k", b"AAAA")
    for round_ in range(30):
        stamp = os.stat(path).st_mtime_ns
        value = b"%04d" % round_
        with open(path, "r+b") as fh:
            fh.write(encode_record(b"k", value))
        os.utime(path, ns=(stamp, stamp))
        assert os.stat(path).st_size == RECORD_SIZE
        assert peer.get(0, b"k") == (p.HV_S_OK, value)
        assert peer.enumerate(0, 0) == (p.HV_S_OK, b"k", value)


def test_rapid_alternating_writes_are_always_seen(peer):
    path = peer.pool_path(1)
    peer.set(1, b"x", b"0")
    for round_ in range(200):
        value = b"%d" % (round_ % 10)
        with open(path, "r+b") as fh:
            fh.write(encode_record(b"x", value))
        assert peer.enumerate(1, 0) == (p.HV_S_OK, b"x", value)


def test_file_replaced_by_rename(peer):
    peer.set(3, b"old", b"1")
    path = peer.pool_path(3)
    tmp = path + ".new"
    with open(tmp, "wb") as fh:
        fh.write(encode_record(b"new", b"2") + encode_record(b"newer", b"3"))
    os.rename(tmp, path)
    assert peer.enumerate_all(3) == [(b"new", b"2"), (b"newer", b"3")]
    assert peer.set(3, b"newest", b"4") == p.HV_S_OK
    assert peer.records(3) == [(b"new", b"2"), (b"newer", b"3"), (b"newest", b"4")]


def test_file_truncated(peer):
    for i in range(3):
        peer.set(4, b"k%d" % i, b"v")
    os.truncate(peer.pool_path(4), 0)
    assert peer.enumerate(4, 0)[0] == p.HV_S_CONT
    assert peer.get(4, b"k0")[0] == p.HV_S_CONT
    assert peer.set(4, b"fresh", b"start") == p.HV_S_OK
    assert peer.pool_bytes(4) == encode_record(b"fresh", b"start")


def test_file_truncated_mid_record(peer):
    for i in range(3):
        peer.set(4, b"k%d" % i, b"v")
    os.truncate(peer.pool_path(4), RECORD_SIZE + 100)
    assert peer.enumerate_all(4) == [(b"k0", b"v")]
    assert peer.get(4, b"k1")[0] == p.HV_S_CONT
    assert peer.set(4, b"k9", b"v") == p.HV_S_OK
    records = peer.pool_image(4).records
    assert [r.key for r in records][0] == b"k0" and records[-1].key == b"k9"
    assert not peer.pool_image(4).trailing


def test_appended_by_another_writer(peer):
    import fcntl

    peer.set(1, b"daemon", b"1")
    with open(peer.pool_path(1), "ab") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # cloud-init's convention
        fh.write(encode_record(b"cloud-init", b"event"))
        fcntl.flock(fh, fcntl.LOCK_UN)
    assert peer.enumerate_all(1) == [(b"daemon", b"1"), (b"cloud-init", b"event")]
    assert peer.set(1, b"daemon", b"2") == p.HV_S_OK
    assert peer.records(1) == [(b"daemon", b"2"), (b"cloud-init", b"event")]


def test_pool_file_deleted(peer):
    peer.set(0, b"k", b"v")
    os.unlink(peer.pool_path(0))
    assert peer.enumerate(0, 0)[0] == p.HV_S_CONT
    assert peer.set(0, b"after", b"delete") == p.HV_S_OK
    assert peer.records(0) == [(b"after", b"delete")]
    assert peer.alive()


def test_in_namespace_with_the_default_pool_dir(tmp_path):
    """Ours run exactly as the C daemon is in the differential test (needs root)."""
    from cdaemon import unshare_missing

    reason = unshare_missing()
    if reason:
        pytest.skip(reason)
    with KvpPeer.py(str(tmp_path), namespace=True) as daemon:
        assert daemon.set(0, b"ns", b"ok") == p.HV_S_OK
        assert daemon.pool_bytes(0) == encode_record(b"ns", b"ok")
