"""SET_IP_INFO end to end on a fake sysfs tree, with stand-in nmcli/networkctl/ifup/ifdown.

Nothing here touches the machine's network: sysfs, /etc, /run, the state directory and the
helper directory are temporary trees, and the network tools are stand-ins on PATH that record
their argv (and what the configuration directory held when they ran).
"""

from __future__ import annotations

import json
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from pykvpd.netconfig import NetConfig
from pykvpd.netconfig.inject import keyfile_uuid
from pykvpd.protocol import HV_E_FAIL, HV_GUID_NOTFOUND, HV_INVALIDARG, HV_S_OK, IpInfo

GUID = "{f8615163-df3e-46c5-913f-f2d2f965ed0e}"
MAC = "00:15:5d:01:02:03"

SPEC_IFCFG = """\
HWADDR=00:15:5D:01:02:03
DEVICE=eth0
BOOTPROTO=none
IPADDR0=10.0.0.5
IPV6ADDR=2001:0db8:0000:0000:0000:0000:0000:0005
NETMASK0=255.255.255.0
IPV6NETMASK=64
GATEWAY=10.0.0.1
DNS1=10.0.0.2
"""

SPEC_KEYFILE = """
[connection]
interface-name=eth0

[ethernet]
mac-address=00:15:5D:01:02:03

[ipv4]
address1=10.0.0.5/24
method=manual
gateway=10.0.0.1
dns=10.0.0.2

[ipv6]
address1=2001:db8::5/64
method=manual
"""

STANDIN = """#!{python}
import json, os, sys
watch = os.environ.get("STANDIN_WATCH")
seen = sorted(os.listdir(watch)) if watch and os.path.isdir(watch) else []
with open({log!r}, "a") as handle:
    handle.write(json.dumps([os.path.basename(sys.argv[0])] + sys.argv[1:] + [seen]) + "\\n")
status = {status_dir!r} + "/" + os.path.basename(sys.argv[0])
sys.exit(int(open(status).read()) if os.path.exists(status) else 0)
"""


def spec_request(**changes: object) -> IpInfo:
    """The spec §10.3 example request; keyword arguments replace fields."""
    fields = dict(adapter_id=GUID, addr_family=3, dhcp_enabled=0, ip_addr="10.0.0.5;2001:db8::5",
                  sub_net="255.255.255.0;64", gate_way="10.0.0.1", dns_addr="10.0.0.2")
    fields.update(changes)
    return IpInfo(**fields)  # type: ignore[arg-type]


def add_nic(sysfs: Path, name: str, mac: str, guid: Optional[str], ifindex: int) -> None:
    nic = sysfs / "class" / "net" / name
    nic.mkdir(parents=True)
    (nic / "address").write_text(mac + "\n")
    (nic / "ifindex").write_text(f"{ifindex}\n")
    if guid is not None:  # only VMBus NICs have a device_id
        (nic / "device").mkdir()
        (nic / "device" / "device_id").write_text(guid + "\n")


@dataclass
class Env:
    root: Path
    sysfs: Path
    state: Path
    etc: Path
    run: Path
    scripts: Path
    bin: Path
    log: Path

    def netconfig(self, **kwargs: object) -> NetConfig:
        options = dict(sysfs=str(self.sysfs), scripts_dir=str(self.scripts),
                       state_dir=str(self.state), etc_dir=str(self.etc), run_dir=str(self.run),
                       timeout=5.0)
        options.update(kwargs)
        return NetConfig(**options)  # type: ignore[arg-type]

    def standin(self, name: str, directory: Optional[Path] = None) -> Path:
        path = (directory or self.bin) / name
        path.write_text(STANDIN.format(python=sys.executable, log=str(self.log),
                                       status_dir=str(self.root / "status")))
        path.chmod(stat.S_IRWXU)
        return path

    def fail(self, name: str, status: int = 1) -> None:
        (self.root / "status" / name).write_text(str(status))

    def calls(self) -> List[List]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def written(self) -> Dict[str, str]:
        """Every file under state/ and etc/ (relative path -> text), to prove what was written."""
        found = {}
        for base in (self.state, self.etc):
            for path in sorted(base.rglob("*")):
                if path.is_file():
                    found[str(path.relative_to(self.root))] = path.read_text()
        return found


