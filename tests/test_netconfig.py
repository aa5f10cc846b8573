"""netconfig pure parts: reply formatting and truncation, DNS/DHCP detection, the SET parser
(with a hypothesis fuzz: no exception escapes, nothing is written for invalid input)."""

from __future__ import annotations

import ipaddress
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pykvpd.netconfig import NetConfig
from pykvpd.netconfig.dhcpstate import builtin_dhcp as dhcp_of_link
from pykvpd.netconfig.inject import InvalidRequest, parse_prefix, parse_request, write_atomic
from pykvpd.netconfig.ipinfo import (
    LIMIT_GATE_WAY,
    LIMIT_IP_ADDR,
    Interface,
    builtin_dns,
    format_reply,
    server_address,
)
from pykvpd.netconfig.netlink import Address
from pykvpd.netconfig.nics import guid_key, mac_key, valid_ifname
from pykvpd.protocol import HV_INVALIDARG, HV_S_OK, IpInfo

GUID = "{f8615163-df3e-46c5-913f-f2d2f965ed0e}"


def a(text: str, permanent: bool = True) -> Address:
    iface = ipaddress.ip_interface(text)
    return Address(iface.ip, iface.network.prefixlen, permanent)


# --------------------------------------------------------------------------- GET formatting


def test_format_reply_strings():
    reply = format_reply("00:15:5D:01:02:03", [a("10.0.0.5/24"), a("2001:db8::5/64")],
                         ["10.0.0.1", "fe80::1"], ["10.0.0.2"], True)
    assert reply == IpInfo("00:15:5D:01:02:03", 3, 1, "10.0.0.5;2001:db8::5",
                           "255.255.255.0;/64", "10.0.0.1;fe80::1;", "10.0.0.2;")


def test_format_reply_cuts_whole_entries_and_keeps_pairs():
    addresses = [a(f"2001:db8:{i:x}::{i:x}/64") for i in range(200)]
    reply = format_reply("m", addresses, [f"10.0.{i}.1" for i in range(100)],
                         [f"10.1.{i}.53" for i in range(200)], False)
    ips, masks = reply.ip_addr.split(";"), reply.sub_net.split(";")
    assert len(reply.ip_addr) <= LIMIT_IP_ADDR and len(ips) == len(masks)
    assert ips == [str(x.address) for x in addresses[: len(ips)]]  # whole, in order
    assert len(reply.ip_addr) + len(";") + len(str(addresses[len(ips)].address)) > LIMIT_IP_ADDR
    assert len(reply.gate_way) <= LIMIT_GATE_WAY and reply.gate_way.endswith(";")
    assert all(ipaddress.ip_address(g) for g in reply.gate_way.split(";")[:-1])
    assert len(reply.dns_addr) <= 1022 and reply.dns_addr.endswith(";")


def test_format_reply_pairs_limited_by_the_longer_subnet_list():
    # IPv4 subnets are longer than their addresses: sub_net decides how many fit.
    addresses = [a(f"1.1.{i % 256}.{i // 256 + 1}/24") for i in range(300)]
    reply = format_reply("m", addresses, [], [], False)
    assert len(reply.sub_net) <= 1022
    assert len(reply.sub_net.split(";")) == len(reply.ip_addr.split(";"))


@pytest.mark.parametrize("token, expected", [
    ("10.0.0.2", "10.0.0.2"), ("10.0.0.2:53", "10.0.0.2"), ("[2001:db8::1]:53", "2001:db8::1"),
    ("fe80::1%2", "fe80::1"), ("1.1.1.1#cloudflare-dns.com", "1.1.1.1"),
    ("2001:db8::1", "2001:db8::1"),
    ("dns.example", None), ("", None), ("[x]", None),
])
def test_server_address(token, expected):
    assert server_address(token) == expected


def test_builtin_dns_prefers_per_link_state(tmp_path):
    etc, run = tmp_path / "etc", tmp_path / "run"
    etc.mkdir()
    (etc / "resolv.conf").write_text("# x\nnameserver 127.0.0.53\noptions edns0\n")
    assert builtin_dns(2, str(etc), str(run)) == ["127.0.0.53"]  # nothing better known
    (run / "systemd" / "resolve").mkdir(parents=True)
    (run / "systemd" / "resolve" / "resolv.conf").write_text(
        "nameserver 10.0.0.2\nnameserver 10.0.0.3\nnameserver junk\n")
    assert builtin_dns(2, str(etc), str(run)) == ["10.0.0.2", "10.0.0.3"]
    (run / "systemd" / "netif" / "links").mkdir(parents=True)
    (run / "systemd" / "netif" / "links" / "2").write_text("ADMIN_STATE=configured\n"
                                                          "DNS=10.2.2.2 2001:db8::53\n")
    assert builtin_dns(2, str(etc), str(run)) == ["10.2.2.2", "2001:db8::53"]
    assert builtin_dns(3, str(etc), str(run)) == ["10.0.0.2", "10.0.0.3"]
    (run / "systemd" / "resolve" / "netif").mkdir()
    (run / "systemd" / "resolve" / "netif" / "2").write_text(
        "# This is private data. Do not parse.\nSERVERS=10.9.9.9#dns.test [fe80::1%2]:53\n")
    assert builtin_dns(2, str(etc), str(run)) == ["10.9.9.9", "fe80::1"]


