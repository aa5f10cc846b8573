"""GET_IP_INFO / SET_IP_INFO against the real network stacks, with the simulator as the host.

Each backend runs in a Debian 12 container booted by real systemd (tests/nspawn.py), with the
package installed from its .deb and pykvpd.service as shipped (one drop-in clears
``ConditionVirtualization=microsoft``, since the container is not Hyper-V; ifupdown also gets the
documented ip-injection.conf drop-in). The real program manages the guest NIC under its own unit:
NetworkManager; systemd-networkd + systemd-resolved; ifupdown with resolvconf; ifupdown with
neither resolvconf nor resolved.

The network: two network namespaces of the test joined by a veth pair. The container joins the
guest one (``eth0``, MAC 00:15:5d:…, as on Hyper-V); the peer runs dnsmasq as DHCP server, so a
DHCP lease is really obtained. Only documentation ranges are used; nothing leaves the machine.

The VMBus device: a Hyper-V NIC's sysfs directory has ``device/device_id`` (the VMBus instance
GUID), a veth has no ``device``. Inside the container (whose /sys shows its own namespace's NICs,
see nspawn.Container) a read-only overlay over the veth's sysfs directory adds only
``device/device_id``; everything else is the kernel's own sysfs, so the
stacks keep managing the link and the daemon finds the GUID where it looks on Hyper-V.

The host: the simulator's FakeKernel listens on a socket bound into the container at
``/dev/vmbus/hv_kvp``, the path the shipped unit opens; ``Host`` sends GET_IP_INFO and
SET_IP_INFO as the Hyper-V host does.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from typing import Dict, Iterator, List

import nspawn
import pytest

from pykvpd import protocol as p
from pykvpd.simulator.host import Host, HostError
from pykvpd.simulator.kernel import FakeKernel

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, nspawn)")

MAC = "00:15:5d:0d:0e:0f"
GUID = "{4a5d8e2b-9c1f-4e7a-a1b2-c3d4e5f60718}"
PEER_V4, PEER_V6 = "192.0.2.1", "2001:db8::1"
LEASE_DNS = "192.0.2.53"
LEASES = ipaddress.ip_network("192.0.2.96/27")  # dnsmasq's pool: 192.0.2.100 - .120
STATIC = dict(ip_addr="192.0.2.10;2001:db8::10", sub_net="255.255.255.0;64",
              gate_way="192.0.2.1;2001:db8::1", dns_addr="192.0.2.53;2001:db8::53")
SECOND = dict(ip_addr="198.51.100.20;2001:db8:1::20", sub_net="24;/64",
              gate_way="198.51.100.1;2001:db8:1::1", dns_addr="198.51.100.53;2001:db8:1::53")
STACK_PACKAGES = ("network-manager", "systemd-resolved", "ifupdown", "isc-dhcp-client",
                  "iproute2")
RESOLVCONF_PACKAGES = ("ifupdown", "isc-dhcp-client", "resolvconf", "iproute2")
COND_DROPIN = "[Unit]\n# The test container is not Hyper-V; everything else is as shipped.\n" \
              "ConditionVirtualization=\n"

# --------------------------------------------------------------------------- the network


class Link:
    """Two network namespaces of the test joined by a veth; dnsmasq on the peer side."""

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.holders: List[subprocess.Popen] = []
        self.dnsmasq = None

    def _holder(self) -> int:
        proc = subprocess.Popen(["unshare", "--net", "sleep", "infinity"])
        self.holders.append(proc)
        for _ in range(100):
            if os.readlink(f"/proc/{proc.pid}/ns/net") != os.readlink("/proc/self/ns/net"):
                return proc.pid
            time.sleep(0.02)
        raise RuntimeError("unshare --net did not start")

    def __enter__(self) -> Link:
        guest, peer = self._holder(), self._holder()
        self.guest_ns, self.peer_ns = f"/proc/{guest}/ns/net", f"/proc/{peer}/ns/net"
        name = f"pyk{os.getpid() % 100000}"
        steps = [
            ["ip", "link", "add", name, "address", MAC, "netns", str(guest), "type", "veth",
             "peer", "name", "hv-peer", "netns", str(peer)],
            ["nsenter", f"--net={self.guest_ns}", "ip", "link", "set", name, "name", "eth0"],
            ["nsenter", f"--net={self.peer_ns}", "ip", "addr", "add", f"{PEER_V4}/24",
             "dev", "hv-peer"],
            ["nsenter", f"--net={self.peer_ns}", "ip", "-6", "addr", "add", f"{PEER_V6}/64",
             "dev", "hv-peer", "nodad"],
            ["nsenter", f"--net={self.peer_ns}", "ip", "link", "set", "hv-peer", "up"],
        ]
        for argv in steps:
            subprocess.run(argv, check=True)
        self.dnsmasq = subprocess.Popen(
            ["nsenter", f"--net={self.peer_ns}", "dnsmasq", "--keep-in-foreground",
             "--conf-file=/dev/null", "--interface=hv-peer", "--bind-interfaces", "--port=0",
             "--dhcp-range=192.0.2.100,192.0.2.120,255.255.255.0,1h",
             f"--dhcp-option=option:router,{PEER_V4}",
             f"--dhcp-option=option:dns-server,{LEASE_DNS}",
             f"--dhcp-leasefile={self.workdir}/leases", f"--pid-file={self.workdir}/dnsmasq.pid",
             "--log-facility=-"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in [self.dnsmasq, *self.holders]:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=10)


# --------------------------------------------------------------------------- the guest


class Guest:
    """A booted container on the link, pykvpd installed and registered with our FakeKernel."""

    def __init__(self, ct: nspawn.Container, kernel: FakeKernel) -> None:
        self.ct = ct
        self.kernel = kernel
        self.host = Host(kernel, timeout=25.0)

    def sh(self, *argv: str, check: bool = True) -> str:
        return self.ct.run(list(argv), check=check).stdout

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        self.sh("mkdir", "-p", os.path.dirname(path))
        self.ct.run(["sh", "-c", f'cat > "$1" && chmod {mode:o} "$1"', "sh", path], input=text)

    def addresses(self) -> List[str]:
        """eth0's addresses as ip shows them: ADDRESS/PREFIX, kernel order."""
        data = json.loads(self.sh("ip", "-j", "addr", "show", "dev", "eth0"))
        return [f"{a['local']}/{a['prefixlen']}" for a in data[0]["addr_info"]]

    def global_addresses(self) -> List[str]:
        return [a for a in self.addresses() if not a.startswith("fe80:")]

    def gateways(self, family: str) -> List[str]:
        data = json.loads(self.sh("ip", "-j", family, "route", "show", "default"))
        return [r["gateway"] for r in data if r.get("dev") == "eth0" and "gateway" in r]

    def wait(self, predicate, what: str, timeout: float = 40.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} within {timeout:g} s; eth0: {self.addresses()}\n"
                                     + self.ct.journal(None, "-n", "60"))
            time.sleep(0.3)

    def leased(self) -> bool:
        return any(ipaddress.ip_interface(a).ip in LEASES for a in self.addresses())

    def get(self) -> p.IpInfo:
        return self.host.get_ip_info(MAC)

    def set(self, **fields) -> int:
        try:
            self.host.set_ip_info(GUID, **fields)
        except HostError as exc:
            return exc.status
        return p.HV_S_OK

    def dhclients_in_pykvpd(self) -> List[str]:
        """DHCP client processes whose cgroup is pykvpd.service's (there must be none)."""
        found = []
        for pid in self.sh("pgrep", "-x", "dhclient", check=False).split():
            cgroup = self.sh("cat", f"/proc/{pid}/cgroup", check=False)
            if "pykvpd.service" in cgroup:
                found.append(pid)
        return found