@pytest.fixture()
def env(tmp_path, monkeypatch) -> Env:
    e = Env(tmp_path, tmp_path / "sys", tmp_path / "state", tmp_path / "etc", tmp_path / "run",
            tmp_path / "scripts", tmp_path / "bin", tmp_path / "calls.log")
    for d in (e.state, e.etc, e.run, e.scripts, e.bin, tmp_path / "status"):
        d.mkdir()
    add_nic(e.sysfs, "eth0", MAC, GUID, 2)
    add_nic(e.sysfs, "eth1", "00:15:5d:0a:0b:0c", None, 3)
    monkeypatch.setenv("PATH", f"{e.bin}{os.pathsep}{os.environ.get('PATH', '')}")
    return e


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --------------------------------------------------------------------------- hv_set_ifconfig


def test_spec_example_files_and_script_argv(env):
    script = env.standin("hv_set_ifconfig", env.scripts)
    assert env.netconfig().set_ip_info(spec_request()) == HV_S_OK
    ifcfg, keyfile = env.state / "ifcfg-eth0", env.state / "eth0.nmconnection"
    assert ifcfg.read_text() == SPEC_IFCFG
    assert keyfile.read_text() == SPEC_KEYFILE
    assert mode(ifcfg) == mode(keyfile) == 0o600
    assert env.calls() == [[script.name, str(ifcfg), str(keyfile), []]]
    assert sorted(p.name for p in env.state.iterdir()) == ["eth0.nmconnection", "ifcfg-eth0"]


def test_ipv4_only_several_elements(env):
    env.standin("hv_set_ifconfig", env.scripts)
    request = spec_request(ip_addr="10.0.0.5;10.0.1.6;", sub_net="255.255.255.0;/16",
                           gate_way="10.0.0.1;10.0.0.254", dns_addr="10.0.0.2;10.0.0.3")
    assert env.netconfig().set_ip_info(request) == HV_S_OK
    assert (env.state / "ifcfg-eth0").read_text() == (
        "HWADDR=00:15:5D:01:02:03\nDEVICE=eth0\nBOOTPROTO=none\n"
        "IPADDR0=10.0.0.5\nIPADDR1=10.0.1.6\nNETMASK0=255.255.255.0\nNETMASK1=255.255.0.0\n"
        "GATEWAY=10.0.0.1\nGATEWAY1=10.0.0.254\nDNS1=10.0.0.2\nDNS2=10.0.0.3\n")
    keyfile = (env.state / "eth0.nmconnection").read_text()
    assert "[ipv4]\naddress1=10.0.0.5/24\naddress2=10.0.1.6/16\nmethod=manual\n" \
           "gateway=10.0.0.1\ndns=10.0.0.2;10.0.0.3\n" in keyfile
    assert keyfile.endswith("[ipv6]\nmethod=auto\n")


def test_ipv6_only_accepts_prefix_with_or_without_slash(env):
    env.standin("hv_set_ifconfig", env.scripts)
    request = spec_request(ip_addr="2001:db8::5;2001:DB8:1::6", sub_net="/64;48",
                           gate_way="fe80::1", dns_addr="2001:4860:4860::8888")
    assert env.netconfig().set_ip_info(request) == HV_S_OK
    assert (env.state / "ifcfg-eth0").read_text() == (
        "HWADDR=00:15:5D:01:02:03\nDEVICE=eth0\nBOOTPROTO=none\n"
        "IPV6ADDR=2001:0db8:0000:0000:0000:0000:0000:0005\n"
        "IPV6ADDR_1=2001:0db8:0001:0000:0000:0000:0000:0006\n"
        "IPV6NETMASK=64\nIPV6NETMASK_1=48\n"
        "IPV6_DEFAULTGW=fe80:0000:0000:0000:0000:0000:0000:0001\n"
        "DNS1=2001:4860:4860:0000:0000:0000:0000:8888\n")
    assert (env.state / "eth0.nmconnection").read_text().endswith(
        "[ipv4]\nmethod=disabled\n\n[ipv6]\naddress1=2001:db8::5/64\naddress2=2001:db8:1::6/48\n"
        "method=manual\ngateway=fe80::1\ndns=2001:4860:4860::8888\n")


