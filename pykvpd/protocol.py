"""The KVP wire format between the daemon and the kernel: decode requests, encode replies.

Pure functions over bytes, no I/O (the Sans-I/O core). Offsets and sizes are those of the packed
``struct hv_kvp_msg`` in ``<linux/hyperv.h>``; the C shim asserts at compile time that they still
match the kernel header, so a layout change breaks the build instead of the host's view.
"""

from __future__ import annotations

import struct
from typing import NamedTuple, Optional, Union

from .store.records import MAX_KEY_SIZE, MAX_VALUE_SIZE, POOL_COUNT

MSG_SIZE = 7432  # sizeof(struct hv_kvp_msg)

# Operations (kvp_hdr.operation).
OP_GET = 0
OP_SET = 1
OP_DELETE = 2
OP_ENUMERATE = 3
OP_GET_IP_INFO = 4
OP_SET_IP_INFO = 5
OP_REGISTER = 4  # legacy handshake; collides with GET_IP_INFO, only meaningful before handshake
OP_REGISTER1 = 100

OP_NAMES = {
    OP_GET: "GET",
    OP_SET: "SET",
    OP_DELETE: "DELETE",
    OP_ENUMERATE: "ENUMERATE",
    OP_GET_IP_INFO: "GET_IP_INFO",
    OP_SET_IP_INFO: "SET_IP_INFO",
    OP_REGISTER1: "REGISTER1",
}

# Pools (kvp_hdr.pool).
POOL_EXTERNAL = 0
POOL_GUEST = 1
POOL_AUTO = 2
POOL_AUTO_EXTERNAL = 3
POOL_AUTO_INTERNAL = 4

# Status codes carried at offset 0 of a reply (forwarded verbatim to the host).
HV_S_OK = 0x00000000
HV_E_FAIL = 0x80004005
HV_S_CONT = 0x80070103
HV_INVALIDARG = 0x80070057
HV_GUID_NOTFOUND = 0x80041002

STATUS_NAMES = {
    HV_S_OK: "HV_S_OK",
    HV_E_FAIL: "HV_E_FAIL",
    HV_S_CONT: "HV_S_CONT",
    HV_INVALIDARG: "HV_INVALIDARG",
    HV_GUID_NOTFOUND: "HV_GUID_NOTFOUND",
}

# Field sizes (MAX_KEY_SIZE, MAX_VALUE_SIZE and POOL_COUNT belong to the pool format).
REG_SZ, REG_U32, REG_U64 = 1, 4, 8
ADDR_FAMILY_NONE, ADDR_FAMILY_IPV4, ADDR_FAMILY_IPV6 = 0x00, 0x01, 0x02

# Absolute offsets inside the 7432-byte message.
OFF_OPERATION = 0
OFF_POOL = 1
OFF_STATUS = 0  # the reply's status overwrites the header
# GET / SET view.
OFF_SET_VALUE_TYPE = 4
OFF_SET_KEY_SIZE = 8
OFF_SET_VALUE_SIZE = 12
OFF_SET_KEY = 16
OFF_SET_VALUE = 528
# ENUMERATE view (also where the kernel reads a GET's value back from).
OFF_ENUM_INDEX = 4
OFF_ENUM_VALUE_TYPE = 8
OFF_ENUM_KEY_SIZE = 12
OFF_ENUM_VALUE_SIZE = 16
OFF_ENUM_KEY = 20
OFF_ENUM_VALUE = 532
# DELETE view.
OFF_DEL_KEY_SIZE = 4
OFF_DEL_KEY = 8
# REGISTER view.
OFF_REG_VERSION = 4
REG_VERSION_SIZE = 512
# IP view (struct hv_kvp_ipaddr_value at offset 4).
OFF_IP_ADAPTER_ID = 4
OFF_IP_ADDR_FAMILY = 260
OFF_IP_DHCP_ENABLED = 261
OFF_IP_ADDR = 262
OFF_IP_SUBNET = 2310
OFF_IP_GATEWAY = 4358
OFF_IP_DNS = 5382
IP_ADAPTER_ID_SIZE = 256
IP_ADDR_SIZE = 2048
IP_SUBNET_SIZE = 2048
IP_GATEWAY_SIZE = 1024
IP_DNS_SIZE = 2048

_U32 = struct.Struct("<I")


class MalformedMessage(ValueError):
    """A message that no kernel would send; the daemon answers it with an error status."""


# --------------------------------------------------------------------------- requests


