"""Read one interface's addresses and default gateways straight from the kernel (rtnetlink).

GET_IP_INFO needs the addresses, prefix lengths and default routes of *one* interface. The C
daemon scrapes ``ip route`` with awk; pyroute2 would work but costs ~100 ms and several MB to
import. Two rtnetlink dumps over an ``AF_NETLINK`` socket take well under a millisecond and need
nothing beyond the standard library. Only the few message types and attributes used here are
decoded; everything else in a dump is skipped by its length field.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from typing import Iterator, List, NamedTuple, Optional, Tuple, Union

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

NETLINK_ROUTE = 0
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
RTM_NEWADDR = 20
RTM_GETADDR = 22
RTM_NEWROUTE = 24
RTM_GETROUTE = 26

IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_FLAGS = 8
IFA_F_PERMANENT = 0x80

RTA_OIF = 4
RTA_GATEWAY = 5
RTA_PRIORITY = 6
RTA_MULTIPATH = 9
RTA_TABLE = 15
RTA_VIA = 18
RT_TABLE_MAIN = 254
RTN_UNICAST = 1

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
# rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags
_RTMSG = struct.Struct("=BBBBBBBBI")
_RTATTR = struct.Struct("=HH")  # len, type
_RTNEXTHOP = struct.Struct("=HBBi")  # len, flags, hops, ifindex
_RTGENMSG = struct.Struct("=Bxxx")  # family, padded to 4 bytes
_U32 = struct.Struct("=I")

_RECV_SIZE = 1 << 16
_FAMILIES = (socket.AF_INET, socket.AF_INET6)


class NetlinkError(OSError):
    """The kernel refused a dump, or the answer could not be read in time."""


class Address(NamedTuple):
    """One interface address as the kernel reports it."""

    address: IPAddress
    prefixlen: int
    permanent: bool  # False for addresses with a finite lifetime (DHCP, SLAAC)


def _align(n: int) -> int:
    return (n + 3) & ~3


def _attrs(data: bytes, offset: int, end: int) -> Iterator[Tuple[int, bytes]]:
    """(type, payload) of each rtattr in data[offset:end]; a truncated attribute ends the walk."""
    while offset + _RTATTR.size <= end:
        length, kind = _RTATTR.unpack_from(data, offset)
        if length < _RTATTR.size or offset + length > end:
            return
        yield kind & 0x3FFF, data[offset + _RTATTR.size : offset + length]
        offset += _align(length)


def _ip(family: int, raw: bytes) -> Optional[IPAddress]:
    if family == socket.AF_INET and len(raw) == 4:
        return ipaddress.IPv4Address(raw)
    if family == socket.AF_INET6 and len(raw) == 16:
        return ipaddress.IPv6Address(raw)
    return None


class _Socket:
    """A route-netlink socket that performs one dump request at a time."""

    def __init__(self, timeout: float) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                   NETLINK_ROUTE)
        self._sock.settimeout(timeout)
        self._sock.bind((0, 0))
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def dump(self, msg_type: int, body: bytes) -> Iterator[Tuple[int, bytes, int]]:
        """Yield (type, message bytes, payload offset) for each reply of one dump request."""
        self._seq += 1
        seq = self._seq
        header = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), msg_type,
                                NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
        self._sock.send(header + body)
        while True:
            try:
                data = self._sock.recv(_RECV_SIZE)
            except socket.timeout:
                raise NetlinkError("rtnetlink dump timed out") from None
            offset = 0
            while offset + _NLMSGHDR.size <= len(data):
                length, kind, _flags, msg_seq, _pid = _NLMSGHDR.unpack_from(data, offset)
                if length < _NLMSGHDR.size or offset + length > len(data):
                    raise NetlinkError("truncated rtnetlink message")
                if msg_seq == seq:
                    if kind == NLMSG_DONE:
                        return
                    if kind == NLMSG_ERROR:
                        (err,) = struct.unpack_from("=i", data, offset + _NLMSGHDR.size)
                        if err:
                            raise NetlinkError(-err, os.strerror(-err))
                        return
                    yield kind, data[offset : offset + length], _NLMSGHDR.size
                offset += _align(length)


def _parse_address(msg: bytes, off: int, ifindex: int) -> Optional[Address]:
    family, prefixlen, flags, _scope, index = _IFADDRMSG.unpack_from(msg, off)
    if index != ifindex or family not in _FAMILIES:
        return None
    local = address = None
    for kind, payload in _attrs(msg, off + _IFADDRMSG.size, len(msg)):
        if kind == IFA_LOCAL:
            local = _ip(family, payload)
        elif kind == IFA_ADDRESS:
            address = _ip(family, payload)
        elif kind == IFA_FLAGS and len(payload) == 4:
            flags = _U32.unpack(payload)[0]
    # For IPv4 point-to-point links IFA_ADDRESS is the peer; IFA_LOCAL is always ours.
    ours = local or address
    if ours is None:
        return None
    return Address(ours, prefixlen, bool(flags & IFA_F_PERMANENT))


def _nexthop_gateways(family: int, payload: bytes, ifindex: int) -> List[IPAddress]:
    found = []
    offset = 0
    while offset + _RTNEXTHOP.size <= len(payload):
        length, _flags, _hops, nh_index = _RTNEXTHOP.unpack_from(payload, offset)
        if length < _RTNEXTHOP.size or offset + length > len(payload):
            break
        if nh_index == ifindex:
            gateway = _gateway(family, payload, offset + _RTNEXTHOP.size, offset + length)
            if gateway is not None:
                found.append(gateway)
        offset += _align(length)
    return found


def _gateway(family: int, data: bytes, start: int, end: int) -> Optional[IPAddress]:
    for kind, payload in _attrs(data, start, end):
        if kind == RTA_GATEWAY:
            return _ip(family, payload)
        if kind == RTA_VIA and len(payload) >= 2:  # IPv4 route via an IPv6 next hop
            (via_family,) = struct.unpack_from("=H", payload)
            return _ip(via_family, payload[2:])
    return None


def _parse_default_route(msg: bytes, off: int, ifindex: int) -> List[IPAddress]:
    family, dst_len, _src, _tos, table, _proto, _scope, rtype, _flags = _RTMSG.unpack_from(msg, off)
    if family not in _FAMILIES or dst_len != 0 or rtype != RTN_UNICAST:
        return []
    start = off + _RTMSG.size
    oif = None
    multipath = None
    for kind, payload in _attrs(msg, start, len(msg)):
        if kind == RTA_TABLE and len(payload) == 4:
            table = _U32.unpack(payload)[0]
        elif kind == RTA_OIF and len(payload) == 4:
            oif = _U32.unpack(payload)[0]
        elif kind == RTA_MULTIPATH:
            multipath = payload
    if table != RT_TABLE_MAIN:
        return []
    if multipath is not None:
        return _nexthop_gateways(family, multipath, ifindex)
    if oif != ifindex:
        return []
    gateway = _gateway(family, msg, start, len(msg))
    return [gateway] if gateway is not None else []


def interface_state(ifindex: int, timeout: float = 2.0) -> Tuple[List[Address], List[IPAddress]]:
    """Addresses (kernel dump order: IPv4 then IPv6) and main-table default gateways of ifindex.

    Gateways come IPv4 first, then IPv6, without duplicates; routes that leave through another
    interface are ignored (the C daemon reports every default route of the VM for every NIC).
    """
    sock = _Socket(timeout)
    try:
        addresses = []
        for kind, msg, off in sock.dump(RTM_GETADDR, _RTGENMSG.pack(socket.AF_UNSPEC)):
            if kind == RTM_NEWADDR:
                parsed = _parse_address(msg, off, ifindex)
                if parsed is not None:
                    addresses.append(parsed)
        addresses.sort(key=lambda a: a.address.version)  # stable: keeps kernel order per family
        gateways: List[IPAddress] = []
        for family in _FAMILIES:
            for kind, msg, off in sock.dump(RTM_GETROUTE, _RTMSG.pack(family, 0, 0, 0, 0, 0, 0,
                                                                       0, 0)):
                if kind != RTM_NEWROUTE:
                    continue
                for gateway in _parse_default_route(msg, off, ifindex):
                    if gateway not in gateways:
                        gateways.append(gateway)
        return addresses, gateways
    finally:
        sock.close()
