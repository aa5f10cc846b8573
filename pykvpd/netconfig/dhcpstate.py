"""GET_IP_INFO's DHCP flag: read from the configuration that really manages the link.

No daemon is asked (that costs milliseconds and may start one through D-Bus activation): each
network stack leaves enough on disk to tell which of its profiles is applied to a link, and that
profile says whether IPv4 comes from DHCP. The first stack that claims the link decides; when
none does, the addresses themselves tell (a DHCP client installs them with a finite lifetime).
"""

from __future__ import annotations

import fnmatch
import os
from typing import Callable, Dict, List, Optional, Sequence

from . import netlink
from .nics import valid_ifname
from .textfiles import read_text

_NETWORKD_DHCP = ("yes", "true", "1", "on", "ipv4", "both")


def ini(text: str) -> Dict[str, Dict[str, str]]:
    """A minimal key-file reader (NetworkManager, systemd): {section: {key: last value}}."""
    sections: Dict[str, Dict[str, str]] = {}
    current = sections.setdefault("", {})
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1].strip(), {})
        elif "=" in line:
            key, _, value = line.partition("=")
            current[key.strip()] = value.strip()
    return sections


def _files(directory: str, suffix: str = "") -> List[str]:
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    return [os.path.join(directory, n) for n in names if n.endswith(suffix)]


def _nm_profiles(etc_dir: str, run_dir: str) -> List[Dict[str, Dict[str, str]]]:
    """Every keyfile profile, in NetworkManager's precedence: /run (in-memory ones), /etc."""
    profiles = []
    for root in (run_dir, etc_dir):
        for path in _files(os.path.join(root, "NetworkManager", "system-connections"),
                           ".nmconnection"):
            profiles.append(ini(read_text(path) or ""))
    return profiles


def _unit_active(run_dir: str, unit: str, state_dir: str) -> bool:
    """Under systemd, whether UNIT is active: systemd keeps /run/systemd/units/invocation:UNIT
    only while it is (one lstat, no D-Bus). Elsewhere, whether the daemon's STATE_DIR exists."""
    units = os.path.join(run_dir, "systemd", "units")
    if os.path.isdir(units):
        return os.path.lexists(os.path.join(units, f"invocation:{unit}"))
    return os.path.isdir(state_dir)


def nm_running(run_dir: str) -> bool:
    """Whether NetworkManager runs (/run/NetworkManager outlives it, so it cannot tell)."""
    return _unit_active(run_dir, "NetworkManager.service",
                        os.path.join(run_dir, "NetworkManager"))


def networkd_running(run_dir: str) -> bool:
    """Whether systemd-networkd runs. A clean stop removes its /run/systemd/netif/links/*
    files, but a networkd that was killed (crash, OOM, SIGKILL) leaves them as they were."""
    return _unit_active(run_dir, "systemd-networkd.service",
                        os.path.join(run_dir, "systemd", "netif", "links"))


def _nm_is_dhcp(profile: Dict[str, Dict[str, str]]) -> bool:
    return profile.get("ipv4", {}).get("method", "auto") == "auto"


def _nm_dhcp(ifname: str, ifindex: Optional[int], mac: Optional[str], etc_dir: str,
             run_dir: str) -> Optional[bool]:
    """NetworkManager: the profile active on the device decides (ipv4.method=auto is DHCP).

    NetworkManager records the active profile's UUID in /run/NetworkManager/devices/<ifindex>
    (``connection-uuid=``). Without one (device not activated yet) the candidate NetworkManager
    would activate is used: the bound profile with the highest autoconnect-priority.
    """
    if not nm_running(run_dir):
        return None
    profiles = _nm_profiles(etc_dir, run_dir)
    if ifindex is not None:
        device = ini(read_text(os.path.join(run_dir, "NetworkManager", "devices", str(ifindex)))
                     or "").get("device", {})
        if device.get("managed") == "false":
            return None
        active = device.get("connection-uuid")
        if active:
            for profile in profiles:
                if profile.get("connection", {}).get("uuid") == active:
                    return _nm_is_dhcp(profile)
    bound = []
    for profile in profiles:
        connection = profile.get("connection", {})
        name = connection.get("interface-name")
        mac_bound = profile.get("ethernet", {}).get("mac-address", "").upper()
        if name == ifname or (name is None and mac is not None and mac_bound == mac):
            bound.append(profile)
    if not bound:
        return None
    best = max(bound, key=lambda p: _int(p.get("connection", {}).get("autoconnect-priority")))
    return _nm_is_dhcp(best)


