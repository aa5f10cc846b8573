"""handler: the reply to every request, checked at the byte level, with real pool files."""

from __future__ import annotations

import os
import random
import struct
from pathlib import Path
from typing import List, Optional, Tuple

import pytest

from pykvpd import protocol as p
from pykvpd.handler import Handler, Outcome
from pykvpd.protocol import HV_E_FAIL, HV_S_CONT, HV_S_OK, MSG_SIZE, IpInfo
from pykvpd.store import PoolDir

RS = 2560
FILE_POOLS = [0, 1, 3, 4]


def R(key: bytes, value: bytes) -> bytes:
    return key + bytes(512 - len(key)) + value + bytes(2048 - len(value))


def status(reply: bytes) -> int:
    return struct.unpack_from("<I", reply, 0)[0]


class StubIntrinsic:
    def __init__(self, items: List[Tuple[str, str]]) -> None:
        self.items = items
        self.calls: List[int] = []

    def item(self, index: int) -> Optional[tuple]:
        self.calls.append(index)
        return self.items[index] if 0 <= index < len(self.items) else None


class StubNetConfig:
    def __init__(self, get_result: tuple = (HV_S_OK, None), set_result: int = HV_S_OK) -> None:
        self.get_result = get_result
        self.set_result = set_result
        self.requests: List[tuple] = []

    def get_ip_info(self, request: IpInfo) -> tuple:
        self.requests.append(("get", request))
        return self.get_result

    def set_ip_info(self, request: IpInfo) -> int:
        self.requests.append(("set", request))
        return self.set_result


AUTO = [("FullyQualifiedDomainName", "vm.example.test"), ("IntegrationServicesVersion", "3.1")]


@pytest.fixture
def pool_dir(tmp_path: Path):
    pools = PoolDir(str(tmp_path), create=True)
    pools.init_files()
    yield pools
    pools.close()


@pytest.fixture
def handler(pool_dir):
    return Handler(pool_dir, StubIntrinsic(AUTO))


def pool_bytes(pool_dir: PoolDir, number: int) -> bytes:
    return Path(pool_dir.path(number)).read_bytes()


def assert_status_only(reply: bytes, request: bytes, expected: int) -> None:
    """A status reply: 7432 bytes, the status at 0, the request echoed after it."""
    assert len(reply) == MSG_SIZE
    assert status(reply) == expected
    assert reply[4:] == request[4:].ljust(MSG_SIZE - 4, b"\0")[: MSG_SIZE - 4]


# --------------------------------------------------------------------------- SET / GET / DELETE


@pytest.mark.parametrize("pool", FILE_POOLS + [2])
def test_set_stores_record_and_replies_ok(handler, pool_dir, pool):
    msg = p.build_key_message(p.OP_SET, pool, b"HostName", b"host-01")
    out = handler.handle(msg)
    assert_status_only(out.reply, msg, HV_S_OK)
    assert out.reply[:4] == b"\0\0\0\0"
    assert out == Outcome(out.reply, "SET", HV_S_OK, pool, "HostName", "host-01")
    assert pool_bytes(pool_dir, pool) == R(b"HostName", b"host-01")
    for other in set(range(5)) - {pool}:
        assert pool_bytes(pool_dir, other) == b""


@pytest.mark.parametrize("pool", FILE_POOLS)
def test_set_modify_and_order(handler, pool_dir, pool):
    for key, value in ((b"a", b"1"), (b"b", b"2"), (b"a", b"x")):
        assert status(handler.handle(p.build_key_message(p.OP_SET, pool, key, value)).reply) == 0
    assert pool_bytes(pool_dir, pool) == R(b"a", b"x") + R(b"b", b"2")


