"""ifaddrs: getifaddrs() through ctypes, checked against a network namespace we build ourselves."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap

import pytest

from pykvpd import ifaddrs
from pykvpd.ifaddrs import IFF_LOOPBACK, IFF_UP, IfAddr, prefix_length

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Interfaces of the test namespace: loopback up, a veth pair and a bridge left down (the C daemon
# reports down interfaces too), an IPv4 alias label, a hand-added link-local IPv6 address.
NETNS_SETUP = """
set -e
ip link set lo up
ip link add v0 address 00:15:5d:00:00:01 type veth peer name v1 address 00:15:5d:00:00:02
ip link add b0 type bridge
ip addr add 192.0.2.10/24 dev v0
ip addr add 192.0.2.11/24 label v0:1 dev v0
ip addr add fe80::215:5dff:fe00:1/64 dev v0 nodad
ip addr add 2001:db8:0:1::10/64 dev v0 nodad
ip addr add 198.51.100.1/25 dev b0
ip addr add 2001:db8:ffff::1/48 dev b0 nodad
"""


def run_in_netns(python_code: str) -> object:
    """Run ``python_code`` (which prints JSON) inside a fresh network namespace set up as above."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs unshare(1) and ip(8) to build a private network namespace")
    if os.geteuid() != 0:
        pytest.skip("needs root to create a network namespace with veth/bridge interfaces")
    script = NETNS_SETUP + f'exec "{sys.executable}" -c "$1"\n'
    proc = subprocess.run(
        ["unshare", "-n", "sh", "-c", script, "sh", textwrap.dedent(python_code)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT},
        capture_output=True,
        text=True,
        timeout=60,
    )
    if proc.returncode != 0 and "Operation not permitted" in proc.stderr:
        pytest.skip(f"network namespaces unavailable here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_prefix_length_from_netmask() -> None:
    assert prefix_length(socket.inet_pton(socket.AF_INET, "255.255.255.0")) == 24
    assert prefix_length(socket.inet_pton(socket.AF_INET, "255.255.255.255")) == 32
    assert prefix_length(socket.inet_pton(socket.AF_INET, "0.0.0.0")) == 0
    assert prefix_length(socket.inet_pton(socket.AF_INET, "255.255.128.0")) == 17
    assert prefix_length(socket.inet_pton(socket.AF_INET6, "ffff:ffff:ffff:ffff::")) == 64
    assert prefix_length(socket.inet_pton(socket.AF_INET6, "ffff:ffff:ffff:fffe::")) == 63
    assert prefix_length(b"\xff" * 16) == 128
    # Non-contiguous: only the leading run counts.
    assert prefix_length(socket.inet_pton(socket.AF_INET, "255.0.255.0")) == 8
    assert prefix_length(None) == 0


def test_ifaddr_flag_helpers() -> None:
    lo = IfAddr("lo", socket.AF_INET, "127.0.0.1", 8, IFF_UP | IFF_LOOPBACK)
    eth = IfAddr("eth0", socket.AF_INET, "192.0.2.1", 24, 0x1002)
    assert lo.is_loopback and lo.is_up
    assert not eth.is_loopback and not eth.is_up


def test_getifaddrs_on_this_machine_returns_well_formed_entries() -> None:
    # Read-only: only checks that every entry round-trips through inet_pton/inet_ntop.
    for entry in ifaddrs.getifaddrs():
        assert entry.family in (socket.AF_INET, socket.AF_INET6)
        packed = socket.inet_pton(entry.family, entry.address)
        assert socket.inet_ntop(entry.family, packed) == entry.address
        assert "%" not in entry.address
        assert 0 <= entry.prefixlen <= len(packed) * 8


def test_getifaddrs_in_a_network_namespace_exact_list() -> None:
    entries = run_in_netns(
        """
        import json
        from pykvpd.ifaddrs import getifaddrs
        print(json.dumps([[a.ifname, a.family, a.address, a.prefixlen, a.is_loopback, a.is_up]
                          for a in getifaddrs()]))
        """
    )
    v4, v6 = socket.AF_INET, socket.AF_INET6
    assert entries == [
        ["lo", v4, "127.0.0.1", 8, True, True],
        ["v0", v4, "192.0.2.10", 24, False, False],
        ["v0:1", v4, "192.0.2.11", 24, False, False],
        ["b0", v4, "198.51.100.1", 25, False, False],
        ["lo", v6, "::1", 128, True, True],
        ["v0", v6, "2001:db8:0:1::10", 64, False, False],
        ["v0", v6, "fe80::215:5dff:fe00:1", 64, False, False],
        ["b0", v6, "2001:db8:ffff::1", 48, False, False],
    ]


def test_getifaddrs_failure_raises_oserror_with_errno(monkeypatch: pytest.MonkeyPatch) -> None:
    import ctypes
    import errno

    class FailingLibc:
        def getifaddrs(self, _head: object) -> int:
            ctypes.set_errno(errno.EMFILE)
            return -1

    monkeypatch.setattr(ifaddrs, "_load_libc", lambda: FailingLibc())
    with pytest.raises(OSError) as info:
        ifaddrs.getifaddrs()
    assert info.value.errno == errno.EMFILE
    assert "getifaddrs() failed" in str(info.value)