class KeyRequest(NamedTuple):
    """GET, SET or DELETE of one key in one pool."""

    op: int
    pool: int
    key: bytes  # UTF-8 C string, without its NUL
    value: Optional[bytes] = None  # SET only; None when the kernel sent value_size 0


class EnumerateRequest(NamedTuple):
    """ "Give me record #index of pool P"; the host walks 0, 1, 2, ... until HV_S_CONT."""

    pool: int
    index: int


class IpInfo(NamedTuple):
    """The string fields of ``struct hv_kvp_ipaddr_value`` (daemon side: UTF-8)."""

    adapter_id: str
    addr_family: int = 0
    dhcp_enabled: int = 0
    ip_addr: str = ""
    sub_net: str = ""
    gate_way: str = ""
    dns_addr: str = ""


class IpRequest(NamedTuple):
    """GET_IP_INFO (adapter_id = MAC) or SET_IP_INFO (adapter_id = VMBus GUID)."""

    op: int
    info: IpInfo


class RegisterReply(NamedTuple):
    """The kernel's answer to our REGISTER1; carries IntegrationServicesVersion."""

    op: int
    version: str


Request = Union[KeyRequest, EnumerateRequest, IpRequest]


def _u32(msg: bytes, offset: int) -> int:
    return _U32.unpack_from(msg, offset)[0]


def _cstring(field: bytes, what: str) -> bytes:
    """Cut a field at its first NUL; a field without one is malformed."""
    end = field.find(b"\0")
    if end < 0:
        raise MalformedMessage(f"{what} is not NUL-terminated within its {len(field)} bytes")
    return field[:end]


def _sized_cstring(msg: bytes, offset: int, size: int, limit: int, what: str) -> bytes:
    """A string whose size (including its NUL) the kernel states in the message.

    The kernel converts the host's UTF-16 to UTF-8, so invalid UTF-8 never comes from it; such a
    string is refused rather than stored where the host could never read it back.
    """
    if size == 0:
        raise MalformedMessage(f"{what}_size is 0")
    if size > limit:
        raise MalformedMessage(f"{what}_size {size} exceeds {limit}")
    text = _cstring(msg[offset : offset + size], f"{what} ({what}_size {size})")
    try:
        text.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedMessage(f"{what} is not valid UTF-8: {exc.reason}") from None
    return text


def _text(field: bytes, what: str) -> str:
    raw = _cstring(field, what)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedMessage(f"{what} is not valid UTF-8: {exc.reason}") from None


def header(msg: bytes) -> tuple[int, int]:
    """(operation, pool) of a message of any length >= 2."""
    return msg[OFF_OPERATION], msg[OFF_POOL]


def decode_request(msg: bytes) -> Request:
    """Decode one host request as the kernel hands it to the daemon.

    Raises MalformedMessage for anything the kernel would never produce: wrong length, unknown
    operation, pool out of range, sizes outside the fields, strings without their NUL.
    """
    if len(msg) != MSG_SIZE:
        raise MalformedMessage(f"message is {len(msg)} bytes, expected {MSG_SIZE}")
    op, pool = header(msg)
    if op in (OP_GET_IP_INFO, OP_SET_IP_INFO):
        return IpRequest(op, _decode_ip(msg))
    if op not in (OP_GET, OP_SET, OP_DELETE, OP_ENUMERATE):
        raise MalformedMessage(f"unknown operation {op}")
    if pool >= POOL_COUNT:
        raise MalformedMessage(f"pool {pool} out of range 0..{POOL_COUNT - 1}")
    if op == OP_ENUMERATE:
        return EnumerateRequest(pool, _u32(msg, OFF_ENUM_INDEX))
    if op == OP_DELETE:
        key = _sized_cstring(msg, OFF_DEL_KEY, _u32(msg, OFF_DEL_KEY_SIZE), MAX_KEY_SIZE, "key")
        return KeyRequest(op, pool, key)
    key = _sized_cstring(msg, OFF_SET_KEY, _u32(msg, OFF_SET_KEY_SIZE), MAX_KEY_SIZE, "key")
    if op == OP_GET:
        return KeyRequest(op, pool, key)
    value_size = _u32(msg, OFF_SET_VALUE_SIZE)
    if value_size == 0:  # a value type the kernel cannot render: it sends no value at all
        return KeyRequest(op, pool, key, None)
    value = _sized_cstring(msg, OFF_SET_VALUE, value_size, MAX_VALUE_SIZE, "value")
    return KeyRequest(op, pool, key, value)