@pytest.mark.parametrize("pool", FILE_POOLS + [2])
def test_get_existing_value_at_532(handler, pool_dir, pool):
    Path(pool_dir.path(pool)).write_bytes(R(b"other", b"o") + R(b"Key", b"the value"))
    msg = p.build_key_message(p.OP_GET, pool, b"Key")
    out = handler.handle(msg)
    reply = out.reply
    assert len(reply) == MSG_SIZE and status(reply) == HV_S_OK
    assert reply[532:542] == b"the value\0"
    assert reply[542 : 532 + 2048] == bytes(2048 - 10)
    assert reply[528:532] == bytes(4)
    assert reply[4:16] == msg[4:16]  # value_type/key_size/value_size echoed
    assert (out.op, out.pool, out.key, out.value, out.error) == (
        "GET",
        pool,
        "Key",
        "the value",
        None,
    )
    assert pool_bytes(pool_dir, pool) == R(b"other", b"o") + R(b"Key", b"the value")


@pytest.mark.parametrize("pool", FILE_POOLS)
def test_get_is_exact_and_case_sensitive(handler, pool_dir, pool):
    Path(pool_dir.path(pool)).write_bytes(R(b"Keyx", b"1") + R(b"key", b"2"))
    for key in (b"Key", b"Ke", b"KEY"):
        msg = p.build_key_message(p.OP_GET, pool, key)
        out = handler.handle(msg)
        assert_status_only(out.reply, msg, HV_S_CONT)
        assert out.value is None and out.error is None


@pytest.mark.parametrize("pool", FILE_POOLS)
def test_delete_found_and_not_found(handler, pool_dir, pool):
    Path(pool_dir.path(pool)).write_bytes(R(b"a", b"1") + R(b"b", b"2") + R(b"c", b"3"))
    msg = p.build_key_message(p.OP_DELETE, pool, b"b")
    out = handler.handle(msg)
    assert_status_only(out.reply, msg, HV_S_OK)
    assert (out.op, out.pool, out.key) == ("DELETE", pool, "b")
    assert pool_bytes(pool_dir, pool) == R(b"a", b"1") + R(b"c", b"3")
    out = handler.handle(msg)
    assert_status_only(out.reply, msg, HV_S_CONT)
    assert pool_bytes(pool_dir, pool) == R(b"a", b"1") + R(b"c", b"3")


def test_set_with_value_size_zero(handler, pool_dir):
    """An unrenderable value type: a new key gets an empty value, an existing one keeps its."""
    Path(pool_dir.path(0)).write_bytes(R(b"old", b"keep"))
    for key in (b"old", b"new"):
        msg = bytearray(p.build_key_message(p.OP_SET, 0, key, b"ignored"))
        struct.pack_into("<I", msg, 12, 0)
        out = handler.handle(bytes(msg))
        assert status(out.reply) == HV_S_OK and out.value is None
    assert pool_bytes(pool_dir, 0) == R(b"old", b"keep") + R(b"new", b"")


# --------------------------------------------------------------------------- ENUMERATE


@pytest.mark.parametrize("pool", FILE_POOLS)
def test_enumerate_file_pools(handler, pool_dir, pool):
    Path(pool_dir.path(pool)).write_bytes(R(b"a", b"1") + R("ключ".encode(), "знач".encode()))
    expected = [(b"a", b"1"), ("ключ".encode(), "знач".encode())]
    for index, (key, value) in enumerate(expected):
        msg = p.build_enumerate_message(pool, index)
        out = handler.handle(msg)
        reply = out.reply
        assert len(reply) == MSG_SIZE and status(reply) == HV_S_OK
        assert reply[20 : 20 + len(key) + 1] == key + b"\0"
        assert reply[20 + len(key) : 532] == bytes(512 - len(key))
        assert reply[532 : 532 + len(value) + 1] == value + b"\0"
        assert reply[532 + len(value) : 532 + 2048] == bytes(2048 - len(value))
        assert (out.key, out.value) == (key.decode(), value.decode())
    for index in (2, 3, 2**31, 2**32 - 1):
        msg = p.build_enumerate_message(pool, index)
        out = handler.handle(msg)
        assert_status_only(out.reply, msg, HV_S_CONT)
        assert out.error is None