def setup_stack(guest: Guest, stack: str) -> None:
    """Make exactly one stack manage eth0 (DHCP), the way an administrator would."""
    sh = guest.sh
    if stack == "NetworkManager":
        sh("systemctl", "restart", "NetworkManager")
    else:
        sh("systemctl", "disable", "--now", "NetworkManager", check=False)
    if stack == "networkd":
        guest.write("/etc/systemd/network/10-eth0.network",
                    "[Match]\nName=eth0\n\n[Network]\nDHCP=ipv4\n")
        sh("systemctl", "enable", "--now", "systemd-networkd", "systemd-resolved")
    if stack.startswith("ifupdown"):
        if stack == "ifupdown":  # neither resolvconf nor resolved: a plain resolv.conf
            sh("systemctl", "mask", "--now", "systemd-resolved")
            sh("rm", "-f", "/etc/resolv.conf")
            guest.write("/etc/resolv.conf", "nameserver 203.0.113.53\n")
        guest.write("/etc/network/interfaces.d/eth0", "auto eth0\niface eth0 inet dhcp\n")
        sh("systemctl", "restart", "networking")
    guest.wait(guest.leased, "no DHCP lease from dnsmasq")


def vmbus_device_id(ct: nspawn.Container) -> None:
    """Give eth0 the VMBus instance GUID a Hyper-V NIC has in sysfs (device/device_id).

    The container's /sys/devices/virtual/net is a sysfs of its own network namespace
    (nspawn.Container's netns option); a read-only overlay over eth0's directory adds only
    device/device_id, everything else stays the kernel's.
    """
    script = f"""set -e
mkdir -p /run/hv-sysfs/eth0/device
echo '{GUID}' > /run/hv-sysfs/eth0/device/device_id
nic=/sys/devices/virtual/net/eth0
mount -t overlay overlay -o ro,lowerdir=/run/hv-sysfs/eth0:$nic $nic
"""
    ct.run(["sh", "-c", script])
    assert ct.run(["cat", "/sys/class/net/eth0/device/device_id"]).stdout.strip() == GUID
    assert ct.run(["cat", "/sys/class/net/eth0/address"]).stdout.strip() == MAC
    assert sorted(ct.run(["ls", "/sys/class/net"]).stdout.split()) == ["eth0", "lo"]


