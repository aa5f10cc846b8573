"""protocol: the wire codec, checked byte by byte against the offsets of spec §2.1."""

from __future__ import annotations

import struct

import pytest

from pykvpd import protocol as p
from pykvpd.protocol import (
    HV_E_FAIL,
    HV_S_CONT,
    HV_S_OK,
    MSG_SIZE,
    EnumerateRequest,
    IpInfo,
    IpRequest,
    KeyRequest,
    MalformedMessage,
)


def u32(buf: bytes, offset: int) -> int:
    return struct.unpack_from("<I", buf, offset)[0]


def put_u32(buf: bytearray, offset: int, value: int) -> None:
    struct.pack_into("<I", buf, offset, value)


# --------------------------------------------------------------------------- layout constants


def test_layout_matches_spec_table():
    """The absolute offsets of spec §2.1 (a drift here would silently break the host's view)."""
    assert MSG_SIZE == 7432
    assert (p.OFF_OPERATION, p.OFF_POOL, p.OFF_STATUS) == (0, 1, 0)
    assert (p.OFF_SET_VALUE_TYPE, p.OFF_SET_KEY_SIZE, p.OFF_SET_VALUE_SIZE) == (4, 8, 12)
    assert (p.OFF_SET_KEY, p.OFF_SET_VALUE) == (16, 528)
    assert (p.OFF_ENUM_INDEX, p.OFF_ENUM_VALUE_TYPE) == (4, 8)
    assert (p.OFF_ENUM_KEY_SIZE, p.OFF_ENUM_VALUE_SIZE) == (12, 16)
    assert (p.OFF_ENUM_KEY, p.OFF_ENUM_VALUE) == (20, 532)
    assert (p.OFF_DEL_KEY_SIZE, p.OFF_DEL_KEY) == (4, 8)
    assert (p.OFF_IP_ADAPTER_ID, p.OFF_IP_ADDR_FAMILY, p.OFF_IP_DHCP_ENABLED) == (4, 260, 261)
    assert (p.OFF_IP_ADDR, p.OFF_IP_SUBNET, p.OFF_IP_GATEWAY, p.OFF_IP_DNS) == (
        262,
        2310,
        4358,
        5382,
    )
    assert p.OFF_IP_DNS + p.IP_DNS_SIZE == 7430
    assert (HV_S_OK, HV_E_FAIL, HV_S_CONT) == (0, 0x80004005, 0x80070103)
    assert (p.HV_INVALIDARG, p.HV_GUID_NOTFOUND) == (0x80070057, 0x80041002)
    assert (p.OP_GET, p.OP_SET, p.OP_DELETE, p.OP_ENUMERATE) == (0, 1, 2, 3)
    assert (p.OP_GET_IP_INFO, p.OP_SET_IP_INFO, p.OP_REGISTER1) == (4, 5, 100)


# --------------------------------------------------------------------------- builders


def test_build_set_message_bytes():
    msg = p.build_key_message(p.OP_SET, 3, b"HostName", b"host-01")
    assert len(msg) == MSG_SIZE
    assert msg[0] == p.OP_SET and msg[1] == 3 and msg[2:4] == b"\0\0"
    assert u32(msg, 4) == 0  # value_type: consumed by the kernel
    assert u32(msg, 8) == len(b"HostName") + 1
    assert u32(msg, 12) == len(b"host-01") + 1
    assert msg[16 : 16 + 9] == b"HostName\0"
    assert msg[528 : 528 + 8] == b"host-01\0"
    assert msg[16 + 8 : 528] == bytes(528 - 24)
    assert msg[528 + 7 :] == bytes(MSG_SIZE - 535)


def test_build_delete_message_uses_offsets_4_and_8():
    msg = p.build_key_message(p.OP_DELETE, 0, b"k1")
    assert u32(msg, 4) == 3
    assert msg[8:11] == b"k1\0"
    assert msg[11:] == bytes(MSG_SIZE - 11)
    assert msg[16:20] == b"\0\0\0\0"


def test_build_get_message_has_no_value():
    msg = p.build_key_message(p.OP_GET, 1, b"key")
    assert u32(msg, 8) == 4 and u32(msg, 12) == 0
    assert msg[16:20] == b"key\0"
    assert msg[528:] == bytes(MSG_SIZE - 528)