def test_enumerate_skips_damaged_records(handler, pool_dir):
    Path(pool_dir.path(1)).write_bytes(
        R(b"a", b"1") + R(b"bad\xff", b"x") + b"K" * 512 + bytes(2048) + R(b"b", b"2") + b"tail"
    )
    keys = []
    for index in range(5):
        out = handler.handle(p.build_enumerate_message(1, index))
        if out.status != HV_S_OK:
            break
        keys.append(p.reply_key_value(out.reply))
    assert keys == [(b"a", b"1"), (b"b", b"2")]


def test_enumerate_auto_pool_uses_intrinsic_not_file(pool_dir):
    intrinsic = StubIntrinsic(AUTO + [("OSName", "Debian GNU/Linux ✓")])
    handler = Handler(pool_dir, intrinsic)
    Path(pool_dir.path(2)).write_bytes(R(b"from-file", b"never shown"))
    replies = [handler.handle(p.build_enumerate_message(2, i)) for i in range(4)]
    assert intrinsic.calls == [0, 1, 2, 3]
    assert [p.reply_key_value(o.reply) for o in replies[:3]] == [
        (b"FullyQualifiedDomainName", b"vm.example.test"),
        (b"IntegrationServicesVersion", b"3.1"),
        (b"OSName", "Debian GNU/Linux ✓".encode()),
    ]
    first = replies[0].reply
    assert status(first) == HV_S_OK
    assert first[20 : 20 + 25] == b"FullyQualifiedDomainName\0"
    assert first[532 : 532 + 16] == b"vm.example.test\0"
    assert first[532 + 16 : 532 + 2048] == bytes(2048 - 16)
    assert (replies[2].key, replies[2].value, replies[2].pool) == (
        "OSName",
        "Debian GNU/Linux ✓",
        2,
    )
    assert_status_only(replies[3].reply, p.build_enumerate_message(2, 3), HV_S_CONT)


def test_enumerate_auto_pool_huge_index_passed_unsigned(pool_dir):
    intrinsic = StubIntrinsic(AUTO)
    handler = Handler(pool_dir, intrinsic)
    out = handler.handle(p.build_enumerate_message(2, 2**31))
    assert intrinsic.calls == [2**31]
    assert status(out.reply) == HV_S_CONT


# --------------------------------------------------------------------------- malformed


def _variants() -> List[Tuple[str, bytes]]:
    set_msg = p.build_key_message(p.OP_SET, 1, b"k", b"v")

    def patched(offset: int, value: int, base: bytes = set_msg) -> bytes:
        buf = bytearray(base)
        struct.pack_into("<I", buf, offset, value)
        return bytes(buf)

    def op(value: int) -> bytes:
        buf = bytearray(set_msg)
        buf[0] = value
        return bytes(buf)

    def pool(value: int) -> bytes:
        buf = bytearray(set_msg)
        buf[1] = value
        return bytes(buf)

    return [
        ("empty", b""),
        ("one byte", b"\x01"),
        ("short", set_msg[:7431]),
        ("long", set_msg + bytes(568)),
        ("op 6", op(6)),
        ("op 7", op(7)),
        ("op 9", op(9)),
        ("op 100", op(100)),
        ("op 255", op(255)),
        ("pool 5", pool(5)),
        ("pool 8", pool(8)),
        ("pool 255", pool(255)),
        ("key_size 0", patched(8, 0)),
        ("key_size 513", patched(8, 513)),
        ("key without NUL", patched(8, 1)),
        ("value_size 2049", patched(12, 2049)),
        ("value without NUL", patched(12, 1)),
        ("delete key_size 0", patched(4, 0, p.build_key_message(p.OP_DELETE, 1, b"k"))),
        ("enum pool 5", p.build_enumerate_message(5, 0)),
    ]


@pytest.mark.parametrize("name,msg", _variants(), ids=[n for n, _ in _variants()])
def test_malformed_requests_fail_without_touching_pools(handler, pool_dir, name, msg):
    Path(pool_dir.path(1)).write_bytes(R(b"k", b"old"))
    out = handler.handle(msg)
    assert len(out.reply) == MSG_SIZE
    assert status(out.reply) == HV_E_FAIL and out.status == HV_E_FAIL
    assert out.reply[:4] == b"\x05\x40\x00\x80"
    assert out.error  # says why
    kept = min(len(msg), MSG_SIZE)
    assert out.reply[4:kept] == msg[4:kept]
    assert pool_bytes(pool_dir, 1) == R(b"k", b"old")
    for other in (0, 2, 3, 4):
        assert pool_bytes(pool_dir, other) == b""