@pytest.fixture(scope="module")
def deb() -> str:
    nspawn.require()
    return nspawn.build_deb()


@pytest.fixture(scope="module")
def rootfs_all() -> str:
    nspawn.require()
    return nspawn.rootfs(include=STACK_PACKAGES)


@pytest.fixture(scope="module")
def rootfs_resolvconf() -> str:
    nspawn.require()
    return nspawn.rootfs(include=RESOLVCONF_PACKAGES)


@contextlib.contextmanager
def boot(stack: str, root: str, deb: str) -> Iterator[Guest]:
    if shutil.which("dnsmasq") is None:
        pytest.fail("dnsmasq is not installed (scripts/bootstrap.sh installs dnsmasq-base)")
    with tempfile.TemporaryDirectory(prefix="pykvpd-net-") as work, Link(work) as link:
        os.mkdir(os.path.join(work, "vmbus"))
        with FakeKernel(os.path.join(work, "vmbus", "hv_kvp"), timeout=25.0) as kernel, \
                nspawn.Container(root, capabilities=("CAP_NET_ADMIN", "CAP_NET_RAW"),
                                 binds=[f"{work}/vmbus:/dev/vmbus"],
                                 netns=link.guest_ns) as ct:
            guest = Guest(ct, kernel)
            vmbus_device_id(ct)
            setup_stack(guest, stack)
            ct.install_deb(deb)
            guest.write("/etc/systemd/system/pykvpd.service.d/test-not-hyperv.conf",
                        COND_DROPIN)
            if stack.startswith("ifupdown"):
                ct.run(["cp", "/usr/share/doc/pykvpd/examples/ip-injection.conf",
                        "/etc/systemd/system/pykvpd.service.d/ip-injection.conf"])
            ct.run(["systemctl", "daemon-reload"])
            ct.run(["systemctl", "start", "pykvpd"])
            assert kernel.wait_registered(20.0), ct.journal("pykvpd")
            yield guest


# --------------------------------------------------------------------------- what is checked