def _decode_ip(msg: bytes) -> IpInfo:
    def field(offset: int, size: int, what: str) -> str:
        return _text(msg[offset : offset + size], what)

    return IpInfo(
        adapter_id=field(OFF_IP_ADAPTER_ID, IP_ADAPTER_ID_SIZE, "adapter_id"),
        addr_family=msg[OFF_IP_ADDR_FAMILY],
        dhcp_enabled=msg[OFF_IP_DHCP_ENABLED],
        ip_addr=field(OFF_IP_ADDR, IP_ADDR_SIZE, "ip_addr"),
        sub_net=field(OFF_IP_SUBNET, IP_SUBNET_SIZE, "sub_net"),
        gate_way=field(OFF_IP_GATEWAY, IP_GATEWAY_SIZE, "gate_way"),
        dns_addr=field(OFF_IP_DNS, IP_DNS_SIZE, "dns_addr"),
    )


def decode_register_reply(msg: bytes) -> RegisterReply:
    """The kernel's registration reply: same op byte back, version string at offset 4."""
    if len(msg) != MSG_SIZE:
        raise MalformedMessage(f"registration reply is {len(msg)} bytes, expected {MSG_SIZE}")
    op = msg[OFF_OPERATION]
    if op not in (OP_REGISTER1, OP_REGISTER):
        raise MalformedMessage(f"expected a registration reply, got operation {op}")
    field = msg[OFF_REG_VERSION : OFF_REG_VERSION + REG_VERSION_SIZE]
    end = field.find(b"\0")
    raw = field if end < 0 else field[:end]
    return RegisterReply(op, raw.decode("utf-8", "replace"))


# --------------------------------------------------------------------------- encoding


def _put(buf: bytearray, offset: int, size: int, data: bytes) -> None:
    """Write a NUL-terminated string into a zero-filled field, truncating to fit."""
    data = data[: size - 1]
    buf[offset : offset + size] = data + bytes(size - len(data))


def encode_register() -> bytes:
    """The handshake the daemon writes first: operation REGISTER1, everything else zero."""
    buf = bytearray(MSG_SIZE)
    buf[OFF_OPERATION] = OP_REGISTER1
    return bytes(buf)


def _reply_buffer(request_msg: bytes, status: int) -> bytearray:
    """The request echoed (as the C daemon does), exactly MSG_SIZE bytes, status at 0."""
    if len(request_msg) == MSG_SIZE:
        buf = bytearray(request_msg)
    else:
        buf = bytearray(request_msg[:MSG_SIZE].ljust(MSG_SIZE, b"\0"))
    _U32.pack_into(buf, OFF_STATUS, status)
    return buf


def encode_status(request_msg: bytes, status: int) -> bytes:
    """A reply that only carries a status (the kernel reads nothing else when it is non-zero).

    The request buffer is echoed, as the C daemon does; for a request of the wrong length the
    reply is still exactly MSG_SIZE bytes.
    """
    return bytes(_reply_buffer(request_msg, status))


def encode_key_value(request_msg: bytes, key: bytes, value: bytes) -> bytes:
    """HV_S_OK with key at 20 and value at 532: where the kernel reads ENUMERATE and GET results."""
    buf = _reply_buffer(request_msg, HV_S_OK)
    _put(buf, OFF_ENUM_KEY, MAX_KEY_SIZE, key)
    _put(buf, OFF_ENUM_VALUE, MAX_VALUE_SIZE, value)
    return bytes(buf)


def encode_value(request_msg: bytes, value: bytes) -> bytes:
    """HV_S_OK for GET: the kernel reads the value at 532 (not 528), so that is where it goes."""
    buf = _reply_buffer(request_msg, HV_S_OK)
    _put(buf, OFF_ENUM_VALUE, MAX_VALUE_SIZE, value)
    return bytes(buf)


def _put_ip_config(buf: bytearray, info: IpInfo) -> None:
    """The fields both a GET_IP_INFO reply and a SET_IP_INFO request carry."""
    buf[OFF_IP_DHCP_ENABLED] = info.dhcp_enabled & 0xFF
    _put(buf, OFF_IP_ADDR, IP_ADDR_SIZE, info.ip_addr.encode())
    _put(buf, OFF_IP_SUBNET, IP_SUBNET_SIZE, info.sub_net.encode())
    _put(buf, OFF_IP_GATEWAY, IP_GATEWAY_SIZE, info.gate_way.encode())
    _put(buf, OFF_IP_DNS, IP_DNS_SIZE, info.dns_addr.encode())