def test_dual_stack_interleaved_with_ipv4_prefix_and_ipv6_dns(env):
    env.standin("hv_set_ifconfig", env.scripts)
    request = spec_request(ip_addr="2001:db8::5;10.0.0.5", sub_net="64;24",
                           gate_way="2001:db8::1;10.0.0.1", dns_addr="2001:db8::53;10.0.0.2")
    assert env.netconfig().set_ip_info(request) == HV_S_OK
    ifcfg = (env.state / "ifcfg-eth0").read_text().splitlines()
    assert ifcfg[3:] == [
        "IPV6ADDR=2001:0db8:0000:0000:0000:0000:0000:0005", "IPADDR0=10.0.0.5",
        "IPV6NETMASK=64", "NETMASK0=255.255.255.0",
        "IPV6_DEFAULTGW=2001:0db8:0000:0000:0000:0000:0000:0001", "GATEWAY=10.0.0.1",
        "DNS1=2001:0db8:0000:0000:0000:0000:0000:0053", "DNS2=10.0.0.2"]


def test_dhcp_without_addresses(env):
    env.standin("hv_set_ifconfig", env.scripts)
    request = spec_request(dhcp_enabled=1, ip_addr="", sub_net="", gate_way="", dns_addr="")
    assert env.netconfig().set_ip_info(request) == HV_S_OK
    assert (env.state / "ifcfg-eth0").read_text() == (
        "HWADDR=00:15:5D:01:02:03\nDEVICE=eth0\nBOOTPROTO=dhcp\n")
    assert (env.state / "eth0.nmconnection").read_text() == (
        "\n[connection]\ninterface-name=eth0\n\n[ethernet]\nmac-address=00:15:5D:01:02:03\n\n"
        "[ipv4]\nmethod=auto\n\n[ipv6]\nmethod=auto\n")


def test_guid_notations(env):
    env.standin("hv_set_ifconfig", env.scripts)
    bare = GUID.strip("{}")
    for adapter in (bare, bare.upper(), "{" + bare.upper() + "}", f" {GUID} "):
        assert env.netconfig().set_ip_info(spec_request(adapter_id=adapter)) == HV_S_OK
    assert len(env.calls()) == 4


def test_script_failure_and_hang_are_hv_e_fail(env):
    env.standin("hv_set_ifconfig", env.scripts)
    env.fail("hv_set_ifconfig", 3)
    assert env.netconfig().set_ip_info(spec_request()) == HV_E_FAIL
    (env.scripts / "hv_set_ifconfig").write_text(f"#!/bin/sh\necho $$ > {env.root}/pid\nsleep 30\n")
    assert env.netconfig(timeout=1.0).set_ip_info(spec_request()) == HV_E_FAIL
    pid = (env.root / "pid").read_text().strip()
    assert not os.path.exists(f"/proc/{pid}")  # killed, not left behind


# --------------------------------------------------------------------------- refusals


def test_unknown_guid_writes_nothing(env):
    env.standin("hv_set_ifconfig", env.scripts)
    for adapter in ("{00000000-0000-0000-0000-000000000001}", "", "eth0", "not-a-guid",
                    GUID + ";$(touch " + str(env.root / "pwned") + ")"):
        assert env.netconfig().set_ip_info(spec_request(adapter_id=adapter)) == HV_GUID_NOTFOUND
    assert env.written() == {} and env.calls() == []
    assert not (env.root / "pwned").exists()