def test_build_enumerate_message_only_index():
    msg = p.build_enumerate_message(4, 0xDEADBEEF)
    assert msg[:2] == bytes([p.OP_ENUMERATE, 4])
    assert u32(msg, 4) == 0xDEADBEEF
    assert msg[8:] == bytes(MSG_SIZE - 8)


# --------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("pool", [0, 1, 2, 3, 4])
def test_decode_each_key_op(pool):
    assert p.decode_request(p.build_key_message(p.OP_GET, pool, b"Name")) == KeyRequest(
        p.OP_GET, pool, b"Name", None
    )
    assert p.decode_request(p.build_key_message(p.OP_SET, pool, b"Name", b"v")) == KeyRequest(
        p.OP_SET, pool, b"Name", b"v"
    )
    assert p.decode_request(p.build_key_message(p.OP_DELETE, pool, b"Name")) == KeyRequest(
        p.OP_DELETE, pool, b"Name", None
    )
    assert p.decode_request(p.build_enumerate_message(pool, 7)) == EnumerateRequest(pool, 7)


def test_decode_max_sizes():
    key, value = b"k" * 511, b"v" * 2047
    req = p.decode_request(p.build_key_message(p.OP_SET, 1, key, value))
    assert req == KeyRequest(p.OP_SET, 1, key, value)
    req = p.decode_request(p.build_key_message(p.OP_DELETE, 1, key))
    assert req == KeyRequest(p.OP_DELETE, 1, key)


def test_decode_utf8_key_and_value_kept_as_bytes():
    key, value = "Schlüssel".encode(), "värde ✓".encode()
    req = p.decode_request(p.build_key_message(p.OP_SET, 0, key, value))
    assert req.key == key and req.value == value


def test_decode_empty_key_and_value():
    """key_size 1 / value_size 1: the kernel's encoding of empty strings."""
    req = p.decode_request(p.build_key_message(p.OP_SET, 0, b"", b""))
    assert req == KeyRequest(p.OP_SET, 0, b"", b"")


def test_decode_set_value_size_zero_is_none():
    msg = bytearray(p.build_key_message(p.OP_SET, 1, b"k", b"garbage"))
    put_u32(msg, 12, 0)
    assert p.decode_request(bytes(msg)) == KeyRequest(p.OP_SET, 1, b"k", None)


def test_decode_key_cut_at_first_nul_inside_key_size():
    msg = bytearray(p.build_key_message(p.OP_GET, 0, b"abc"))
    put_u32(msg, 8, 10)
    msg[20:26] = b"defgh\0"  # after the NUL at 19: irrelevant
    assert p.decode_request(bytes(msg)).key == b"abc"


@pytest.mark.parametrize("index", [0, 1, 2**31 - 1, 2**31, 2**32 - 1])
def test_decode_enumerate_index_unsigned(index):
    req = p.decode_request(p.build_enumerate_message(1, index))
    assert req == EnumerateRequest(1, index)
    assert req.index >= 0


@pytest.mark.parametrize("length", [0, 1, 2, 4, 7431, 7433, 8000])
def test_decode_wrong_length(length):
    msg = p.build_key_message(p.OP_GET, 0, b"k").ljust(max(length, 0), b"\0")[:length]
    with pytest.raises(MalformedMessage, match=f"{length} bytes"):
        p.decode_request(msg)


@pytest.mark.parametrize("op", [6, 7, 9, 99, 100, 255])
def test_decode_unknown_operation(op):
    msg = bytearray(p.build_key_message(p.OP_GET, 0, b"k"))
    msg[0] = op
    with pytest.raises(MalformedMessage, match=f"unknown operation {op}"):
        p.decode_request(bytes(msg))


@pytest.mark.parametrize("pool", [5, 6, 8, 127, 255])
@pytest.mark.parametrize("op", [p.OP_GET, p.OP_SET, p.OP_DELETE, p.OP_ENUMERATE])
def test_decode_pool_out_of_range(op, pool):
    if op == p.OP_ENUMERATE:
        msg = p.build_enumerate_message(pool, 0)
    else:
        msg = p.build_key_message(op, pool, b"k", b"v")
    with pytest.raises(MalformedMessage, match=f"pool {pool} out of range"):
        p.decode_request(msg)