def encode_ip_info(request_msg: bytes, info: IpInfo) -> bytes:
    """HV_S_OK for GET_IP_INFO with every string NUL-terminated inside its field."""
    buf = _reply_buffer(request_msg, HV_S_OK)
    _put(buf, OFF_IP_ADAPTER_ID, IP_ADAPTER_ID_SIZE, info.adapter_id.encode())
    buf[OFF_IP_ADDR_FAMILY] = info.addr_family & 0xFF
    _put_ip_config(buf, info)
    return bytes(buf)


def reply_status(reply: bytes) -> int:
    """The status the kernel forwards to the host."""
    return _u32(reply, OFF_STATUS)


# ----------------------------------------------------- kernel-side builders (simulator, tests)


def build_key_message(op: int, pool: int, key: bytes, value: Optional[bytes] = None) -> bytes:
    """A GET/SET/DELETE request exactly as the kernel builds it (sizes include the NUL)."""
    buf = bytearray(MSG_SIZE)
    buf[OFF_OPERATION], buf[OFF_POOL] = op, pool
    key = key[: MAX_KEY_SIZE - 1]
    if op == OP_DELETE:
        _U32.pack_into(buf, OFF_DEL_KEY_SIZE, len(key) + 1)
        buf[OFF_DEL_KEY : OFF_DEL_KEY + len(key)] = key
        return bytes(buf)
    _U32.pack_into(buf, OFF_SET_KEY_SIZE, len(key) + 1)
    buf[OFF_SET_KEY : OFF_SET_KEY + len(key)] = key
    if op == OP_SET and value is not None:
        value = value[: MAX_VALUE_SIZE - 1]
        _U32.pack_into(buf, OFF_SET_VALUE_SIZE, len(value) + 1)
        buf[OFF_SET_VALUE : OFF_SET_VALUE + len(value)] = value
    return bytes(buf)


def build_enumerate_message(pool: int, index: int) -> bytes:
    """An ENUMERATE request as the kernel builds it: only the index is filled in."""
    buf = bytearray(MSG_SIZE)
    buf[OFF_OPERATION], buf[OFF_POOL] = OP_ENUMERATE, pool
    _U32.pack_into(buf, OFF_ENUM_INDEX, index & 0xFFFFFFFF)
    return bytes(buf)


def build_ip_message(op: int, info: IpInfo, pool: int = POOL_GUEST) -> bytes:
    """A GET_IP_INFO / SET_IP_INFO request (GET carries only adapter_id and addr_family)."""
    buf = bytearray(MSG_SIZE)
    buf[OFF_OPERATION], buf[OFF_POOL] = op, pool
    _put(buf, OFF_IP_ADAPTER_ID, IP_ADAPTER_ID_SIZE, info.adapter_id.encode())
    buf[OFF_IP_ADDR_FAMILY] = info.addr_family & 0xFF
    if op == OP_SET_IP_INFO:
        _put_ip_config(buf, info)
    return bytes(buf)


def build_register_reply(op: int = OP_REGISTER1, version: str = "3.1") -> bytes:
    """The kernel's registration reply: the register op echoed, version string at offset 4."""
    buf = bytearray(MSG_SIZE)
    buf[OFF_OPERATION] = op
    _put(buf, OFF_REG_VERSION, REG_VERSION_SIZE, version.encode())
    return bytes(buf)


def reply_key_value(reply: bytes) -> tuple[bytes, bytes]:
    """Key (at 20) and value (at 532) of a reply, cut at their NULs as the kernel's strlen does."""
    key = reply[OFF_ENUM_KEY : OFF_ENUM_KEY + MAX_KEY_SIZE].split(b"\0", 1)[0]
    value = reply[OFF_ENUM_VALUE : OFF_ENUM_VALUE + MAX_VALUE_SIZE].split(b"\0", 1)[0]
    return key, value


def reply_ip_info(reply: bytes) -> IpInfo:
    """The GET_IP_INFO strings of a reply, as the kernel would read them."""

    def field(offset: int, size: int) -> str:
        return reply[offset : offset + size].split(b"\0", 1)[0].decode("utf-8", "replace")

    return IpInfo(
        adapter_id=field(OFF_IP_ADAPTER_ID, IP_ADAPTER_ID_SIZE),
        addr_family=reply[OFF_IP_ADDR_FAMILY],
        dhcp_enabled=reply[OFF_IP_DHCP_ENABLED],
        ip_addr=field(OFF_IP_ADDR, IP_ADDR_SIZE),
        sub_net=field(OFF_IP_SUBNET, IP_SUBNET_SIZE),
        gate_way=field(OFF_IP_GATEWAY, IP_GATEWAY_SIZE),
        dns_addr=field(OFF_IP_DNS, IP_DNS_SIZE),
    )
