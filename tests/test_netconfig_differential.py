"""GET_IP_INFO strings and the SET_IP_INFO ifcfg file: ours against Debian's hv_kvp_daemon.

Both run in the same throw-away network + mount namespace: the C daemon behind the fake kernel
of ``tests/cdaemon.py``, ours through ``NetConfig`` with the same distro helpers
(``/usr/libexec/hypervkvpd``) and, for GET_IP_INFO, also as a whole daemon behind the same
kind of fake kernel. Where the outputs differ on purpose, the test pins the
difference documented in docs/compatibility.md ("Network operations"), so neither side can
drift silently.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Sequence

import pytest
from cdaemon import c_daemon_missing
from test_netconfig_netns import addr, netns_missing, route, run_in_netns, veth

from pykvpd.protocol import HV_E_FAIL, HV_INVALIDARG, HV_S_OK

_REASON = netns_missing() or c_daemon_missing()
pytestmark = pytest.mark.skipif(_REASON is not None, reason=str(_REASON))

MAC = "00:15:5D:01:02:03"
MAC2 = "00:15:5D:0A:0B:0C"
GUID = "{f8615163-df3e-46c5-913f-f2d2f965ed0e}"
HELPERS = "/usr/libexec/hypervkvpd"

# Runs inside the namespace: the C daemon and NetConfig answer the same GET_IP_INFO requests.
_GET_CODE = r"""
import tempfile
from cdaemon import KvpPeer
from pykvpd import protocol as p
from pykvpd.netconfig import NetConfig
macs = MACS
ours = NetConfig(scripts_dir=HELPERS)
RESULT = []

def ask(peer, mac):
    reply = peer.transact(p.build_ip_message(p.OP_GET_IP_INFO, p.IpInfo(mac)))
    status = p.reply_status(reply)
    return [status, p.reply_ip_info(reply)._asdict() if status == p.HV_S_OK else None]

with tempfile.TemporaryDirectory() as work, KvpPeer.c(work) as c_peer, \
        KvpPeer.py(work, namespace=True) as py_peer:
    for mac in macs:
        status, info = ours.get_ip_info(p.IpInfo(mac))
        RESULT.append({"c": ask(c_peer, mac), "daemon": ask(py_peer, mac),
                       "py": [status, None if info is None else info._asdict()]})
"""

# Runs inside the namespace with a fake /sys/class/net holding one VMBus NIC.
_SET_CODE = r"""
import os, subprocess, tempfile
from cdaemon import KvpPeer
from pykvpd import protocol as p
from pykvpd.netconfig import NetConfig
net = "/sys/class/net"
subprocess.run(["mount", "-t", "tmpfs", "tmpfs", net], check=True)
os.makedirs(net + "/eth0/device")
with open(net + "/eth0/address", "w") as handle:
    handle.write("00:15:5d:01:02:03\n")
with open(net + "/eth0/device/device_id", "w") as handle:
    handle.write(GUID + "\n")
RESULT = []
with tempfile.TemporaryDirectory() as work, KvpPeer.c(work) as peer:
    for fields in REQUESTS:
        info = p.IpInfo(GUID, **fields)
        ifcfg = os.path.join(peer.pool_dir, "ifcfg-eth0")
        if os.path.exists(ifcfg):
            os.unlink(ifcfg)
        c_status = p.reply_status(peer.transact(p.build_ip_message(p.OP_SET_IP_INFO, info)))
        c_file = open(ifcfg).read() if os.path.exists(ifcfg) else None
        with tempfile.TemporaryDirectory() as state:
            script = os.path.join(state, "hv_set_ifconfig")  # chosen, never run (dry-run)
            with open(script, "w") as handle:
                handle.write("#!/bin/sh\nexit 0\n")
            os.chmod(script, 0o700)
            ours = NetConfig(scripts_dir=state, state_dir=state, injection="dry-run",
                             run_dir=state, etc_dir=state)
            status = ours.set_ip_info(info)
            path = os.path.join(state, "ifcfg-eth0")
            py_file = open(path).read() if os.path.exists(path) else None
        RESULT.append({"c": [c_status, c_file], "py": [status, py_file]})