def iface(*addresses: Address, name: str = "eth0", index: int = 2) -> Interface:
    return Interface(name, index, list(addresses), [])


def builtin_dhcp(link: Interface, mac, etc: str, run: str) -> bool:
    return dhcp_of_link(link.name, link.index, link.addresses, mac, etc, run)


def test_builtin_dhcp_sources(tmp_path):
    etc, run = tmp_path / "etc", tmp_path / "run"
    static, dynamic = a("10.0.0.5/24"), a("10.0.0.5/24", permanent=False)
    assert builtin_dhcp(iface(static), None, str(etc), str(run)) is False
    assert builtin_dhcp(iface(dynamic), None, str(etc), str(run)) is True
    assert builtin_dhcp(iface(a("2001:db8::5/64", False)), None, str(etc), str(run)) is False

    (etc / "sysconfig" / "network-scripts").mkdir(parents=True)
    (etc / "sysconfig" / "network-scripts" / "ifcfg-eth0").write_text('BOOTPROTO="dhcp"\n')
    assert builtin_dhcp(iface(static), None, str(etc), str(run)) is True

    (etc / "network" / "interfaces.d").mkdir(parents=True)
    (etc / "network" / "interfaces").write_text("auto eth0\niface eth0 inet static\n")
    assert builtin_dhcp(iface(dynamic), None, str(etc), str(run)) is False
    (etc / "network" / "interfaces.d" / "eth0").write_text("iface eth0 inet dhcp\n")
    assert builtin_dhcp(iface(static), None, str(etc), str(run)) is True

    (etc / "systemd" / "network").mkdir(parents=True)
    (etc / "systemd" / "network" / "10-eth.network").write_text(
        "[Match]\nName=eth* en*\n\n[Network]\nDHCP=no\n")
    assert builtin_dhcp(iface(static), None, str(etc), str(run)) is True  # networkd not running
    # networkd runs (no systemd here: its links directory says so), the link has no state file
    # yet: the first matching file in /etc decides.
    (run / "systemd" / "netif" / "links").mkdir(parents=True)
    assert builtin_dhcp(iface(dynamic), None, str(etc), str(run)) is False
    chosen = tmp_path / "chosen.network"
    chosen.write_text("[Network]\nDHCP=yes\n")
    (run / "systemd" / "netif" / "links" / "2").write_text(f"NETWORK_FILE={chosen}\n")
    assert builtin_dhcp(iface(static), None, str(etc), str(run)) is True

    nm = etc / "NetworkManager" / "system-connections"
    nm.mkdir(parents=True)
    (run / "NetworkManager").mkdir()  # running (no systemd here: its /run directory says so)
    (nm / "other.nmconnection").write_text("[connection]\ninterface-name=eth1\n[ipv4]\n"
                                            "method=auto\n")
    (nm / "by-mac.nmconnection").write_text("[ethernet]\nmac-address=00:15:5d:01:02:03\n"
                                             "[ipv4]\nmethod=manual\n")
    assert builtin_dhcp(iface(static), "00:15:5D:01:02:03", str(etc), str(run)) is False
    assert builtin_dhcp(iface(static, name="eth1"), None, str(etc), str(run)) is True


def test_killed_networkd_leaves_link_files_that_have_no_say(tmp_path):
    """Found against real networkd 252: a clean stop removes /run/systemd/netif/links/*, a
    SIGKILL leaves them. Under systemd the unit's invocation link says whether it runs."""
    etc, run = tmp_path / "etc", tmp_path / "run"
    (etc / "systemd" / "network").mkdir(parents=True)
    (etc / "systemd" / "network" / "10-eth0.network").write_text(
        "[Match]\nName=eth0\n\n[Network]\nDHCP=ipv4\n")
    (run / "systemd" / "netif" / "links").mkdir(parents=True)
    (run / "systemd" / "netif" / "links" / "2").write_text(
        f"NETWORK_FILE={etc}/systemd/network/10-eth0.network\nDNS=192.0.2.53\n")
    (etc / "network").mkdir()
    (etc / "network" / "interfaces").write_text("auto eth0\niface eth0 inet static\n")
    (etc / "resolv.conf").write_text("nameserver 198.51.100.53\n")
    units = run / "systemd" / "units"
    units.mkdir()
    static = a("192.0.2.30/24")
    # networkd dead, ifupdown configured the link statically.
    assert builtin_dhcp(iface(static), None, str(etc), str(run)) is False
    assert builtin_dns(2, str(etc), str(run)) == ["198.51.100.53"]
    (units / "invocation:systemd-networkd.service").symlink_to("0123456789abcdef")
    assert builtin_dhcp(iface(static), None, str(etc), str(run)) is True
    assert builtin_dns(2, str(etc), str(run)) == ["192.0.2.53"]