BAD_REQUESTS = [
    dict(ip_addr="10.0.0.256", sub_net="24"),
    dict(ip_addr="10.0.0.5;bogus", sub_net="24;24"),
    dict(ip_addr="10.0.0.5;$(touch /tmp/pykvpd-pwned)", sub_net="24;24"),
    dict(ip_addr="10.0.0.5`id`", sub_net="24"),
    dict(ip_addr="1" * 1000, sub_net="24"),  # the C daemon's 46-byte stack buffer (§9 row 4)
    dict(ip_addr="2001:db8::5%eth0", sub_net="64"),
    dict(ip_addr="2001:db8::5/64", sub_net="64"),
    dict(ip_addr="010.0.0.5", sub_net="24"),
    dict(ip_addr="0.0.0.0", sub_net="24"),
    dict(ip_addr="127.0.0.1", sub_net="8"),
    dict(ip_addr="224.0.0.5", sub_net="24"),
    dict(ip_addr="10.0.0.0", sub_net="24"),  # network address
    dict(ip_addr="10.0.0.255", sub_net="24"),  # broadcast address
    dict(ip_addr="10.0.0.5", sub_net="255.0.255.0"),
    dict(ip_addr="10.0.0.5", sub_net="33"),
    dict(ip_addr="10.0.0.5", sub_net="0"),
    dict(ip_addr="10.0.0.5", sub_net="64;24"),  # more subnets than addresses
    dict(ip_addr="10.0.0.5;10.0.0.6", sub_net="24"),  # fewer
    dict(ip_addr="10.0.0.5", sub_net="ffff:ffff::"),  # IPv6 mask for an IPv4 address
    dict(ip_addr="2001:db8::5", sub_net="255.255.255.0"),
    dict(ip_addr="2001:db8::5", sub_net="129"),
    dict(ip_addr="2001:db8::5", sub_net="/６４"),  # non-ASCII digits
    dict(gate_way="10.0.0.1;x"),
    dict(gate_way="127.0.0.1"),
    dict(gate_way="10.0.0.1\n10.0.0.2"),
    dict(dns_addr="10.0.0.2;nameserver"),
    dict(dns_addr="ff02::1"),
    dict(dns_addr=";".join(["10.0.0.2"] * 65)),  # more than 64 elements
]


@pytest.mark.parametrize("changes", BAD_REQUESTS)
def test_bad_element_is_invalidarg_and_nothing_is_written(env, changes):
    env.standin("hv_set_ifconfig", env.scripts)
    assert env.netconfig().set_ip_info(spec_request(**changes)) == HV_INVALIDARG
    assert env.written() == {} and env.calls() == []
    assert not os.path.exists("/tmp/pykvpd-pwned")


def test_injection_off_touches_nothing(env):
    env.standin("hv_set_ifconfig", env.scripts)
    assert env.netconfig(injection="off").set_ip_info(spec_request()) == HV_E_FAIL
    assert env.written() == {} and env.calls() == []


def test_dry_run_writes_state_files_only(env, caplog):
    env.standin("hv_set_ifconfig", env.scripts)
    caplog.set_level("INFO", logger="pykvpd.netconfig")
    assert env.netconfig(injection="dry-run").set_ip_info(spec_request()) == HV_S_OK
    assert sorted(env.written()) == ["state/eth0.nmconnection", "state/ifcfg-eth0"]
    assert env.calls() == []
    assert any("would run " in r.getMessage() and "hv_set_ifconfig" in r.getMessage()
               for r in caplog.records)


def test_invalid_injection_mode_is_rejected_at_construction():
    with pytest.raises(ValueError):
        NetConfig(injection="yes")


