"""List the machine's IPv4/IPv6 interface addresses through libc's ``getifaddrs()``.

The Auto pool's NetworkAddressIPv4/IPv6 values must list addresses in exactly the order the C
daemon sees them, and that order is ``getifaddrs()``'s native one (per interface, then per
address). Calling libc through ctypes keeps that order and its quirks (IPv4 alias labels such as
``eth0:1`` as the interface name) without spawning ``ip`` or adding a dependency.
"""

from __future__ import annotations

import ctypes
import os
import socket
from typing import List, NamedTuple, Optional

# <net/if.h> interface flags (the ones callers look at).
IFF_UP = 0x1
IFF_LOOPBACK = 0x8


class _Sockaddr(ctypes.Structure):
    _fields_ = [("sa_family", ctypes.c_ushort), ("sa_data", ctypes.c_char * 14)]


class _SockaddrIn(ctypes.Structure):
    _fields_ = [
        ("sin_family", ctypes.c_ushort),
        ("sin_port", ctypes.c_uint16),
        ("sin_addr", ctypes.c_ubyte * 4),
        ("sin_zero", ctypes.c_ubyte * 8),
    ]


class _SockaddrIn6(ctypes.Structure):
    _fields_ = [
        ("sin6_family", ctypes.c_ushort),
        ("sin6_port", ctypes.c_uint16),
        ("sin6_flowinfo", ctypes.c_uint32),
        ("sin6_addr", ctypes.c_ubyte * 16),
        ("sin6_scope_id", ctypes.c_uint32),
    ]


class _Ifaddrs(ctypes.Structure):
    pass


_Ifaddrs._fields_ = [
    ("ifa_next", ctypes.POINTER(_Ifaddrs)),
    ("ifa_name", ctypes.c_char_p),
    ("ifa_flags", ctypes.c_uint),
    ("ifa_addr", ctypes.POINTER(_Sockaddr)),
    ("ifa_netmask", ctypes.POINTER(_Sockaddr)),
    ("ifa_ifu", ctypes.POINTER(_Sockaddr)),  # union of broadaddr/dstaddr: both are pointers
    ("ifa_data", ctypes.c_void_p),
]


class IfAddr(NamedTuple):
    """One address of one interface, as ``getifaddrs()`` reported it."""

    ifname: str  # IPv4 alias addresses carry their label, e.g. "eth0:1"
    family: int  # socket.AF_INET or socket.AF_INET6
    address: str  # inet_ntop text: IPv6 compressed, lower-case, no %scope
    prefixlen: int  # leading one bits of the netmask; 0 when the netmask is missing
    flags: int  # the interface's IFF_* flags

    @property
    def is_loopback(self) -> bool:
        return bool(self.flags & IFF_LOOPBACK)

    @property
    def is_up(self) -> bool:
        return bool(self.flags & IFF_UP)


_libc: Optional[ctypes.CDLL] = None


def _load_libc() -> ctypes.CDLL:
    """libc with errno capture; loaded on first use so importing this module never fails."""
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(None, use_errno=True)  # libc is mapped; find_library forks ldconfig
        lib.getifaddrs.argtypes = [ctypes.POINTER(ctypes.POINTER(_Ifaddrs))]
        lib.getifaddrs.restype = ctypes.c_int
        lib.freeifaddrs.argtypes = [ctypes.POINTER(_Ifaddrs)]
        lib.freeifaddrs.restype = None
        _libc = lib
    return _libc


def _raw_address(sa: ctypes._Pointer, family: int) -> Optional[bytes]:
    """The address bytes inside a sockaddr of the given family, or None for a NULL pointer."""
    if not sa:
        return None
    if family == socket.AF_INET:
        return bytes(ctypes.cast(sa, ctypes.POINTER(_SockaddrIn)).contents.sin_addr)
    return bytes(ctypes.cast(sa, ctypes.POINTER(_SockaddrIn6)).contents.sin6_addr)


def prefix_length(netmask: Optional[bytes]) -> int:
    """Number of leading one bits; a non-contiguous mask counts only its leading run."""
    if not netmask:
        return 0
    bits = int.from_bytes(netmask, "big")
    width = len(netmask) * 8
    inverted = ~bits & ((1 << width) - 1)
    return width - inverted.bit_length()


def getifaddrs() -> List[IfAddr]:
    """Every IPv4 and IPv6 address in ``getifaddrs()`` order; other families are left out.

    Entries without an address are skipped. Nothing else is filtered here (loopback, down
    interfaces and link-local addresses are all returned): policy belongs to the caller.
    Raises OSError carrying errno when libc's ``getifaddrs()`` fails.
    """
    libc = _load_libc()
    head = ctypes.POINTER(_Ifaddrs)()
    if libc.getifaddrs(ctypes.byref(head)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"getifaddrs() failed: {os.strerror(err)}")
    try:
        return list(_walk(head))
    finally:
        libc.freeifaddrs(head)


def _walk(head: ctypes._Pointer) -> List[IfAddr]:
    result: List[IfAddr] = []
    node = head
    while node:
        entry = node.contents
        node = entry.ifa_next
        if not entry.ifa_addr:
            continue
        family = entry.ifa_addr.contents.sa_family
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        raw = _raw_address(entry.ifa_addr, family)
        assert raw is not None
        result.append(
            IfAddr(
                ifname=os.fsdecode(entry.ifa_name or b""),
                family=family,
                address=socket.inet_ntop(family, raw),
                prefixlen=prefix_length(_raw_address(entry.ifa_netmask, family)),
                flags=entry.ifa_flags,
            )
        )
    return result