@pytest.mark.parametrize("op", [p.OP_GET, p.OP_SET])
@pytest.mark.parametrize("size", [0, 513, 4096, 2**32 - 1])
def test_decode_bad_key_size(op, size):
    msg = bytearray(p.build_key_message(op, 1, b"k", b"v"))
    put_u32(msg, 8, size)
    with pytest.raises(MalformedMessage, match="key_size"):
        p.decode_request(bytes(msg))


@pytest.mark.parametrize("size", [0, 513, 2**32 - 1])
def test_decode_bad_delete_key_size(size):
    msg = bytearray(p.build_key_message(p.OP_DELETE, 1, b"k"))
    put_u32(msg, 4, size)
    with pytest.raises(MalformedMessage, match="key_size"):
        p.decode_request(bytes(msg))


@pytest.mark.parametrize("op", [p.OP_GET, p.OP_SET])
def test_decode_key_without_nul_within_key_size(op):
    """key_size 3 for "abc": the C daemon would prefix-match; we reject."""
    msg = bytearray(p.build_key_message(op, 1, b"abc", b"v"))
    put_u32(msg, 8, 3)
    with pytest.raises(MalformedMessage, match="key.*not NUL-terminated"):
        p.decode_request(bytes(msg))


def test_decode_key_filling_whole_field_without_nul():
    msg = bytearray(p.build_key_message(p.OP_GET, 1, b"k"))
    msg[16:528] = b"x" * 512
    put_u32(msg, 8, 512)
    with pytest.raises(MalformedMessage, match="not NUL-terminated"):
        p.decode_request(bytes(msg))


def test_decode_delete_key_without_nul():
    msg = bytearray(p.build_key_message(p.OP_DELETE, 1, b"abc"))
    put_u32(msg, 4, 3)
    with pytest.raises(MalformedMessage, match="not NUL-terminated"):
        p.decode_request(bytes(msg))


@pytest.mark.parametrize("size", [2049, 7000, 2**32 - 1])
def test_decode_value_size_too_large(size):
    msg = bytearray(p.build_key_message(p.OP_SET, 1, b"k", b"v"))
    put_u32(msg, 12, size)
    with pytest.raises(MalformedMessage, match="value_size"):
        p.decode_request(bytes(msg))


def test_decode_value_without_nul():
    msg = bytearray(p.build_key_message(p.OP_SET, 1, b"k", b"value"))
    put_u32(msg, 12, 5)
    with pytest.raises(MalformedMessage, match="value.*not NUL-terminated"):
        p.decode_request(bytes(msg))


def test_decode_value_filling_whole_field_without_nul():
    msg = bytearray(p.build_key_message(p.OP_SET, 1, b"k", b"v"))
    msg[528 : 528 + 2048] = b"y" * 2048
    put_u32(msg, 12, 2048)
    with pytest.raises(MalformedMessage, match="not NUL-terminated"):
        p.decode_request(bytes(msg))


def test_decode_get_ignores_value_size():
    """GET: the kernel sends value_size 0; a stray value_size must not make it malformed."""
    msg = bytearray(p.build_key_message(p.OP_GET, 1, b"k"))
    put_u32(msg, 12, 99999)
    assert p.decode_request(bytes(msg)) == KeyRequest(p.OP_GET, 1, b"k")


# --------------------------------------------------------------------------- IP requests

INFO = IpInfo(
    adapter_id="{12345678-9abc-def0-1234-56789abcdef0}",
    addr_family=p.ADDR_FAMILY_IPV4 | p.ADDR_FAMILY_IPV6,
    dhcp_enabled=0,
    ip_addr="10.0.0.5;2001:db8::5",
    sub_net="255.255.255.0;64",
    gate_way="10.0.0.1",
    dns_addr="10.0.0.2",
)