"""


def compare_get(setup: Sequence[Sequence[str]], macs: Sequence[str]) -> List[Dict[str, Any]]:
    code = _GET_CODE.replace("MACS", json.dumps(list(macs))).replace("HELPERS", repr(HELPERS))
    return run_in_netns(setup, code, timeout=120)


def compare_set(requests: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    code = _SET_CODE.replace("REQUESTS", json.dumps(list(requests))).replace("GUID", repr(GUID))
    return run_in_netns([], code, timeout=120)


# --------------------------------------------------------------------------- GET_IP_INFO

# Debian 11's hyperv-daemons ships no hv_get_dns_info (Debian 12's does).
DNS_HELPER_INSTALLED = os.access(os.path.join(HELPERS, "hv_get_dns_info"), os.X_OK)


def assert_same_answer(ours: List[Any], c: List[Any]) -> None:
    """[status, reply] equal, but for the documented "DNS without helper" row of
    docs/compatibility.md: without the distro's DNS helper the C daemon reports no servers, ours
    reports the built-in ones."""
    if not DNS_HELPER_INSTALLED and ours[1] is not None and c[1] is not None:
        assert c[1]["dns_addr"] == ""
        ours = [ours[0], dict(ours[1], dns_addr="")]
    assert ours == c


def test_get_identical_for_a_dual_stack_nic():
    setup = veth("eth0", "peer0", MAC) + addr("eth0", "10.0.0.5/24") + addr("eth0", "10.0.1.7/16")
    setup += addr("eth0", "2001:db8::5/64") + addr("eth0", "fe80::215:5dff:fe01:203/64")
    setup += route("default", "via", "10.0.0.1") + route("default", "via", "2001:db8::1",
                                                         "dev", "eth0")
    [result] = compare_get(setup, [MAC])
    assert result["c"][0] == result["py"][0] == HV_S_OK
    assert_same_answer(result["py"], result["c"])
    assert result["daemon"] == result["py"]  # the same through our daemon and the wire codec
    assert result["py"][1]["ip_addr"] == "10.0.0.5;10.0.1.7;2001:db8::5;fe80::215:5dff:fe01:203"


def test_get_identical_for_ipv4_only_ipv6_only_and_no_address():
    setup = veth("eth0", "peer0", MAC) + addr("eth0", "10.0.0.5/24")
    setup += route("default", "via", "10.0.0.1")
    setup += veth("eth1", "peer1", MAC2) + addr("eth1", "2001:db8:1::5/64")
    setup += veth("eth2", "peer2", "00:15:5D:0A:0B:0D")
    results = compare_get(setup, [MAC, MAC2, "00:15:5D:0A:0B:0D", "00:15:5D:FF:FF:FF"])
    for result in results[:3]:
        assert result["c"][0] == result["py"][0] == HV_S_OK
        assert_same_answer(result["py"], result["c"])
    assert results[3]["c"] == results[3]["py"] == [HV_E_FAIL, None]


def test_get_differences_prefix_match_and_mac_notation():
    """Documented: C matches eth1 against eth10's addresses and only upper-case colon MACs."""
    setup = veth("eth1", "peer1", MAC) + addr("eth1", "10.0.1.5/24")
    setup += veth("eth10", "peer10", MAC2) + addr("eth10", "10.0.10.5/24")
    [eth1, lower] = compare_get(setup, [MAC, MAC.lower()])
    assert eth1["c"][1]["ip_addr"] == "10.0.1.5;10.0.10.5"
    assert eth1["py"][1]["ip_addr"] == "10.0.1.5"
    assert eth1["c"][1]["sub_net"] == "255.255.255.0;255.255.255.0"
    assert eth1["py"][1]["sub_net"] == "255.255.255.0"
    assert lower["c"] == [HV_E_FAIL, None]
    assert lower["py"][0] == HV_S_OK and lower["py"][1]["ip_addr"] == "10.0.1.5"


# --------------------------------------------------------------------------- SET_IP_INFO

SPEC = dict(dhcp_enabled=0, ip_addr="10.0.0.5;2001:db8::5", sub_net="255.255.255.0;64",
            gate_way="10.0.0.1", dns_addr="10.0.0.2")


def test_set_ifcfg_identical_for_canonical_requests():
    requests = [
        SPEC,
        dict(SPEC, dhcp_enabled=1),
        dict(dhcp_enabled=1, ip_addr="", sub_net="", gate_way="", dns_addr=""),
        dict(dhcp_enabled=0, ip_addr="10.0.0.5;10.0.1.6", sub_net="255.255.255.0;255.255.0.0",
             gate_way="10.0.0.1;10.0.0.254", dns_addr="10.0.0.2;2001:db8::53;10.0.0.3"),
        dict(dhcp_enabled=0, ip_addr="2001:db8::5;2001:db8:1::6", sub_net="64;48",
             gate_way="2001:db8::1", dns_addr="2001:db8::53"),
    ]
    for request, result in zip(requests, compare_set(requests)):
        # Debian ships no hv_set_ifconfig: the C daemon always ends with HV_E_FAIL (spec §0).
        assert result["c"][0] == HV_E_FAIL, request
        assert result["py"][0] == HV_S_OK, request
        assert result["py"][1] == result["c"][1], request


def test_set_documented_differences():
    requests = [
        dict(SPEC, sub_net="255.255.255.0;/64"),  # C copies '/64' verbatim
        dict(SPEC, ip_addr="10.0.0.5", sub_net="24"),  # C: IPV6NETMASK=24 for an IPv4 prefix
        dict(SPEC, ip_addr="10.0.0.5;bogus", sub_net="24;24"),  # C: half-written file
    ]
    slash, prefix, bogus = compare_set(requests)
    assert "IPV6NETMASK=/64\n" in slash["c"][1] and "IPV6NETMASK=64\n" in slash["py"][1]
    assert slash["c"][1].replace("=/64", "=64") == slash["py"][1]
    assert "IPV6NETMASK=24\n" in prefix["c"][1]
    assert "NETMASK0=255.255.255.0\n" in prefix["py"][1]
    assert bogus["c"][0] == bogus["py"][0] == HV_INVALIDARG
    assert bogus["c"][1] is not None and "IPADDR0=10.0.0.5" in bogus["c"][1]
    assert bogus["py"][1] is None
