"""GET_IP_INFO in real network namespaces: the exact strings the host receives (spec §6.2)."""

from __future__ import annotations

import os
import stat
from typing import Any, Dict, List, Sequence

import pytest
from test_netconfig_netns import addr, get_ip_info_code, netns_missing, route, run_in_netns, veth

from pykvpd.protocol import HV_E_FAIL, HV_GUID_NOTFOUND, HV_S_OK

pytestmark = pytest.mark.skipif(netns_missing() is not None, reason=str(netns_missing()))

MAC = "00:15:5D:01:02:03"
MAC2 = "00:15:5D:0A:0B:0C"


@pytest.fixture()
def dirs(tmp_path) -> Dict[str, str]:
    """Empty helper dir, an etc with a resolv.conf, an empty run dir (no systemd state)."""
    for sub in ("scripts", "etc", "run"):
        (tmp_path / sub).mkdir()
    (tmp_path / "etc" / "resolv.conf").write_text("nameserver 192.0.2.53\n")
    return {"scripts_dir": str(tmp_path / "scripts"), "etc_dir": str(tmp_path / "etc"),
            "run_dir": str(tmp_path / "run"), "timeout": 5.0}


def get(setup: Sequence[Sequence[str]], macs: Sequence[str], config: Dict[str, Any]) -> List:
    return run_in_netns(setup, get_ip_info_code(macs, config))


def fields(reply: Dict[str, Any]) -> tuple:
    return (reply["ip_addr"], reply["sub_net"], reply["gate_way"], reply["dns_addr"],
            reply["addr_family"], reply["dhcp_enabled"])


def test_ipv4_only(dirs):
    setup = veth("v0", "p0", MAC) + addr("v0", "10.0.0.5/24") + route("default", "via", "10.0.0.1")
    [(status, reply)] = get(setup, [MAC], dirs)
    assert status == HV_S_OK
    assert fields(reply) == ("10.0.0.5", "255.255.255.0", "10.0.0.1;", "192.0.2.53;", 1, 0)
    assert reply["adapter_id"] == MAC


def test_ipv6_only(dirs):
    setup = veth("v0", "p0", MAC) + addr("v0", "2001:db8::5/64")
    setup += route("default", "via", "2001:db8::1", "dev", "v0")
    [(status, reply)] = get(setup, [MAC], dirs)
    assert status == HV_S_OK
    assert fields(reply) == ("2001:db8::5", "/64", "2001:db8::1;", "192.0.2.53;", 2, 0)


def test_dual_stack_matches_the_spec_example(dirs):
    """Spec §10.3: the reply strings for the documented example NIC."""
    with open(os.path.join(dirs["etc_dir"], "resolv.conf"), "w") as handle:
        handle.write("nameserver 10.0.0.2\n")
    setup = veth("v0", "p0", MAC) + addr("v0", "10.0.0.5/24") + addr("v0", "2001:db8::5/64")
    setup += addr("v0", "fe80::215:5dff:fe01:203/64") + route("default", "via", "10.0.0.1")
    [(status, reply)] = get(setup, [MAC], dirs)
    assert status == HV_S_OK
    assert reply["ip_addr"] == "10.0.0.5;2001:db8::5;fe80::215:5dff:fe01:203"
    assert reply["sub_net"] == "255.255.255.0;/64;/64"
    assert reply["gate_way"] == "10.0.0.1;"
    assert reply["dns_addr"] == "10.0.0.2;"
    assert reply["addr_family"] == 3


def test_several_addresses_keep_kernel_order_and_pairing(dirs):
    setup = veth("v0", "p0", MAC)
    for cidr in ("10.0.1.6/16", "10.0.0.5/24", "10.0.0.7/24", "2001:db8::5/64",
                 "2001:db8:1::6/48"):
        setup += addr("v0", cidr)
    [(status, reply)] = get(setup, [MAC], dirs)
    assert status == HV_S_OK
    # IPv4 in insertion order; the kernel lists IPv6 addresses newest first.
    assert reply["ip_addr"] == "10.0.1.6;10.0.0.5;10.0.0.7;2001:db8:1::6;2001:db8::5"
    assert reply["sub_net"] == "255.255.0.0;255.255.255.0;255.255.255.0;/48;/64"
    assert reply["addr_family"] == 3
    assert reply["gate_way"] == ""


def test_no_address_is_success_with_empty_lists(dirs):
    [(status, reply)] = get(veth("v0", "p0", MAC), [MAC], dirs)
    assert status == HV_S_OK
    assert fields(reply) == ("", "", "", "", 0, 0)  # no DNS either, as in the C daemon