def test_build_and_decode_set_ip_info():
    msg = p.build_ip_message(p.OP_SET_IP_INFO, INFO)
    assert len(msg) == MSG_SIZE
    assert msg[4 : 4 + len(INFO.adapter_id) + 1] == INFO.adapter_id.encode() + b"\0"
    assert msg[260] == 3 and msg[261] == 0
    assert msg[262 : 262 + len(INFO.ip_addr) + 1] == INFO.ip_addr.encode() + b"\0"
    assert msg[2310 : 2310 + len(INFO.sub_net)] == INFO.sub_net.encode()
    assert msg[4358 : 4358 + len(INFO.gate_way)] == INFO.gate_way.encode()
    assert msg[5382 : 5382 + len(INFO.dns_addr)] == INFO.dns_addr.encode()
    assert p.decode_request(msg) == IpRequest(p.OP_SET_IP_INFO, INFO)


def test_build_and_decode_get_ip_info_only_adapter():
    full = IpInfo("00:15:5D:01:02:03", 1, 1, "10.0.0.5", "255.0.0.0", "10.0.0.1", "10.0.0.2")
    msg = p.build_ip_message(p.OP_GET_IP_INFO, full)
    assert msg[261:] == bytes(MSG_SIZE - 261)  # GET carries only adapter_id and addr_family
    query = IpInfo(adapter_id="00:15:5D:01:02:03", addr_family=p.ADDR_FAMILY_IPV4)
    assert p.decode_request(msg) == IpRequest(p.OP_GET_IP_INFO, query)


@pytest.mark.parametrize("pool", [0, 1, 5, 255])
def test_ip_ops_ignore_pool(pool):
    """Spec §2.3: the daemon ignores the pool for IP operations."""
    msg = p.build_ip_message(p.OP_SET_IP_INFO, INFO, pool=pool)
    assert msg[1] == pool
    assert p.decode_request(msg).info == INFO


@pytest.mark.parametrize(
    "offset,size,name",
    [
        (4, 256, "adapter_id"),
        (262, 2048, "ip_addr"),
        (4358, 1024, "gate_way"),
        (5382, 2048, "dns_addr"),
    ],
)
def test_ip_field_without_nul_is_malformed(offset, size, name):
    msg = bytearray(p.build_ip_message(p.OP_SET_IP_INFO, INFO))
    msg[offset : offset + size] = b"1" * size
    with pytest.raises(MalformedMessage, match=name):
        p.decode_request(bytes(msg))


def test_ip_field_invalid_utf8_is_malformed():
    msg = bytearray(p.build_ip_message(p.OP_SET_IP_INFO, INFO))
    msg[262:265] = b"\xff\xfe\0"
    with pytest.raises(MalformedMessage, match="ip_addr is not valid UTF-8"):
        p.decode_request(bytes(msg))


# --------------------------------------------------------------------------- replies


def test_encode_status_echoes_request_and_overwrites_header():
    req = p.build_key_message(p.OP_SET, 1, b"key", b"value")
    reply = p.encode_status(req, HV_S_CONT)
    assert len(reply) == MSG_SIZE
    assert reply[:4] == struct.pack("<I", HV_S_CONT) == b"\x03\x01\x07\x80"
    assert reply[4:] == req[4:]
    assert p.reply_status(reply) == HV_S_CONT


@pytest.mark.parametrize("length", [0, 1, 2, 100, 7431, 7433, 8000])
def test_encode_status_always_full_size(length):
    req = bytes(range(256)) * 40
    req = req[:length]
    reply = p.encode_status(req, HV_E_FAIL)
    assert len(reply) == MSG_SIZE
    assert u32(reply, 0) == HV_E_FAIL
    kept = min(length, MSG_SIZE)
    assert reply[4:kept] == req[4:kept]
    assert reply[max(kept, 4) :] == bytes(MSG_SIZE - max(kept, 4))


def test_encode_key_value_offsets_and_zero_fill():
    req = bytearray(p.build_enumerate_message(1, 3))
    req[20 : 20 + 512] = b"K" * 512  # stale request bytes must not survive after the NUL
    req[532 : 532 + 2048] = b"V" * 2048
    reply = p.encode_key_value(bytes(req), b"name", b"value")
    assert len(reply) == MSG_SIZE
    assert u32(reply, 0) == HV_S_OK
    assert u32(reply, 4) == 3  # the index stays echoed; the kernel ignores it
    assert reply[20:25] == b"name\0"
    assert reply[25:532] == bytes(507)
    assert reply[532:538] == b"value\0"
    assert reply[538 : 532 + 2048] == bytes(2048 - 6)
    assert p.reply_key_value(reply) == (b"name", b"value")