def test_networkmanager_dhcp_verdict_follows_the_active_profile(tmp_path):
    """Issue 13 fix 2: eth0.nmconnection (auto) sorts first, hyperv-eth0 (manual) is active."""
    etc, run = tmp_path / "etc", tmp_path / "run"
    nm = etc / "NetworkManager" / "system-connections"
    nm.mkdir(parents=True)
    (nm / "eth0.nmconnection").write_text(
        "[connection]\nid=eth0\nuuid=11111111-1111-4111-8111-111111111111\n"
        "interface-name=eth0\n[ipv4]\nmethod=auto\n")
    (nm / "hyperv-eth0.nmconnection").write_text(
        "[connection]\nid=hyperv-eth0\nuuid=22222222-2222-4222-8222-222222222222\n"
        "interface-name=eth0\nautoconnect-priority=50\n[ipv4]\nmethod=manual\n"
        "address1=192.0.2.5/24\n")
    devices = run / "NetworkManager" / "devices"
    devices.mkdir(parents=True)
    dynamic = a("192.0.2.5/24", permanent=False)
    # Not activated yet: the profile NetworkManager would pick (highest priority) decides.
    assert builtin_dhcp(iface(dynamic), None, str(etc), str(run)) is False
    (devices / "2").write_text("[device]\nmanaged=true\n"
                               "connection-uuid=22222222-2222-4222-8222-222222222222\n")
    assert builtin_dhcp(iface(dynamic), None, str(etc), str(run)) is False
    (devices / "2").write_text("[device]\nmanaged=true\n"
                               "connection-uuid=11111111-1111-4111-8111-111111111111\n")
    assert builtin_dhcp(iface(a("192.0.2.5/24")), None, str(etc), str(run)) is True
    # Stopped under systemd (its /run directory stays behind): NetworkManager has no say.
    (run / "systemd" / "units").mkdir(parents=True)
    assert builtin_dhcp(iface(a("192.0.2.5/24")), None, str(etc), str(run)) is False


# --------------------------------------------------------------------------- names and ids


@pytest.mark.parametrize("text, key", [
    ("00:15:5D:01:02:03", "00155d010203"), ("00-15-5d-01-02-03", "00155d010203"),
    ("0015.5d01.0203", "00155d010203"), ("00155D010203", "00155d010203"),
    ("00:00:00:00:00:00", None), ("00:15:5D:01:02", None), ("zz:15:5D:01:02:03", None), ("", None),
])
def test_mac_key(text, key):
    assert mac_key(text) == key


def test_guid_key():
    bare = GUID.strip("{}")
    assert guid_key(GUID) == guid_key(bare.upper()) == guid_key(f" {{{bare}}}\n") == bare
    assert guid_key(bare + "0") is None and guid_key("{" + bare) is None


@pytest.mark.parametrize("name, ok", [
    ("eth0", True), ("enP1234s0", True), ("eth0.100", True), ("br-lan", True), ("a" * 15, True),
    ("a" * 16, False), ("", False), ("-x", False), (".", False), ("..", False), ("a/b", False),
    ("a b", False), ("a;b", False), ("a$b", False), ("a\nb", False), ("eth0:1", False),
])
def test_valid_ifname(name, ok):
    assert valid_ifname(name) is ok


@pytest.mark.parametrize("text, version, prefix", [
    ("24", 4, 24), ("/24", 4, 24), ("255.255.255.0", 4, 24), ("255.255.255.255", 4, 32),
    ("128.0.0.0", 4, 1), ("64", 6, 64), ("/128", 6, 128), ("ffff:ffff:ffff:ffff::", 6, 64),
])
def test_parse_prefix(text, version, prefix):
    assert parse_prefix(text, version) == prefix