def test_link_down_still_reports_addresses(dirs):
    setup = veth("v0", "p0", MAC, up=False) + addr("v0", "10.0.0.5/24")
    [(status, reply)] = get(setup, [MAC], dirs)
    assert (status, reply["ip_addr"], reply["addr_family"]) == (HV_S_OK, "10.0.0.5", 1)


def test_link_local_only(dirs):
    setup = veth("v0", "p0", MAC) + addr("v0", "fe80::215:5dff:fe01:203/64")
    setup += route("default", "via", "fe80::1", "dev", "v0")
    [(status, reply)] = get(setup, [MAC], dirs)
    assert status == HV_S_OK
    assert fields(reply)[:5] == ("fe80::215:5dff:fe01:203", "/64", "fe80::1;", "192.0.2.53;", 2)


def test_several_default_routes_only_this_interfaces(dirs):
    """Gateways of the asked-for interface only, IPv4 first, in the kernel's route order."""
    setup = veth("v0", "p0", MAC) + veth("v2", "p2", MAC2)
    setup += addr("v0", "10.0.0.5/24") + addr("v0", "2001:db8::5/64") + addr("v2", "10.9.0.5/24")
    setup += route("default", "via", "10.0.0.1", "metric", "100")
    setup += route("default", "via", "10.0.0.2", "metric", "50")
    setup += route("default", "via", "10.9.0.1", "metric", "300")
    setup += route("default", "via", "2001:db8::1", "dev", "v0")
    setup += route("198.51.100.0/24", "via", "10.0.0.9")  # not a default route
    [(s0, r0), (s2, r2)] = get(setup, [MAC, MAC2], dirs)
    assert (s0, s2) == (HV_S_OK, HV_S_OK)
    assert r0["gate_way"] == "10.0.0.2;10.0.0.1;2001:db8::1;"
    assert r2["gate_way"] == "10.9.0.1;"


def test_multipath_default_route_contributes_this_interfaces_nexthop(dirs):
    setup = veth("v0", "p0", MAC) + veth("v2", "p2", MAC2)
    setup += addr("v0", "10.0.0.5/24") + addr("v2", "10.9.0.5/24")
    setup += route("default", "nexthop", "via", "10.0.0.3", "dev", "v0",
                   "nexthop", "via", "10.9.0.1", "dev", "v2")
    [(_, r0), (_, r2)] = get(setup, [MAC, MAC2], dirs)
    assert (r0["gate_way"], r2["gate_way"]) == ("10.0.0.3;", "10.9.0.1;")


def test_mac_notations_and_unknown_mac(dirs):
    setup = veth("v0", "p0", MAC) + addr("v0", "10.0.0.5/24")
    macs = [MAC, MAC.lower(), MAC.replace(":", "-"), MAC.lower().replace(":", "-"),
            " 00155D010203 ", "00:15:5D:01:02:04", "not a mac", "", "00:00:00:00:00:00"]
    results = get(setup, macs, dirs)
    for status, reply in results[:5]:
        assert status == HV_S_OK
        assert reply["ip_addr"] == "10.0.0.5"
    assert [r[0] for r in results[5:]] == [HV_E_FAIL] * 4
    assert [r[1] for r in results[5:]] == [None] * 4
    # The reply echoes the host's adapter_id as it was sent.
    assert results[2][1]["adapter_id"] == MAC.replace(":", "-")


def test_exact_interface_match_not_prefix(dirs):
    """C bug (spec §9 row 13): eth1 also collected eth10's addresses. Names here: v1 / v10."""
    setup = veth("v1", "p1", MAC) + veth("v10", "p10", MAC2)
    setup += addr("v1", "10.0.1.5/24") + addr("v10", "10.0.10.5/24")
    [(_, r1), (_, r10)] = get(setup, [MAC, MAC2], dirs)
    assert (r1["ip_addr"], r10["ip_addr"]) == ("10.0.1.5", "10.0.10.5")


def test_two_nics_sharing_a_mac_report_the_one_with_addresses(dirs):
    """SR-IOV: the VF has the synthetic NIC's MAC but no address (sorted first here: 'a0')."""
    setup = veth("a0", "p0", MAC) + veth("v5", "p5", MAC) + addr("v5", "10.0.0.5/24")
    [(status, reply)] = get(setup, [MAC], dirs)
    assert (status, reply["ip_addr"]) == (HV_S_OK, "10.0.0.5")


def test_two_nics_sharing_a_mac_without_addresses(dirs):
    setup = veth("a0", "p0", MAC) + veth("v5", "p5", MAC)
    [(status, reply)] = get(setup, [MAC], dirs)
    assert (status, reply["ip_addr"], reply["addr_family"]) == (HV_S_OK, "", 0)


def _script(path: str, body: str) -> None:
    with open(path, "w") as handle:
        handle.write("#!/bin/sh\n" + body)
    os.chmod(path, stat.S_IRWXU)