def stack_dns(guest: Guest, stack: str) -> List[str]:
    """The DNS servers the stack applied to eth0, asked from the real program."""
    if stack in ("NetworkManager", "networkd"):
        out = guest.sh("resolvectl", "dns", "eth0")  # "Link 2 (eth0): a b"
        return out.split(":", 1)[1].split()
    text = guest.sh("cat", "/etc/resolv.conf")
    return [line.split()[1] for line in text.splitlines() if line.startswith("nameserver")]


def reported(info: p.IpInfo) -> Dict[str, object]:
    ips = [x for x in info.ip_addr.split(";") if x]
    masks = [x for x in info.sub_net.split(";") if x]
    pairs = []
    for ip, mask in zip(ips, masks):
        prefix = mask[1:] if mask.startswith("/") else ipaddress.ip_network(
            f"0.0.0.0/{mask}").prefixlen
        pairs.append(f"{ip}/{prefix}")
    return {"addresses": pairs, "gateways": [g for g in info.gate_way.split(";") if g],
            "dns": [d for d in info.dns_addr.split(";") if d], "dhcp": info.dhcp_enabled}


def assert_get_matches_stack(guest: Guest, stack: str, dhcp: int) -> None:
    got = reported(guest.get())
    assert got["addresses"] == guest.addresses()
    assert got["gateways"] == guest.gateways("-4") + guest.gateways("-6")
    assert got["dns"] == stack_dns(guest, stack)
    assert got["dhcp"] == dhcp


def assert_static(guest: Guest, stack: str, fields: Dict[str, str]) -> None:
    ips = fields["ip_addr"].split(";")
    prefixes = ["24", "64"]
    guest.wait(lambda: sorted(guest.global_addresses()) == sorted(
        f"{ip}/{pfx}" for ip, pfx in zip(ips, prefixes)), f"static addresses {ips}")
    v4gw, v6gw = fields["gate_way"].split(";")
    guest.wait(lambda: guest.gateways("-4") == [v4gw] and guest.gateways("-6") == [v6gw],
               "static default routes")
    assert stack_dns(guest, stack) == fields["dns_addr"].split(";")


def stack_state(guest: Guest, stack: str) -> Dict[str, object]:
    """Everything a SET_IP_INFO could change on the stack: the link's addresses, routes and DNS
    servers, every configuration file of the stacks, which profile is applied, and the
    invocation of each stack's unit and of our ifup unit (a restart or a start changes it)."""
    files = guest.sh("sh", "-c", "find /etc/NetworkManager /etc/systemd/network /etc/network "
                     "/run/NetworkManager/system-connections -type f -exec sha256sum {} + "
                     "2>/dev/null | sort", check=False)
    units = ("NetworkManager", "systemd-networkd", "systemd-resolved", "networking",
             "pykvpd-ifup-eth0")
    state: Dict[str, object] = {
        "addresses": guest.addresses(), "gateways": guest.gateways("-4") + guest.gateways("-6"),
        "dns": stack_dns(guest, stack), "files": files,
        "units": guest.sh("systemctl", "show", "-p", "Id,InvocationID", *units)}
    if stack == "NetworkManager":
        state["profiles"] = guest.sh("nmcli", "-t", "-f", "UUID,DEVICE", "connection", "show")
    return state


def set_injection(guest: Guest, mode: str) -> None:
    """ip_injection = MODE in /etc/pykvpd.conf, then systemctl reload, as an operator would."""
    def reloads() -> int:
        return guest.ct.journal("pykvpd").count("configuration reloaded from /etc/pykvpd.conf")

    before = reloads()
    guest.write("/etc/pykvpd.conf", f"[pykvpd]\nip_injection = {mode}\n")
    guest.sh("systemctl", "reload", "pykvpd")
    guest.wait(lambda: reloads() > before, f"pykvpd reloaded with ip_injection = {mode}")


HYPERV_STATE = ("/var/lib/hyperv/ifcfg-eth0", "/var/lib/hyperv/eth0.nmconnection")


