"""Host requests and replies, and the kernel's translation of them to and from daemon messages.

``to_daemon`` builds the 7432-byte ``hv_kvp_msg`` the driver hands the daemon for a host request;
``to_host`` is what the host receives for the daemon's reply. Both are pure: the fake kernel's
device (``kernel``) carries the bytes, and tests check the translation without one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from pykvpd import protocol as p
from pykvpd.simulator.conversion import (
    HOST_IP_ADAPTER_ID_UNITS,
    HOST_IP_ADDR_UNITS,
    HOST_IP_GATEWAY_UNITS,
    HOST_KEY_UNITS,
    HOST_VALUE_UNITS,
    IP_ADAPTER_ID_BYTES,
    IP_ADDR_BYTES,
    IP_GATEWAY_BYTES,
    KEY_BYTES,
    ConversionError,
    HostValue,
    host_to_utf8,
    render_value,
    units_text,
    utf8_to_host,
    utf16_units,
)


def _cstr(field: bytes) -> bytes:
    """What strlen sees: the bytes up to the first NUL (or to the end of what is there)."""
    return field.split(b"\0", 1)[0]


@dataclass(frozen=True)
class HostRequest:
    """One request as the host puts it on the channel (strings are the host's UTF-16 text).

    ``value`` is a str for REG_SZ, an int for REG_U32/REG_U64, ignored for other types. ``ip``
    holds host-side IP strings (adapter id = MAC for GET_IP_INFO, GUID for SET_IP_INFO).
    """

    op: int
    pool: int = p.POOL_EXTERNAL
    key: str = ""
    value: HostValue = None
    value_type: int = p.REG_SZ
    index: int = 0
    ip: Optional[p.IpInfo] = None


@dataclass(frozen=True)
class HostReply:
    """What the host gets back: the status and, for ENUMERATE/GET/GET_IP_INFO, the payload."""

    status: int
    key: str = ""
    value: str = ""
    ip: Optional[p.IpInfo] = None
    detail: str = ""  # why the kernel itself failed the request, for transcripts

    @property
    def status_name(self) -> str:
        return status_name(self.status)


def status_name(status: int) -> str:
    """HV_S_OK, HV_E_FAIL, ... or the hex value for codes the header does not name."""
    return p.STATUS_NAMES.get(status, f"0x{status:08X}")


def _ip_text(text: str, max_bytes: int) -> str:
    return host_to_utf8(utf16_units(text), max_bytes).decode("utf-8")


def to_daemon(request: HostRequest) -> bytes:
    """Build the 7432-byte message the kernel hands the daemon for a host request (§4, §6.1)."""
    op, pool = request.op, request.pool
    if op in (p.OP_GET, p.OP_SET, p.OP_DELETE):
        key = host_to_utf8(utf16_units(request.key), KEY_BYTES)
        value = render_value(request.value, request.value_type) if op == p.OP_SET else None
        return p.build_key_message(op, pool, key, value)
    if op == p.OP_ENUMERATE:
        return p.build_enumerate_message(pool, request.index)
    if op in (p.OP_GET_IP_INFO, p.OP_SET_IP_INFO):
        ip = request.ip or p.IpInfo(adapter_id="")
        info = p.IpInfo(
            adapter_id=_ip_text(ip.adapter_id, IP_ADAPTER_ID_BYTES),
            addr_family=ip.addr_family,
            dhcp_enabled=ip.dhcp_enabled,
            ip_addr=_ip_text(ip.ip_addr, IP_ADDR_BYTES),
            sub_net=_ip_text(ip.sub_net, IP_ADDR_BYTES),
            gate_way=_ip_text(ip.gate_way, IP_GATEWAY_BYTES),
            dns_addr=_ip_text(ip.dns_addr, IP_ADDR_BYTES),
        )
        return p.build_ip_message(op, info, pool)
    buf = bytearray(p.MSG_SIZE)  # an op the kernel does not know: only the header is copied
    buf[p.OFF_OPERATION], buf[p.OFF_POOL] = op & 0xFF, pool & 0xFF
    return bytes(buf)


def _convert(data: bytes, max_units: int) -> str:
    return units_text(utf8_to_host(_cstr(data), max_units))


def to_host(request: HostRequest, reply: bytes, legacy: bool = False) -> HostReply:
    """What the host receives for the daemon's ``reply`` to ``request`` (spec §2.2).

    The kernel uses the operation it remembered, never the reply's header. A REGISTER1 daemon's
    status is the u32 at offset 0, forwarded verbatim; a legacy daemon's status is HV_S_CONT when
    the ENUMERATE key's first byte is NUL, else HV_S_OK. A non-zero status carries no payload.
    """
    if legacy:
        status = p.HV_S_CONT if reply[p.OFF_ENUM_KEY] == 0 else p.HV_S_OK
    else:
        status = p.reply_status(reply)
    if status != p.HV_S_OK:
        return HostReply(status)
    op = request.op
    try:
        if op in (p.OP_SET, p.OP_DELETE, p.OP_SET_IP_INFO):
            return HostReply(status)
        if op == p.OP_GET:  # value read at 532 (the ENUMERATE offset); key not re-sent
            value = _convert(reply[p.OFF_ENUM_VALUE :], HOST_VALUE_UNITS)
            return HostReply(status, key=request.key, value=value)
        if op == p.OP_GET_IP_INFO:
            return HostReply(status, ip=_ip_to_host(reply))
        key = _convert(reply[p.OFF_ENUM_KEY :], HOST_KEY_UNITS)  # ENUMERATE and unknown ops
        value = _convert(reply[p.OFF_ENUM_VALUE :], HOST_VALUE_UNITS)
        return HostReply(status, key=key, value=value)
    except ConversionError as exc:
        return HostReply(p.HV_E_FAIL, detail=f"reply conversion failed: {exc}")


def _ip_to_host(reply: bytes) -> p.IpInfo:
    def field(offset: int, max_units: int) -> str:
        return _convert(reply[offset:], max_units)

    return p.IpInfo(
        adapter_id=field(p.OFF_IP_ADAPTER_ID, HOST_IP_ADAPTER_ID_UNITS),
        addr_family=reply[p.OFF_IP_ADDR_FAMILY],
        dhcp_enabled=reply[p.OFF_IP_DHCP_ENABLED],
        ip_addr=field(p.OFF_IP_ADDR, HOST_IP_ADDR_UNITS),
        sub_net=field(p.OFF_IP_SUBNET, HOST_IP_ADDR_UNITS),
        gate_way=field(p.OFF_IP_GATEWAY, HOST_IP_GATEWAY_UNITS),
        dns_addr=field(p.OFF_IP_DNS, HOST_IP_ADDR_UNITS),
    )
