"""GET_IP_INFO: what the host's Networking tab shows for one adapter, in the C daemon's strings.

Data sources, cheapest first: sysfs (MAC → interface), rtnetlink (addresses, prefixes, default
gateways of that interface), small state/config files for DNS servers and the DHCP state. The
distro helpers ``hv_get_dns_info`` / ``hv_get_dhcp_info`` take precedence when installed, so
distro customisations keep working; they run once per request, concurrently, as argv lists.
The output formats are fixed by the host (spec §6.2): a malformed entry makes Hyper-V Manager
show nothing at all.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from typing import List, NamedTuple, Optional, Sequence, Tuple

from ..protocol import ADDR_FAMILY_IPV4, ADDR_FAMILY_IPV6, IpInfo
from . import netlink
from .dhcpstate import builtin_dhcp, networkd_running
from .nics import interface_mac, interfaces_by_mac, valid_ifname
from .runner import CommandError, Deadline, Result, finish, lines, start
from .textfiles import read_text

log = logging.getLogger(__name__)

# What the host can take per field (UTF-16 units, spec §2.2) minus room for a terminator and a
# safety unit: lists are cut at whole entries below these, never mid-address.
LIMIT_IP_ADDR = 1022
LIMIT_SUB_NET = 1022
LIMIT_GATE_WAY = 510
LIMIT_DNS_ADDR = 1022

DNS_HELPER = "hv_get_dns_info"
DHCP_HELPER = "hv_get_dhcp_info"
_STUB_RESOLVERS = {"127.0.0.53", "127.0.0.54"}


class AdapterNotFound(LookupError):
    """No interface carries the MAC address the host asked about."""


class Interface(NamedTuple):
    """The interface chosen for a MAC, with what netlink reported about it."""

    name: str
    index: Optional[int]
    addresses: List[netlink.Address]
    gateways: List[netlink.IPAddress]


# --------------------------------------------------------------------------- formatting


def _utf16_units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _fit(items: Sequence[str], limit: int, sep: str, trailing: bool) -> int:
    """How many leading items fit in limit UTF-16 units when joined (whole items only)."""
    used = 0
    for count, item in enumerate(items):
        used += _utf16_units(item) + (1 if trailing or count else 0)
        if used > limit:
            return count
    return len(items)


def subnet_text(address: netlink.Address) -> str:
    """IPv4: dotted netmask; IPv6: '/NN' (the leading slash is what the host expects)."""
    if address.address.version == 4:
        return str(ipaddress.IPv4Network(f"0.0.0.0/{address.prefixlen}").netmask)
    return f"/{address.prefixlen}"


def format_reply(adapter_id: str, addresses: Sequence[netlink.Address],
                 gateways: Sequence[str], dns: Sequence[str], dhcp: bool) -> IpInfo:
    """The reply strings of spec §6.2, each list cut at whole entries within the host's limits.

    ip_addr and sub_net are paired element by element, so both are cut at the same count.
    """
    ips = [str(a.address) for a in addresses]
    masks = [subnet_text(a) for a in addresses]
    count = min(_fit(ips, LIMIT_IP_ADDR, ";", False), _fit(masks, LIMIT_SUB_NET, ";", False))
    if count < len(ips):
        log.warning("GET_IP_INFO: reporting %d of %d addresses (host field limit)",
                    count, len(ips))
    family = 0
    for address in addresses[:count]:
        family |= ADDR_FAMILY_IPV4 if address.address.version == 4 else ADDR_FAMILY_IPV6
    gateways = list(gateways)[: _fit(gateways, LIMIT_GATE_WAY, ";", True)]
    dns = list(dns)[: _fit(dns, LIMIT_DNS_ADDR, ";", True)]
    return IpInfo(
        adapter_id=adapter_id,
        addr_family=family,
        dhcp_enabled=1 if dhcp else 0,
        ip_addr=";".join(ips[:count]),
        sub_net=";".join(masks[:count]),
        gate_way="".join(g + ";" for g in gateways),
        dns_addr="".join(d + ";" for d in dns),
    )


# --------------------------------------------------------------------------- interface choice


def find_interface(sysfs: str, adapter_id: str, timeout: float) -> Interface:
    """The interface with this MAC; among several (SR-IOV VF, bond, bridge), one with addresses.

    Raises AdapterNotFound when no interface has the MAC.
    """
    names = interfaces_by_mac(sysfs, adapter_id)
    if not names:
        raise AdapterNotFound(f"no interface with MAC {adapter_id!r}")
    first = None
    for name in names:
        try:
            index = socket.if_nametoindex(name)
        except OSError:
            log.debug("GET_IP_INFO: %r is in sysfs but not in this network namespace", name)
            continue
        addresses, gateways = netlink.interface_state(index, timeout)
        candidate = Interface(name, index, addresses, gateways)
        if addresses:
            return candidate
        first = first or candidate
    return first or Interface(names[0], None, [], [])


# --------------------------------------------------------------------------- DNS


def server_address(token: str) -> Optional[str]:
    """An IP address out of a resolver token ('10.0.0.2', '[fe80::1%2]:53', '1.1.1.1#dns.x').

    None for anything that is not a plain IPv4/IPv6 address once port, scope and name are gone.
    """
    token = token.split("#", 1)[0].strip()
    if token.startswith("["):
        token = token[1 : token.find("]")] if "]" in token else ""
    elif token.count(":") == 1:
        token = token.split(":", 1)[0]
    token = token.split("%", 1)[0]
    try:
        return str(ipaddress.ip_address(token))
    except ValueError:
        return None


def resolv_conf_servers(path: str) -> List[str]:
    """The nameserver lines of a resolv.conf-format file, validated, in file order."""
    servers = []
    for line in (read_text(path) or "").splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            server = server_address(fields[1])
            if server is not None and server not in servers:
                servers.append(server)
    return servers


def _state_servers(path: str) -> List[str]:
    """DNS servers of a systemd link state file (resolved: SERVERS=, networkd: DNS=)."""
    servers: List[str] = []
    for line in (read_text(path) or "").splitlines():
        key, _, value = line.partition("=")
        if key in ("SERVERS", "DNS"):
            for token in value.split():
                server = server_address(token)
                if server is not None and server not in servers:
                    servers.append(server)
    return servers


def builtin_dns(ifindex: Optional[int], etc_dir: str, run_dir: str) -> List[str]:
    """Per-link servers from systemd-resolved / networkd state, else resolv.conf's servers.

    When resolv.conf only names resolved's stub listener, the uplink list that resolved keeps in
    its own resolv.conf is reported instead of 127.0.0.53, which means nothing to the host.
    """
    if ifindex is not None:
        paths = [os.path.join(run_dir, "systemd", "resolve", "netif", str(ifindex))]
        if networkd_running(run_dir):  # a killed networkd leaves its link files behind
            paths.append(os.path.join(run_dir, "systemd", "netif", "links", str(ifindex)))
        for path in paths:
            servers = _state_servers(path)
            if servers:
                return servers
    servers = resolv_conf_servers(os.path.join(etc_dir, "resolv.conf"))
    if servers and set(servers) <= _STUB_RESOLVERS:
        uplink = resolv_conf_servers(os.path.join(run_dir, "systemd", "resolve", "resolv.conf"))
        return uplink or servers
    return servers


def helper_dns(output: str) -> List[str]:
    """Servers printed by hv_get_dns_info, one per line; lines that are no address are dropped."""
    servers = []
    for line in lines(output):
        server = server_address(line.split()[0])
        if server is None:
            log.debug("GET_IP_INFO: ignoring %s line %r", DNS_HELPER, line[:80])
        elif server not in servers:
            servers.append(server)
    return servers


# --------------------------------------------------------------------------- the request


def _helper(scripts_dir: str, name: str) -> Optional[str]:
    path = os.path.join(scripts_dir, name)
    return path if os.path.isfile(path) and os.access(path, os.X_OK) else None


def _collect(proc, name: str, deadline: Deadline, timeout: float) -> Optional[Result]:
    if proc is None:
        return None
    try:
        budget = deadline.budget(timeout)
    except CommandError:
        budget = 0.01  # out of time: finish() kills it at once
    try:
        return finish(proc, budget)
    except CommandError as exc:
        log.warning("GET_IP_INFO: %s: %s", name, exc)
        return None


def get_ip_info(request: IpInfo, *, sysfs: str, scripts_dir: str, etc_dir: str, run_dir: str,
                timeout: float, deadline: Deadline) -> Tuple[IpInfo, str]:
    """Build the GET_IP_INFO reply for request.adapter_id; returns (reply, interface name).

    Raises AdapterNotFound, netlink.NetlinkError or OSError (e.g. sysfs unreadable).
    """
    iface = find_interface(sysfs, request.adapter_id, deadline.budget(min(timeout, 2.0)))
    dns_proc = dhcp_proc = None
    if valid_ifname(iface.name):
        # Like the C daemon, report DNS servers only for an interface that has an address.
        dns_script = _helper(scripts_dir, DNS_HELPER) if iface.addresses else None
        dhcp_script = _helper(scripts_dir, DHCP_HELPER)
        try:  # both helpers run at the same time; their costs do not add up
            dns_proc = start([dns_script, iface.name]) if dns_script else None
            dhcp_proc = start([dhcp_script, iface.name]) if dhcp_script else None
        except CommandError as exc:
            log.warning("GET_IP_INFO: %s", exc)
    else:
        log.warning("GET_IP_INFO: interface name %r is unsafe; not running helpers", iface.name)
    dns_result = _collect(dns_proc, DNS_HELPER, deadline, timeout)
    dhcp_result = _collect(dhcp_proc, DHCP_HELPER, deadline, timeout)

    if not iface.addresses:
        dns = []
    elif dns_result is not None:
        dns = helper_dns(dns_result.stdout)
    else:
        dns = builtin_dns(iface.index, etc_dir, run_dir)
    dhcp_lines = lines(dhcp_result.stdout) if dhcp_result is not None else []
    if dhcp_lines:
        dhcp = dhcp_lines[0].startswith("Enabled")
    else:
        dhcp = builtin_dhcp(iface.name, iface.index, iface.addresses,
                            interface_mac(sysfs, iface.name), etc_dir, run_dir)
    gateways = [str(g) for g in iface.gateways]
    reply = format_reply(request.adapter_id, iface.addresses, gateways, dns, dhcp)
    return reply, iface.name