@pytest.mark.parametrize("name", ["-a", "e;touch x", "eth0 x", "a" * 16, ".hidden", "e\nx"])
def test_hostile_interface_names_are_refused(env, name):
    hostile = env.root / "sys2"
    add_nic(hostile, name, MAC, GUID, 7)
    env.standin("hv_set_ifconfig", env.scripts)
    assert env.netconfig(sysfs=str(hostile)).set_ip_info(spec_request()) == HV_E_FAIL
    assert env.written() == {} and env.calls() == []


def test_nic_without_usable_mac_is_hv_e_fail(env):
    (env.sysfs / "class" / "net" / "eth0" / "address").write_text("junk\nHWADDR=evil\n")
    env.standin("hv_set_ifconfig", env.scripts)
    assert env.netconfig().set_ip_info(spec_request()) == HV_E_FAIL
    assert env.written() == {}


def test_no_backend_is_hv_e_fail_after_the_state_files(env):
    assert env.netconfig().set_ip_info(spec_request()) == HV_E_FAIL
    assert sorted(env.written()) == ["state/eth0.nmconnection", "state/ifcfg-eth0"]


# --------------------------------------------------------------------------- built-in backends


def nm_running(env: Env, running: bool = True) -> None:
    """NetworkManager's /run directory, and systemd's link for the unit while it is active."""
    (env.run / "NetworkManager").mkdir(exist_ok=True)
    (env.run / "systemd" / "units").mkdir(parents=True, exist_ok=True)
    if running:
        (env.run / "systemd" / "units" / "invocation:NetworkManager.service").symlink_to("0123")


def test_networkmanager_backend(env, monkeypatch):
    nm_running(env)
    env.standin("nmcli")
    connections = env.etc / "NetworkManager" / "system-connections"
    monkeypatch.setenv("STANDIN_WATCH", str(connections))
    assert env.netconfig(timeout=8.0).set_ip_info(spec_request()) == HV_S_OK
    profile = connections / "hyperv-eth0.nmconnection"
    assert mode(profile) == 0o600
    assert profile.read_text() == SPEC_KEYFILE.replace(
        "interface-name=eth0\n",
        f"interface-name=eth0\nid=hyperv-eth0\nuuid={keyfile_uuid('eth0')}\ntype=ethernet\n"
        "autoconnect=true\nautoconnect-priority=50\n")
    assert env.calls() == [
        ["nmcli", "connection", "load", str(profile), [profile.name]],
        ["nmcli", "--wait", "7", "connection", "up", "uuid", keyfile_uuid("eth0"),
         [profile.name]],
    ]


def test_networkmanager_failure_is_hv_e_fail(env):
    nm_running(env)
    env.standin("nmcli")
    env.fail("nmcli", 4)
    assert env.netconfig().set_ip_info(spec_request()) == HV_E_FAIL
    assert len(env.calls()) == 1  # stopped after the failing load


def networkd_running(env: Env) -> None:
    """systemd's link for systemd-networkd.service, present while the unit is active."""
    (env.run / "systemd" / "units").mkdir(parents=True, exist_ok=True)
    (env.run / "systemd" / "units" / "invocation:systemd-networkd.service").symlink_to("4567")


def test_stopped_networkmanager_leaves_run_behind_and_networkd_is_used(env):
    """Found against the real stacks: /run/NetworkManager outlives NetworkManager."""
    nm_running(env, running=False)
    networkd_running(env)
    links = env.run / "systemd" / "netif" / "links"
    links.mkdir(parents=True)
    (links / "2").write_text("ADMIN_STATE=configured\n")
    env.standin("nmcli")
    env.standin("networkctl")
    assert env.netconfig().set_ip_info(spec_request()) == HV_S_OK
    assert [c[0] for c in env.calls()] == ["networkctl", "networkctl"]


