"""Find network interfaces in sysfs by MAC address (GET_IP_INFO) or VMBus GUID (SET_IP_INFO).

Also the one place that decides which interface names are safe to put into file names,
configuration files and argv lists: every name read from sysfs passes ``valid_ifname`` before
anything is derived from it, so a hostile or corrupted name can never leave the configuration
directories or be taken for a command-line option.
"""

from __future__ import annotations

import os
import re
import socket
from typing import List, Optional

# Linux allows almost any byte in an interface name (not '/', ':' or whitespace); we accept a
# conservative subset: starts with a letter or digit (never '-', so never an option, never '.'
# or '..'), at most 15 characters (IFNAMSIZ - 1).
_IFNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@+-]{0,14}\Z")
_MAC = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5,19}\Z")
_GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
_HEX = re.compile(r"[0-9a-f]+\Z")


def valid_ifname(name: str) -> bool:
    """True if name is safe to use in a file name, a config file and an argv element."""
    return bool(_IFNAME.match(name))


def mac_key(text: str) -> Optional[str]:
    """Canonical form of a MAC for comparison: lower-case hex digits without separators.

    Accepts any case and ':' / '-' / '.' separators (or none). None when text is no MAC, or is
    the all-zero address that loopback and tunnels share.
    """
    digits = re.sub(r"[:.\-]", "", text.strip()).lower()
    if len(digits) < 12 or len(digits) % 2 or not _HEX.match(digits) or not digits.strip("0"):
        return None
    return digits


def guid_key(text: str) -> Optional[str]:
    """Canonical form of a VMBus GUID: lower-case, without braces. None when text is no GUID."""
    text = text.strip().lower()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1]
    return text if _GUID.match(text) else None


def _read_line(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.readline(256).strip()
    except OSError:
        return None


def _net_dir(sysfs: str) -> str:
    return os.path.join(sysfs, "class", "net")


def list_interfaces(sysfs: str) -> List[str]:
    """Interface names in sysfs, sorted so that ties are broken the same way on every call."""
    return sorted(os.listdir(_net_dir(sysfs)))


def interfaces_by_mac(sysfs: str, adapter_id: str) -> List[str]:
    """Names of every interface whose MAC equals adapter_id (exact match, any notation)."""
    wanted = mac_key(adapter_id)
    if wanted is None:
        return []
    found = []
    for name in list_interfaces(sysfs):
        address = _read_line(os.path.join(_net_dir(sysfs), name, "address"))
        if address is not None and mac_key(address) == wanted:
            found.append(name)
    return found


def interface_by_guid(sysfs: str, adapter_id: str) -> Optional[str]:
    """The interface whose VMBus device instance GUID is adapter_id, or None."""
    wanted = guid_key(adapter_id)
    if wanted is None:
        return None
    for name in list_interfaces(sysfs):
        device_id = _read_line(os.path.join(_net_dir(sysfs), name, "device", "device_id"))
        if device_id is not None and guid_key(device_id) == wanted:
            return name
    return None


def interface_mac(sysfs: str, ifname: str) -> Optional[str]:
    """The interface's MAC in the upper-case colon form the ifcfg file uses, or None."""
    address = _read_line(os.path.join(_net_dir(sysfs), ifname, "address"))
    if address is None or not _MAC.match(address):
        return None
    return address.upper()


def interface_index(sysfs: str, ifname: str) -> Optional[int]:
    """The interface index from sysfs, else from the kernel (current namespace), else None."""
    text = _read_line(os.path.join(_net_dir(sysfs), ifname, "ifindex"))
    if text and text.isdigit():
        return int(text)
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        return None