def test_malformed_outcome_names_op_and_pool(handler):
    msg = bytearray(p.build_key_message(p.OP_SET, 200, b"k", b"v"))
    out = handler.handle(bytes(msg))
    assert (out.op, out.pool) == ("SET", 200)
    assert "pool 200 out of range" in out.error
    msg[0] = 9
    out = handler.handle(bytes(msg))
    assert out.op == "op 9" and "unknown operation 9" in out.error
    out = handler.handle(b"")
    assert out.pool is None and out.status == HV_E_FAIL


# --------------------------------------------------------------------------- pool failures


def test_pool_error_is_cont(tmp_path: Path):
    """A missing pool file (PoolError) answers HV_S_CONT, as the C daemon does for pool ops."""
    handler = Handler(PoolDir(str(tmp_path)), StubIntrinsic(AUTO))
    for msg in (
        p.build_key_message(p.OP_SET, 1, b"k", b"v"),
        p.build_key_message(p.OP_GET, 1, b"k"),
        p.build_key_message(p.OP_DELETE, 1, b"k"),
        p.build_enumerate_message(1, 0),
    ):
        out = handler.handle(msg)
        assert_status_only(out.reply, msg, HV_S_CONT)
        assert out.status == HV_S_CONT
        assert "no such pool file" in out.error
        assert out.pool == 1
    assert os.listdir(tmp_path) == []


def test_lock_timeout_is_cont(tmp_path: Path):
    pools = PoolDir(str(tmp_path), create=True, lock_timeout=0.1)
    pools.init_files()
    Path(pools.path(0)).write_bytes(R(b"k", b"v"))
    other = PoolDir(str(tmp_path))
    handler = Handler(pools, StubIntrinsic(AUTO))
    try:
        with other.pool(0)._locked(exclusive=True):
            for msg in (
                p.build_key_message(p.OP_SET, 0, b"k", b"new"),
                p.build_key_message(p.OP_GET, 0, b"k"),
                p.build_enumerate_message(0, 0),
            ):
                out = handler.handle(msg)
                assert status(out.reply) == HV_S_CONT
                assert "still locked" in out.error
        assert pool_bytes(pools, 0) == R(b"k", b"v")
        assert status(handler.handle(p.build_key_message(p.OP_GET, 0, b"k")).reply) == HV_S_OK
    finally:
        other.close()
        pools.close()


# --------------------------------------------------------------------------- IP operations

GUID = "{12345678-9abc-def0-1234-56789abcdef0}"


@pytest.mark.parametrize("op", [p.OP_GET_IP_INFO, p.OP_SET_IP_INFO])
def test_ip_ops_without_netconfig_fail(handler, op):
    msg = p.build_ip_message(op, IpInfo(GUID, 1, 0, "10.0.0.5", "255.0.0.0", "", ""))
    out = handler.handle(msg)
    assert_status_only(out.reply, msg, HV_E_FAIL)
    assert out.status == HV_E_FAIL and out.error
    assert out.key == GUID


def test_get_ip_info_reply_fields(pool_dir):
    info = IpInfo(
        "00:15:5D:01:02:03",
        3,
        1,
        "10.0.0.5;2001:db8::5",
        "255.255.255.0;/64",
        "10.0.0.1;",
        "1.1.1.1;",
    )
    net = StubNetConfig(get_result=(HV_S_OK, info))
    handler = Handler(pool_dir, StubIntrinsic(AUTO), net)
    msg = p.build_ip_message(p.OP_GET_IP_INFO, IpInfo("00:15:5D:01:02:03", 3))
    out = handler.handle(msg)
    assert net.requests == [("get", IpInfo("00:15:5D:01:02:03", 3))]
    reply = out.reply
    assert len(reply) == MSG_SIZE and status(reply) == HV_S_OK
    assert reply[260] == 3 and reply[261] == 1
    assert reply[262 : 262 + 21] == b"10.0.0.5;2001:db8::5\0"
    assert reply[2310 : 2310 + 18] == b"255.255.255.0;/64\0"
    assert reply[4358 : 4358 + 10] == b"10.0.0.1;\0"
    assert reply[5382 : 5382 + 9] == b"1.1.1.1;\0"
    assert p.reply_ip_info(reply) == info