def test_networkd_backend(env, monkeypatch):
    links = env.run / "systemd" / "netif" / "links"
    links.mkdir(parents=True)
    (links / "2").write_text("ADMIN_STATE=configured\nOPER_STATE=routable\n")
    env.standin("networkctl")
    network = env.etc / "systemd" / "network"
    monkeypatch.setenv("STANDIN_WATCH", str(network))
    assert env.netconfig().set_ip_info(spec_request()) == HV_S_OK
    path = network / "05-pykvpd-eth0.network"
    assert mode(path) == 0o644  # networkd reads it as systemd-network (issue 13 fix 1)
    assert path.read_text().splitlines()[1:] == [
        "[Match]", "Name=eth0", "MACAddress=00:15:5d:01:02:03", "", "[Network]", "DHCP=no",
        "Address=10.0.0.5/24", "Address=2001:db8::5/64", "Gateway=10.0.0.1", "DNS=10.0.0.2"]
    assert env.calls() == [["networkctl", "reload", [path.name]],
                           ["networkctl", "reconfigure", "eth0", [path.name]]]


def test_killed_networkd_is_not_used_for_its_leftover_link_files(env):
    """Found against real networkd: SIGKILL leaves /run/systemd/netif/links/*, and networkctl
    would bring the stopped service back through D-Bus activation."""
    nm_running(env, running=False)
    links = env.run / "systemd" / "netif" / "links"
    links.mkdir(parents=True)
    (links / "2").write_text("ADMIN_STATE=configured\n")
    env.standin("networkctl")
    assert env.netconfig().set_ip_info(spec_request()) == HV_E_FAIL
    assert env.calls() == []
    assert not (env.etc / "systemd" / "network").exists()


def test_networkmanager_not_managing_the_link_falls_through_to_networkd(env):
    nm_running(env)
    networkd_running(env)
    (env.run / "NetworkManager" / "devices").mkdir(parents=True)
    (env.run / "NetworkManager" / "devices" / "2").write_text("[device]\nmanaged=false\n")
    links = env.run / "systemd" / "netif" / "links"
    links.mkdir(parents=True)
    (links / "2").write_text("ADMIN_STATE=configured\n")
    env.standin("nmcli")
    env.standin("networkctl")
    assert env.netconfig().set_ip_info(spec_request(dhcp_enabled=1)) == HV_S_OK
    assert [c[0] for c in env.calls()] == ["networkctl", "networkctl"]
    text = (env.etc / "systemd" / "network" / "05-pykvpd-eth0.network").read_text()
    assert "DHCP=ipv4\n" in text


def ifupdown_env(env: Env, resolvconf: bool = True) -> None:
    """ifupdown with stand-ins for ifup/ifdown and for systemd's systemctl/systemd-run."""
    (env.etc / "network" / "if-up.d").mkdir(parents=True)
    (env.etc / "network" / "interfaces").write_text("source /etc/network/interfaces.d/*\n")
    if resolvconf:
        hook = env.etc / "network" / "if-up.d" / "000resolvconf"
        hook.write_text("#!/bin/sh\n")
        hook.chmod(0o755)
    for name in ("ifup", "ifdown", "systemctl", "systemd-run"):
        env.standin(name)