def test_encode_key_value_truncates_to_keep_nul_inside_field():
    reply = p.encode_key_value(p.build_enumerate_message(0, 0), b"k" * 600, b"v" * 3000)
    assert reply[20 : 20 + 511] == b"k" * 511 and reply[20 + 511] == 0
    assert reply[532 : 532 + 2047] == b"v" * 2047 and reply[532 + 2047] == 0
    assert len(reply) == MSG_SIZE


def test_encode_value_for_get_at_532_not_528():
    req = p.build_key_message(p.OP_GET, 0, b"key")
    reply = p.encode_value(req, b"the value")
    assert len(reply) == MSG_SIZE and u32(reply, 0) == HV_S_OK
    assert reply[532:542] == b"the value\0"
    assert reply[528:532] == bytes(4)
    assert reply[542 : 532 + 2048] == bytes(2048 - 10)
    assert reply[16:20] == b"key\0"  # key echoed from the request, ignored by the kernel


@pytest.mark.parametrize("length", [0, 3, 7431, 8000])
def test_encode_value_and_key_value_full_size_for_any_request(length):
    req = b"\x01" * length
    assert len(p.encode_value(req, b"v")) == MSG_SIZE
    assert len(p.encode_key_value(req, b"k", b"v")) == MSG_SIZE


def test_encode_ip_info_fields():
    req = p.build_ip_message(p.OP_GET_IP_INFO, IpInfo("00:15:5D:01:02:03", 3))
    reply = p.encode_ip_info(
        req, IpInfo("00:15:5D:01:02:03", 3, 1, "10.0.0.5", "255.0.0.0", "10.0.0.1;", "10.0.0.2;")
    )
    assert len(reply) == MSG_SIZE and u32(reply, 0) == HV_S_OK
    assert reply[260] == 3 and reply[261] == 1
    assert reply[262:271] == b"10.0.0.5\0"
    assert reply[2310:2320] == b"255.0.0.0\0"
    assert reply[4358:4368] == b"10.0.0.1;\0"
    assert reply[5382:5392] == b"10.0.0.2;\0"
    assert reply[5392:7430] == bytes(7430 - 5392)
    info = p.reply_ip_info(reply)
    assert info.ip_addr == "10.0.0.5" and info.gate_way == "10.0.0.1;"
    assert info.adapter_id == "00:15:5D:01:02:03"


def test_encode_register_and_decode_register_reply():
    msg = p.encode_register()
    assert len(msg) == MSG_SIZE and msg[0] == 100 and msg[1:] == bytes(MSG_SIZE - 1)
    reply = p.build_register_reply()
    assert reply[4:8] == b"3.1\0"
    assert p.decode_register_reply(reply) == p.RegisterReply(p.OP_REGISTER1, "3.1")
    assert p.decode_register_reply(p.build_register_reply(p.OP_REGISTER, "x")).op == 4
    with pytest.raises(MalformedMessage):
        p.decode_register_reply(p.build_enumerate_message(0, 0))
    with pytest.raises(MalformedMessage):
        p.decode_register_reply(reply[:100])


@pytest.mark.parametrize("op", [p.OP_GET, p.OP_SET, p.OP_DELETE])
def test_invalid_utf8_key_is_malformed(op):
    """The kernel converts UTF-16 to UTF-8: a key that is not UTF-8 cannot come from a host."""
    with pytest.raises(p.MalformedMessage, match="key is not valid UTF-8"):
        p.decode_request(p.build_key_message(op, 1, b"bad\xff", b"v"))


def test_invalid_utf8_value_is_malformed():
    with pytest.raises(p.MalformedMessage, match="value is not valid UTF-8"):
        p.decode_request(p.build_key_message(p.OP_SET, 1, b"k", b"\xc3("))