@pytest.mark.parametrize("text", ["010.0.0.5", "10.0.0.05", "10.00.0.5", "::ffff:010.0.0.5"])
def test_ipv4_octet_with_leading_zero_is_invalid_on_every_python(text):
    """CPython before 3.9.5 (Debian 11's 3.9.2) reads '010' as decimal 10, inet_aton as octal 8."""
    info = IpInfo(GUID, 1, 0, text, "24", "10.0.0.1", "10.0.0.2")
    with pytest.raises(InvalidRequest, match="is not an IP address"):
        parse_request(info)
    with pytest.raises(InvalidRequest, match="is not an IP address"):
        parse_request(info._replace(ip_addr="10.0.0.5", gate_way=text))


@pytest.mark.parametrize("text", ["255.255.255.00", "255.255.0255.0"])
def test_ipv4_netmask_with_leading_zero_is_invalid(text):
    with pytest.raises(InvalidRequest, match="no IPv4 prefix or netmask"):
        parse_prefix(text, 4)


def test_ipv6_hextets_may_have_leading_zeros():
    info = IpInfo(GUID, 2, 0, "2001:0db8:0000::0005", "64", "", "")
    assert str(parse_request(info).addresses[0].address) == "2001:db8::5"


def test_write_atomic_refuses_path_names(tmp_path):
    for name in ("../x", "a/b", "..", ".", "", "a\0b"):
        with pytest.raises(ValueError):
            write_atomic(str(tmp_path), name, "x")
    assert list(tmp_path.iterdir()) == []


def test_write_atomic_replaces_a_symlink_instead_of_following_it(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "ifcfg-eth0").symlink_to(victim)
    write_atomic(str(tmp_path / "conf"), "ifcfg-eth0", "new")
    assert victim.read_text() == "keep"
    assert (tmp_path / "conf" / "ifcfg-eth0").read_text() == "new"


# --------------------------------------------------------------------------- fuzz

_ELEMENTS = st.one_of(
    st.ip_addresses().map(str),
    st.integers(min_value=-5, max_value=200).map(str),
    st.integers(min_value=0, max_value=200).map(lambda n: f"/{n}"),
    st.sampled_from(["255.255.255.0", "255.0.255.0", "ffff::", "::", "0.0.0.0", "$(id)", "`x`",
                     "10.0.0.5%eth0", " ", "", "1" * 60, "::ffff:10.0.0.5", "fe80::1"]),
    st.text(max_size=50),
)
_LISTS = st.lists(_ELEMENTS, max_size=8).map(";".join) | st.text(max_size=300)


@settings(max_examples=400, deadline=None)
@given(ip=_LISTS, sub=_LISTS, gw=_LISTS, dns=_LISTS, dhcp=st.integers(0, 255))
def test_fuzz_parser_only_raises_invalid_request(ip, sub, gw, dns, dhcp):
    request = IpInfo(GUID, 0, dhcp, ip, sub, gw, dns)
    try:
        config = parse_request(request)
    except InvalidRequest:
        return
    assert len(config.addresses) == len([e for e in ip.split(";") if e.strip()])
    for entry in config.addresses:
        assert 1 <= entry.prefixlen <= entry.address.max_prefixlen


def _fake_sysfs(root: Path) -> None:
    nic = root / "class" / "net" / "eth0"
    (nic / "device").mkdir(parents=True)
    (nic / "address").write_text("00:15:5d:01:02:03\n")
    (nic / "device" / "device_id").write_text(GUID + "\n")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ip=_LISTS, sub=_LISTS, gw=_LISTS, dns=_LISTS, dhcp=st.integers(0, 1))
def test_fuzz_set_ip_info_writes_nothing_for_invalid_input(ip, sub, gw, dns, dhcp):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _fake_sysfs(root / "sys")
        for d in ("state", "etc", "run", "scripts"):
            (root / d).mkdir()
        script = root / "scripts" / "hv_set_ifconfig"
        script.write_text(f"#!/bin/sh\necho \"$@\" >> {root}/calls\n")
        script.chmod(0o700)
        nc = NetConfig(sysfs=str(root / "sys"), scripts_dir=str(root / "scripts"),
                       state_dir=str(root / "state"), etc_dir=str(root / "etc"),
                       run_dir=str(root / "run"), timeout=5.0)
        request = IpInfo(GUID, 0, dhcp, ip, sub, gw, dns)
        status = nc.set_ip_info(request)
        assert status in (HV_S_OK, HV_INVALIDARG)
        state = sorted(os.listdir(root / "state"))
        if status == HV_INVALIDARG:
            assert state == [] and not (root / "calls").exists()
        else:
            assert state == ["eth0.nmconnection", "ifcfg-eth0"]
            assert (root / "calls").read_text().count("\n") == 1
        expected = {"etc", "run", "scripts", "state", "sys"} | ({"calls"} if status == HV_S_OK
                                                                else set())
        assert set(os.listdir(root)) == expected
        assert os.listdir(root / "etc") == os.listdir(root / "run") == []