def test_distro_helpers_are_run_with_the_interface_name(dirs, tmp_path):
    log = tmp_path / "argv.log"
    scripts = dirs["scripts_dir"]
    _script(os.path.join(scripts, "hv_get_dns_info"),
            f'echo "dns $*" >> {log}\necho 10.1.1.1\necho\necho "  2001:db8::53  "\n'
            'echo "search example.test"\necho 10.1.1.1\n')
    _script(os.path.join(scripts, "hv_get_dhcp_info"), f'echo "dhcp $*" >> {log}\necho Enabled\n')
    setup = veth("v0", "p0", MAC) + addr("v0", "10.0.0.5/24")
    [(status, reply)] = get(setup, [MAC], dirs)
    assert status == HV_S_OK
    assert reply["dns_addr"] == "10.1.1.1;2001:db8::53;"  # junk line dropped, duplicate once
    assert reply["dhcp_enabled"] == 1
    assert sorted(log.read_text().splitlines()) == ["dhcp v0", "dns v0"]


def test_dhcp_helper_saying_disabled(dirs):
    _script(os.path.join(dirs["scripts_dir"], "hv_get_dhcp_info"), "echo Disabled\n")
    setup = veth("v0", "p0", MAC) + addr("v0", "10.0.0.5/24", "valid_lft", "300",
                                         "preferred_lft", "300")
    [(_, reply)] = get(setup, [MAC], dirs)
    assert reply["dhcp_enabled"] == 0  # the helper wins over the address-lifetime heuristic


def test_dhcp_from_address_lifetime_without_any_configuration(dirs):
    setup = veth("v0", "p0", MAC) + addr("v0", "10.0.0.5/24", "valid_lft", "300",
                                         "preferred_lft", "300")
    setup += veth("v2", "p2", MAC2) + addr("v2", "10.9.0.5/24")
    [(_, r0), (_, r2)] = get(setup, [MAC, MAC2], dirs)
    assert (r0["dhcp_enabled"], r2["dhcp_enabled"]) == (1, 0)


def test_hanging_helper_is_killed_and_builtin_data_used(dirs, tmp_path):
    pidfile = tmp_path / "helper.pid"
    _script(os.path.join(dirs["scripts_dir"], "hv_get_dns_info"),
            f"echo $$ > {pidfile}\nsleep 30\necho 10.1.1.1\n")
    config = dict(dirs, timeout=1.0)
    code = get_ip_info_code([MAC], config) + (
        "import os\n"
        f"pid = open({str(pidfile)!r}).read().strip()\n"
        "RESULT.append(os.path.exists('/proc/' + pid))\n")
    setup = veth("v0", "p0", MAC) + addr("v0", "10.0.0.5/24")
    [(status, reply), helper_alive] = run_in_netns(setup, code)
    assert status == HV_S_OK
    assert reply["dns_addr"] == "192.0.2.53;"  # the helper's answer never came
    assert helper_alive is False


def test_hostile_interface_name_runs_no_helper(dirs, tmp_path):
    """Linux allows ';', '$' and '(' in names; such a name never reaches a helper."""
    log = tmp_path / "argv.log"
    _script(os.path.join(dirs["scripts_dir"], "hv_get_dns_info"), f'echo "$*" >> {log}\n')
    name = "x;$(touch)"
    setup = [["ip", "link", "add", name, "address", MAC, "type", "veth", "peer", "name", "p0"]]
    setup += addr(name, "10.0.0.5/24")
    [(status, reply)] = get(setup, [MAC], dirs)
    assert (status, reply["ip_addr"]) == (HV_S_OK, "10.0.0.5")
    assert not log.exists()


def test_get_does_not_load_the_set_side(dirs):
    """The first GET after start pays for every import (bench_ipinfo.py: ~25-50 ms with them
    all); validation, rendering and the backends are loaded only by a SET."""
    code = get_ip_info_code([MAC], dirs) + (
        "import sys\n"
        "side = ('inject', 'plan', 'backends', 'ifupdown')\n"
        "loaded = lambda: sorted(m for m in side if 'pykvpd.netconfig.' + m in sys.modules)\n"
        "RESULT.append(loaded())\n"
        "RESULT.append(nc.set_ip_info(IpInfo('{00000000-1111-4222-8333-444444444444}')))\n"
        "RESULT.append(loaded())\n")
    [(status, reply), after_get, set_status, after_set] = run_in_netns(
        veth("v0", "p0", MAC) + addr("v0", "192.0.2.5/24"), code)
    assert status == HV_S_OK and reply["ip_addr"] == "192.0.2.5"
    assert after_get == []
    assert set_status == HV_GUID_NOTFOUND
    assert after_set == ["backends", "ifupdown", "inject", "plan"]