def test_ifupdown_backend_hands_ifup_to_a_systemd_unit(env, monkeypatch):
    """Issue 13 fixes 4 and 5: ifdown/ifup run in units of their own, never in our process tree;
    the fragment is written between the old configuration's ifdown and the new one's ifup."""
    ifupdown_env(env)
    env.fail("systemctl", 5)  # unit not loaded: nothing was up through us before; tolerated
    fragments = env.etc / "network" / "interfaces.d"
    monkeypatch.setenv("STANDIN_WATCH", str(fragments))
    request = spec_request(ip_addr="10.0.0.5;10.0.0.6;2001:db8::5", sub_net="24;24;64",
                           gate_way="10.0.0.1;2001:db8::1", dns_addr="10.0.0.2;2001:db8::53")
    assert env.netconfig().set_ip_info(request) == HV_S_OK
    ifup, ifdown = str(env.bin / "ifup"), str(env.bin / "ifdown")
    run_unit = ["systemd-run", "--quiet", "--collect", "--service-type=oneshot"]
    assert env.calls() == [
        ["systemctl", "stop", "pykvpd-ifup-eth0.service", []],
        run_unit + ["--wait", "--description=ifdown eth0 (pykvpd)", ifdown, "eth0", []],
        run_unit + ["--unit=pykvpd-ifup-eth0.service", "--remain-after-exit",
                    "--description=ifup eth0 (pykvpd SET_IP_INFO)",
                    "--property=TimeoutStartSec=4", f"--property=ExecStop={ifdown} eth0",
                    ifup, "eth0", ["eth0"]],
    ]
    path = fragments / "eth0"
    assert mode(path) == 0o644
    assert path.read_text().splitlines()[1:] == [
        "auto eth0",
        "iface eth0 inet static", "    address 10.0.0.5/24", "    gateway 10.0.0.1",
        "    dns-nameservers 10.0.0.2 2001:db8::53",
        "iface eth0 inet static", "    address 10.0.0.6/24",
        "iface eth0 inet6 static", "    address 2001:db8::5/64", "    gateway 2001:db8::1"]


def test_ifupdown_unit_name_is_escaped_for_odd_interface_names(env):
    from pykvpd.netconfig.ifupdown import unit_name
    assert unit_name("eth0") == "pykvpd-ifup-eth0.service"
    assert unit_name("e+x@1") == "pykvpd-ifup-e\\x2bx\\x401.service"


def test_ifupdown_ifup_failure_is_hv_e_fail(env):
    ifupdown_env(env)
    env.fail("systemd-run", 1)
    assert env.netconfig().set_ip_info(spec_request(dhcp_enabled=1, ip_addr="", sub_net="",
                                                    gate_way="", dns_addr="")) == HV_E_FAIL
    assert (env.etc / "network" / "interfaces.d" / "eth0").read_text().splitlines()[1:] == [
        "auto eth0", "iface eth0 inet dhcp"]


def test_ifupdown_without_resolvconf_refuses_dns_and_changes_nothing(env):
    """Issue 13 fix 3: dns-nameservers needs resolvconf or an enabled systemd-resolved."""
    ifupdown_env(env, resolvconf=False)
    hook = env.etc / "network" / "if-up.d" / "resolved"
    hook.write_text("#!/bin/sh\n")
    hook.chmod(0o755)
    env.fail("systemctl", 1)  # is-enabled systemd-resolved: masked or disabled
    assert env.netconfig().set_ip_info(spec_request()) == HV_E_FAIL
    assert env.calls() == [["systemctl", "is-enabled", "--quiet", "systemd-resolved", []]]
    assert not (env.etc / "network" / "interfaces.d").exists()
    # Without DNS servers the same system is fine; with resolved enabled, DNS is fine too.
    assert env.netconfig().set_ip_info(spec_request(dns_addr="")) == HV_S_OK
    (env.root / "status" / "systemctl").unlink()
    assert env.netconfig().set_ip_info(spec_request()) == HV_S_OK
    assert "dns-nameservers 10.0.0.2" in (env.etc / "network" / "interfaces.d" / "eth0").read_text()


def test_hostile_strings_reach_commands_only_as_single_argv_elements(env):
    """A GUID-matched NIC with a legal but odd name: the name is one argv element, no shell."""
    odd = env.root / "sys3"
    add_nic(odd, "e+x@1", MAC, GUID, 9)
    env.standin("hv_set_ifconfig", env.scripts)
    assert env.netconfig(sysfs=str(odd)).set_ip_info(spec_request()) == HV_S_OK
    ifcfg = env.state / "ifcfg-e+x@1"
    assert env.calls() == [["hv_set_ifconfig", str(ifcfg), str(env.state / "e+x@1.nmconnection"),
                            []]]