def assert_dry_run_and_off_touch_nothing(guest: Guest, stack: str, dry_run_status: int) -> None:
    """dry-run: the request is checked and the plan logged, the stack is untouched (only the
    daemon's own ifcfg/keyfile state files are written, as documented); off: not even those."""
    before = stack_state(guest, stack)
    set_injection(guest, "dry-run")
    assert guest.set(**STATIC) == dry_run_status, guest.ct.journal("pykvpd", "-n", "20")
    if dry_run_status == p.HV_S_OK:
        backend = {"networkd": "systemd-networkd"}.get(stack, stack.split("-")[0])

        def dry_run_logged() -> bool:
            # journald may store the daemon's line a moment after the reply reached the host
            logged = guest.ct.journal("pykvpd", "-n", "10")
            return f"via {backend}\n" in logged and "SET_IP_INFO dry-run, would" in logged

        guest.wait(dry_run_logged, f"the dry-run line naming {backend} in the journal")
        assert "IPADDR0=192.0.2.10\n" in guest.sh("cat", HYPERV_STATE[0])
    assert stack_state(guest, stack) == before

    set_injection(guest, "off")
    written = [guest.sh("cat", path) for path in HYPERV_STATE]
    assert guest.set(**SECOND) == p.HV_E_FAIL
    guest.wait(
        lambda: "refused: IP injection is off" in guest.ct.journal("pykvpd", "-n", "5"),
        "the refusal in the journal",
    )
    assert stack_state(guest, stack) == before
    assert [guest.sh("cat", path) for path in HYPERV_STATE] == written
    set_injection(guest, "on")


def assert_killed_networkd_has_no_say(guest: Guest) -> None:
    """A SIGKILLed networkd leaves /run/systemd/netif/links/* behind (a clean stop removes
    them); the administrator then configures eth0 statically with ifupdown. GET_IP_INFO must
    follow ifupdown, and SET_IP_INFO must neither revive networkd through networkctl's D-Bus
    activation nor take the link down when it cannot write ifupdown's configuration (this unit
    has no ip-injection.conf drop-in)."""
    guest.write("/run/systemd/system/systemd-networkd.service.d/no-restart.conf",
                "[Service]\nRestart=no\n")
    guest.sh("systemctl", "daemon-reload")
    guest.sh("systemctl", "stop", "systemd-networkd.socket")
    guest.sh("systemctl", "kill", "--signal=KILL", "systemd-networkd")
    guest.wait(lambda: guest.sh("systemctl", "is-active", "systemd-networkd",
                                check=False).strip() != "active", "networkd killed")
    assert guest.sh("ls", "/run/systemd/netif/links").split()  # what is being tested
    guest.write("/etc/network/interfaces.d/eth0", "auto eth0\niface eth0 inet static\n"
                "    address 192.0.2.30/24\n    gateway 192.0.2.1\n")
    guest.sh("ip", "-4", "addr", "flush", "dev", "eth0")
    guest.sh("ifup", "eth0")
    got = reported(guest.get())
    assert got["addresses"] == guest.addresses()
    assert "192.0.2.30/24" in got["addresses"] and got["dhcp"] == 0
    before = guest.addresses()
    assert guest.set(**STATIC) == p.HV_E_FAIL
    guest.wait(
        lambda: "nothing was changed" in guest.ct.journal("pykvpd", "-n", "3"),
        "the refusal in the journal",
    )
    assert guest.addresses() == before
    assert guest.sh("systemctl", "is-active", "systemd-networkd", check=False).strip() != "active"


STACKS = ["NetworkManager", "networkd", "ifupdown-resolvconf"]