@pytest.mark.parametrize("result", [(HV_E_FAIL, None), (p.HV_GUID_NOTFOUND, None), (HV_S_OK, None)])
def test_get_ip_info_failure_is_status_only(pool_dir, result):
    handler = Handler(pool_dir, StubIntrinsic(AUTO), StubNetConfig(get_result=result))
    msg = p.build_ip_message(p.OP_GET_IP_INFO, IpInfo("00:15:5D:01:02:03", 1))
    out = handler.handle(msg)
    assert_status_only(out.reply, msg, result[0])


@pytest.mark.parametrize("result", [HV_S_OK, HV_E_FAIL, p.HV_GUID_NOTFOUND, p.HV_INVALIDARG])
def test_set_ip_info_status_forwarded(pool_dir, result):
    net = StubNetConfig(set_result=result)
    handler = Handler(pool_dir, StubIntrinsic(AUTO), net)
    info = IpInfo(GUID, 1, 0, "10.0.0.5", "255.255.255.0", "10.0.0.1", "10.0.0.2")
    msg = p.build_ip_message(p.OP_SET_IP_INFO, info)
    out = handler.handle(msg)
    assert net.requests == [("set", info)]
    assert_status_only(out.reply, msg, result)
    assert (out.op, out.status, out.key) == ("SET_IP_INFO", result, GUID)


def test_malformed_ip_request_not_passed_to_netconfig(pool_dir):
    net = StubNetConfig()
    handler = Handler(pool_dir, StubIntrinsic(AUTO), net)
    msg = bytearray(p.build_ip_message(p.OP_SET_IP_INFO, IpInfo(GUID, 1)))
    msg[4 : 4 + 256] = b"x" * 256  # adapter_id without NUL
    out = handler.handle(bytes(msg))
    assert status(out.reply) == HV_E_FAIL and out.error
    assert net.requests == []


# --------------------------------------------------------------------------- robustness


def test_random_requests_never_raise(pool_dir):
    """Whatever the bytes, a 7432-byte reply with a known status (and the pools stay decodable)."""
    rng = random.Random(20240611)
    handler = Handler(pool_dir, StubIntrinsic(AUTO), StubNetConfig(set_result=HV_E_FAIL))
    known = {HV_S_OK, HV_S_CONT, HV_E_FAIL}
    seen = set()
    for _ in range(400):
        msg = bytearray(rng.randbytes(MSG_SIZE))
        msg[0] = rng.choice([0, 1, 2, 3, 4, 5, 6, 100, 255])
        msg[1] = rng.choice([0, 1, 2, 3, 4, 5, 255])
        if rng.random() < 0.7:  # plausible sizes with NULs inside, so that some get through
            key_at, size_at = (8, 4) if msg[0] == p.OP_DELETE else (16, 8)
            key_size = rng.randrange(1, 40)
            value_size = rng.choice([0, rng.randrange(1, 60)])
            struct.pack_into("<I", msg, size_at, key_size)
            msg[key_at + rng.randrange(key_size)] = 0
            if msg[0] != p.OP_DELETE:
                struct.pack_into("<I", msg, 12, value_size)
                msg[528 + rng.randrange(max(value_size, 1))] = 0
        out = handler.handle(bytes(msg))
        assert len(out.reply) == MSG_SIZE
        assert out.status in known and status(out.reply) == out.status
        seen.add(out.status)
    assert seen == known  # the mix reached the pools, not only the malformed path
    sizes = [len(pool_bytes(pool_dir, number)) for number in range(5)]
    assert all(size % RS == 0 for size in sizes) and sum(sizes) > 0