def _int(text: Optional[str]) -> int:
    try:
        return int(text or 0)
    except ValueError:
        return 0


def _networkd_dhcp(ifname: str, ifindex: Optional[int], etc_dir: str,
                   run_dir: str) -> Optional[bool]:
    """systemd-networkd, while it runs: the .network file applied to the link (from its state
    file, else the first file in /etc/systemd/network whose [Match] Name= matches);
    DHCP=yes/ipv4 means DHCP. A stopped networkd applies no file, whatever /etc holds."""
    if not networkd_running(run_dir):
        return None
    path = None
    if ifindex is not None:
        state = ini(read_text(os.path.join(run_dir, "systemd", "netif", "links", str(ifindex)))
                    or "").get("", {})
        if state.get("ADMIN_STATE") == "unmanaged":
            return None
        path = state.get("NETWORK_FILE") or None
    if path is None:
        for candidate in _files(os.path.join(etc_dir, "systemd", "network"), ".network"):
            patterns = ini(read_text(candidate) or "").get("Match", {}).get("Name", "").split()
            if any(fnmatch.fnmatchcase(ifname, p) for p in patterns):
                path = candidate
                break
    if path is None:
        return None
    value = ini(read_text(path) or "").get("Network", {}).get("DHCP", "no").lower()
    return value in _NETWORKD_DHCP


def _ifupdown_dhcp(ifname: str, etc_dir: str) -> Optional[bool]:
    """ifupdown: 'iface IF inet dhcp' in /etc/network/interfaces or interfaces.d/*."""
    paths = [os.path.join(etc_dir, "network", "interfaces")]
    paths += _files(os.path.join(etc_dir, "network", "interfaces.d"))
    verdict = None
    for path in paths:
        for line in (read_text(path) or "").splitlines():
            fields = line.split()
            if len(fields) >= 4 and fields[0] == "iface" and fields[1] == ifname \
                    and fields[2] == "inet":
                verdict = verdict or fields[3] == "dhcp"
    return verdict


def _ifcfg_dhcp(ifname: str, etc_dir: str) -> Optional[bool]:
    """Red Hat network-scripts: BOOTPROTO=dhcp in ifcfg-IF."""
    text = read_text(os.path.join(etc_dir, "sysconfig", "network-scripts", f"ifcfg-{ifname}"))
    if text is None:
        return None
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "BOOTPROTO":
            return value.strip().strip("'\"").lower() in ("dhcp", "bootp")
    return False


def builtin_dhcp(ifname: str, ifindex: Optional[int], addresses: Sequence[netlink.Address],
                 mac: Optional[str], etc_dir: str, run_dir: str) -> bool:
    """DHCPv4 state from whichever configuration manages the link, else from the kernel.

    The last resort looks at the IPv4 addresses themselves: DHCP clients install them with a
    finite lifetime, static configuration makes them permanent.
    """
    if valid_ifname(ifname):
        checks: List[Callable[[], Optional[bool]]] = [
            lambda: _nm_dhcp(ifname, ifindex, mac, etc_dir, run_dir),
            lambda: _networkd_dhcp(ifname, ifindex, etc_dir, run_dir),
            lambda: _ifupdown_dhcp(ifname, etc_dir),
            lambda: _ifcfg_dhcp(ifname, etc_dir),
        ]
        for check in checks:
            verdict = check()
            if verdict is not None:
                return verdict
    return any(a.address.version == 4 and not a.permanent for a in addresses)