@pytest.mark.parametrize("stack", STACKS)
def test_real_stack_get_set_replace_back_to_dhcp(stack, rootfs_all, rootfs_resolvconf, deb):
    root = rootfs_resolvconf if stack == "ifupdown-resolvconf" else rootfs_all
    restart = {"NetworkManager": "NetworkManager", "networkd": "systemd-networkd",
               "ifupdown-resolvconf": "networking"}[stack]
    with boot(stack, root, deb) as guest:
        # DHCP-configured NIC: the lease, its router and DNS server, the DHCP flag.
        assert_get_matches_stack(guest, stack, dhcp=1)
        assert LEASE_DNS in stack_dns(guest, stack)
        before = guest.addresses()

        # Invalid requests change nothing and get the documented status.
        bad = dict(STATIC, ip_addr="192.0.2.300;2001:db8::10")
        assert guest.set(**bad) == p.HV_INVALIDARG
        assert guest.set(**dict(STATIC, sub_net="24")) == p.HV_INVALIDARG
        with pytest.raises(HostError) as err:
            guest.host.set_ip_info("{00000000-1111-4222-8333-444444444444}", **STATIC)
        assert err.value.status == p.HV_GUID_NOTFOUND
        assert guest.addresses() == before

        # Static: applied by the real program, kept across its restart.
        assert guest.set(**STATIC) == p.HV_S_OK, guest.ct.journal("pykvpd")
        assert_static(guest, stack, STATIC)
        assert_get_matches_stack(guest, stack, dhcp=0)
        guest.sh("systemctl", "restart", restart)
        assert_static(guest, stack, STATIC)

        # A second one replaces the first.
        assert guest.set(**SECOND) == p.HV_S_OK, guest.ct.journal("pykvpd")
        assert_static(guest, stack, SECOND)
        assert_get_matches_stack(guest, stack, dhcp=0)

        # Back to DHCP: a lease is really obtained.
        assert guest.set(dhcp_enabled=True) == p.HV_S_OK, guest.ct.journal("pykvpd")
        guest.wait(lambda: guest.leased() and not any(
            a.startswith(("198.51.100.", "2001:db8:1::")) for a in guest.addresses()),
            "a DHCP lease after SET_IP_INFO with dhcp_enabled")
        assert_get_matches_stack(guest, stack, dhcp=1)

        # Nothing started for injection lives in pykvpd.service; restarting it keeps the lease.
        assert guest.dhclients_in_pykvpd() == []
        lease = guest.addresses()
        guest.sh("systemctl", "restart", "pykvpd")
        assert guest.kernel.wait_registered(20.0, registrations=2)
        time.sleep(1.0)
        assert guest.addresses() == lease
        if stack.startswith("ifupdown"):
            assert guest.sh("pgrep", "-x", "dhclient", check=False).split()

        assert_dry_run_and_off_touch_nothing(guest, stack, dry_run_status=p.HV_S_OK)
        if stack == "networkd":
            assert_killed_networkd_has_no_say(guest)


def test_ifupdown_without_resolvconf(rootfs_all, deb):
    """Fix 3 and 4: DNS is refused (not dropped), static without DNS and DHCP work."""
    with boot("ifupdown", rootfs_all, deb) as guest:
        assert_get_matches_stack(guest, "ifupdown", dhcp=1)
        before = guest.addresses()
        assert guest.set(**STATIC) == p.HV_E_FAIL
        assert guest.addresses() == before
        assert "eth0" in guest.sh("cat", "/etc/network/interfaces.d/eth0")  # the admin's file
        assert "dhcp" in guest.sh("cat", "/etc/network/interfaces.d/eth0")

        assert guest.set(**dict(STATIC, dns_addr="")) == p.HV_S_OK, guest.ct.journal("pykvpd")
        guest.wait(lambda: sorted(guest.global_addresses()) == ["192.0.2.10/24",
                                                                "2001:db8::10/64"],
                   "static addresses")
        assert guest.set(dhcp_enabled=True) == p.HV_S_OK, guest.ct.journal("pykvpd")
        guest.wait(guest.leased, "a DHCP lease")
        # dhclient-script ran outside the sandbox: it wrote the lease's server.
        assert stack_dns(guest, "ifupdown") == [LEASE_DNS]
        assert guest.dhclients_in_pykvpd() == []
        # dry-run gives the answer a real run would: DNS servers cannot be applied here.
        assert_dry_run_and_off_touch_nothing(guest, "ifupdown", dry_run_status=p.HV_E_FAIL)
