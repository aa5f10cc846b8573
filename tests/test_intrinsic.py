"""intrinsic: the Auto pool's ten values, the C daemon's parsing quirks and our improvements."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, List, Optional

import pytest

from pykvpd.ifaddrs import IFF_LOOPBACK, IFF_UP, IfAddr
from pykvpd.intrinsic import AUTO_KEYS, MAX_HOST_VALUE_CHARS, Intrinsic, join_addresses
from pykvpd.osinfo import fgets_lines, parse_os_release

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
V4, V6 = socket.AF_INET, socket.AF_INET6

DEBIAN_12_OS_RELEASE = b"""\
PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
HOME_URL="https://www.debian.org/"
SUPPORT_URL="https://www.debian.org/support"
BUG_REPORT_URL="https://bugs.debian.org/"
"""

# The fixed environment of spec Appendix A (what Debian's daemon answered).
APPENDIX_A_ADDRESSES = [
    IfAddr("lo", V4, "127.0.0.1", 8, IFF_UP | IFF_LOOPBACK),
    IfAddr("eth0", V4, "192.0.2.10", 24, IFF_UP),
    IfAddr("lo", V6, "::1", 128, IFF_UP | IFF_LOOPBACK),
    IfAddr("eth0", V6, "2001:db8:0:1::10", 64, IFF_UP),
    IfAddr("eth0", V6, "fe80::215:5dff:fe00:1", 64, IFF_UP),
]


def uname(release: str = "6.1.0-18-amd64", machine: str = "x86_64") -> Callable[[], object]:
    return lambda: SimpleNamespace(sysname="Linux", release=release, machine=machine)


def make(tmp_path: Path, os_release: Optional[bytes] = DEBIAN_12_OS_RELEASE, **kwargs) -> Intrinsic:
    """An Intrinsic over files in tmp_path; no real DNS, uname or interfaces unless passed."""
    etc = tmp_path / "etc"
    etc.mkdir(exist_ok=True)
    if os_release is not None:
        (etc / "os-release").write_bytes(os_release)
    kwargs.setdefault("uname", uname())
    kwargs.setdefault("hostname", lambda: "kvp-guest")
    kwargs.setdefault("resolver", lambda host: f"{host}.example.test")
    kwargs.setdefault("addresses", lambda: APPENDIX_A_ADDRESSES)
    kwargs.setdefault("fqdn_timeout", 10.0)
    return Intrinsic(os_release=str(etc / "os-release"), etc_dir=str(etc), **kwargs)


def os_values(intrinsic: Intrinsic) -> List[str]:
    """OSName, OSMajorVersion, OSMinorVersion."""
    return [intrinsic.item(i)[1] for i in (5, 6, 7)]


# ------------------------------------------------------------------------ key table


def test_auto_keys_exact_table() -> None:
    assert AUTO_KEYS == (
        "FullyQualifiedDomainName",
        "IntegrationServicesVersion",
        "NetworkAddressIPv4",
        "NetworkAddressIPv6",
        "OSBuildNumber",
        "OSName",
        "OSMajorVersion",
        "OSMinorVersion",
        "OSVersion",
        "ProcessorArchitecture",
    )


def test_appendix_a_environment_gives_debians_values(tmp_path: Path) -> None:
    intrinsic = make(tmp_path, uname=uname("6.1.0-37-amd64"))
    intrinsic.integration_services_version = "3.1"
    assert [intrinsic.item(i) for i in range(10)] == [
        ("FullyQualifiedDomainName", "kvp-guest.example.test"),
        ("IntegrationServicesVersion", "3.1"),
        ("NetworkAddressIPv4", "192.0.2.10"),
        ("NetworkAddressIPv6", "2001:db8:0:1::10;fe80::215:5dff:fe00:1"),
        ("OSBuildNumber", "6.1.0-37-amd64"),
        ("OSName", "Debian GNU/Linux"),
        ("OSMajorVersion", "12"),
        ("OSMinorVersion", ""),
        ("OSVersion", "6.1.0"),
        ("ProcessorArchitecture", "x86_64"),
    ]
    assert intrinsic.items() == [intrinsic.item(i) for i in range(10)]


def test_debian_12_os_values(tmp_path: Path) -> None:
    intrinsic = make(tmp_path)
    assert os_values(intrinsic) == ["Debian GNU/Linux", "12", ""]
    assert intrinsic.item(4) == ("OSBuildNumber", "6.1.0-18-amd64")
    assert intrinsic.item(8) == ("OSVersion", "6.1.0")


@pytest.mark.parametrize("index", [10, 11, 255, 2**31, 2**32 - 1, 2**40, -1])
def test_index_past_the_table_is_the_end(tmp_path: Path, index: int) -> None:
    assert make(tmp_path).item(index) is None


def test_integration_services_version_default_and_update(tmp_path: Path) -> None:
    intrinsic = make(tmp_path)
    assert intrinsic.item(1) == ("IntegrationServicesVersion", "Unknown version")
    intrinsic.integration_services_version = "3.1"
    assert intrinsic.item(1) == ("IntegrationServicesVersion", "3.1")


@pytest.mark.parametrize(
    ("release", "version"),
    [("6.1.0-18-amd64", "6.1.0"), ("5.14.0", "5.14.0"), ("6.8.0-1-azure-fips", "6.8.0"), ("", "")],
)
def test_os_version_is_release_cut_at_first_dash(
    tmp_path: Path, release: str, version: str
) -> None:
    intrinsic = make(tmp_path, uname=uname(release, "aarch64"))
    assert intrinsic.item(4) == ("OSBuildNumber", release)
    assert intrinsic.item(8) == ("OSVersion", version)
    assert intrinsic.item(9) == ("ProcessorArchitecture", "aarch64")


# ------------------------------------------------------------------ os-release quirks


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        # Every " and ' is deleted, wherever it is.
        (b"NAME=\"Foo 'Bar' Linux\"\n", ("Foo Bar Linux", None)),
        (b'NAME=a"b\'c"d\n', ("abcd", None)),
        # Backslash makes the next byte literal, even a quote or a backslash.
        (b'NAME="Foo \\"X\\" \\\\ \\n"\n', ('Foo "X" \\ n', None)),
        # A trailing backslash ends the value; an escaped newline is kept.
        (b"NAME=abc\\", ("abc", None)),
        (b"NAME=abc\\\nVERSION_ID=1\n", ("abc\n", "1")),
        # No trimming, anywhere.
        (b"NAME= Debian  \n", (" Debian  ", None)),
        (b"NAME =x\n NAME=y\nVERSION_ID =1\n", (None, None)),
        # Comments only when '#' is the first byte.
        (b"#NAME=commented\nNAME=real\n", ("real", None)),
        (b" #NAME=x\n", (None, None)),
        # Later occurrences override earlier ones.
        (b"NAME=first\nVERSION_ID=1\nNAME=second\nVERSION_ID=2\n", ("second", "2")),
        # The name is everything before the first '='.
        (b"NAME=a=b\n", ("a=b", None)),
        # Lines without '=' are skipped; CRLF keeps its CR (only '\n' is deleted).
        (b"garbage\nNAME=x\r\n", ("x\r", None)),
        # A NUL ends the line as C sees it.
        (b"NAME=ab\0cd\nVERSION_ID=3\n", ("ab", "3")),
        # Name comparison is case-sensitive; other keys are ignored.
        (b"name=x\nPRETTY_NAME=y\nVERSION=z\nID=w\n", (None, None)),
        (b"NAME=\n", ("", None)),
    ],
)
def test_parse_os_release_c_rules(content: bytes, expected: tuple) -> None:
    assert parse_os_release(content) == expected


def test_long_lines_are_split_like_fgets_512() -> None:
    # A 600-byte value: the first 511 bytes form a line, the rest is parsed as a new line.
    long_name = b"NAME=" + b"x" * 600 + b"\n"
    assert fgets_lines(long_name) == [long_name[:511], long_name[511:]]
    assert parse_os_release(long_name) == ("x" * 506, None)
    # ...so a "line" can start in the middle of a physical line.
    tricky = b"PRETTY_NAME=" + b"p" * (511 - 12) + b"VERSION_ID=9\n"
    assert parse_os_release(tricky) == (None, "9")


def test_os_release_without_name_keeps_uname_and_stops(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "redhat-release").write_bytes(b"Red Hat\n9\n2\n")
    intrinsic = make(tmp_path, os_release=b"ID=debian\n")
    assert os_values(intrinsic) == ["Linux", "", ""]


def test_empty_os_release_still_wins(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "SuSE-release").write_bytes(b"SUSE\n15\n")
    assert os_values(make(tmp_path, os_release=b"")) == ["Linux", "", ""]


def test_minor_version_is_empty_on_os_release_systems(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "redhat-release").write_bytes(b"Red Hat\n9\n2\n")
    content = b'NAME="Rocky Linux"\nVERSION_ID="9.3"\n'
    assert os_values(make(tmp_path, os_release=content)) == ["Rocky Linux", "9.3", ""]


def test_missing_os_release_falls_back_to_redhat_release(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "redhat-release").write_bytes(
        b"CentOS release 6.10 (Final)\n6\n10\nignored fourth line\n"
    )
    intrinsic = make(tmp_path, os_release=None)
    assert os_values(intrinsic) == ["CentOS release 6.10 (Final)", "6", "10"]


def test_suse_release_is_preferred_to_redhat_release(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "SuSE-release").write_bytes(b"SUSE Linux Enterprise Server 11\n11\n4")
    (tmp_path / "etc" / "redhat-release").write_bytes(b"Red Hat\n9\n2\n")
    # No quote stripping on release files; a last line without newline is complete.
    assert os_values(make(tmp_path, os_release=None)) == [
        "SUSE Linux Enterprise Server 11",
        "11",
        "4",
    ]


def test_short_release_file_leaves_versions_empty(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "redhat-release").write_bytes(b'"Quoted" Linux\n')
    assert os_values(make(tmp_path, os_release=None)) == ['"Quoted" Linux', "", ""]


def test_empty_release_file_keeps_uname_sysname(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "redhat-release").write_bytes(b"")
    assert os_values(make(tmp_path, os_release=None)) == ["Linux", "", ""]


def test_no_release_files_at_all_uses_uname(tmp_path: Path) -> None:
    intrinsic = make(tmp_path, os_release=None)
    assert os_values(intrinsic) == ["Linux", "", ""]
    assert intrinsic.item(4) == ("OSBuildNumber", "6.1.0-18-amd64")


def test_os_info_is_computed_once(tmp_path: Path) -> None:
    calls = []

    def counting_uname() -> object:
        calls.append(1)
        return uname()()

    intrinsic = make(tmp_path, uname=counting_uname)
    assert intrinsic.item(5) == ("OSName", "Debian GNU/Linux")
    (tmp_path / "etc" / "os-release").write_bytes(b"NAME=Changed\n")
    assert [intrinsic.item(i)[1] for i in (4, 5, 6, 8, 9)] == [
        "6.1.0-18-amd64",
        "Debian GNU/Linux",
        "12",
        "6.1.0",
        "x86_64",
    ]
    assert len(calls) == 1


# ----------------------------------------------------------------------- addresses


def test_loopback_flag_not_name_decides(tmp_path: Path) -> None:
    entries = [
        IfAddr("lo", V4, "127.0.0.1", 8, IFF_UP | IFF_LOOPBACK),
        IfAddr("lo2", V4, "127.0.0.2", 8, IFF_UP | IFF_LOOPBACK),  # any loopback-flagged one
        IfAddr("lo", V4, "10.9.9.9", 8, IFF_UP),  # named lo but not flagged: reported
        IfAddr("eth0", V4, "192.0.2.10", 24, 0),  # down: still reported
        IfAddr("eth0", V4, "192.0.2.10", 24, 0),  # duplicates are reported
    ]
    intrinsic = make(tmp_path, addresses=lambda: entries)
    assert intrinsic.item(2) == ("NetworkAddressIPv4", "10.9.9.9;192.0.2.10;192.0.2.10")
    assert intrinsic.item(3) == ("NetworkAddressIPv6", "")


def test_addresses_are_recomputed_on_every_request(tmp_path: Path) -> None:
    current = [IfAddr("eth0", V4, "192.0.2.10", 24, IFF_UP)]
    intrinsic = make(tmp_path, addresses=lambda: list(current))
    assert intrinsic.item(2)[1] == "192.0.2.10"
    current.append(IfAddr("eth1", V4, "198.51.100.4", 24, IFF_UP))
    assert intrinsic.item(2)[1] == "192.0.2.10;198.51.100.4"


def test_ipv6_list_is_capped_at_whole_addresses_within_1022(tmp_path: Path) -> None:
    # 39-character addresses: 25 of them take 25*39 + 24 = 999 chars, a 26th would need 1039.
    addrs = [f"2001:dbff:{0x1000 + i:x}:1111:2222:3333:4444:5555" for i in range(100)]
    assert all(len(a) == 39 for a in addrs)
    entries = [IfAddr("eth0", V6, a, 64, IFF_UP) for a in addrs]
    value = make(tmp_path, addresses=lambda: entries).item(3)[1]
    assert value == ";".join(addrs[:25])
    assert len(value) == 999 <= MAX_HOST_VALUE_CHARS


def test_ipv4_list_may_fill_exactly_1022(tmp_path: Path) -> None:
    # 63 addresses of 15 chars + 62 separators = 1007; then "10.0.0.1234"-like pad to exactly 1022.
    addrs = [f"192.168.{i // 100 + 100}.{i % 100 + 100}" for i in range(63)]
    assert all(len(a) == 15 for a in addrs)
    addrs.append("10.10.10.10")  # 1007 + 1 + 11 = 1019
    addrs.append("1.1")  # would make 1023: stops here
    addrs.append("1.1.1.1")  # and nothing after it is appended either
    entries = [IfAddr("eth0", V4, a, 24, IFF_UP) for a in addrs]
    value = make(tmp_path, addresses=lambda: entries).item(2)[1]
    assert value == ";".join(addrs[:64])
    assert len(value) == 1019


def test_join_addresses_boundaries() -> None:
    assert join_addresses([]) == ""
    assert join_addresses(["aaa", "bb"], limit=6) == "aaa;bb"
    assert join_addresses(["aaa", "bb"], limit=5) == "aaa"
    assert join_addresses(["aaaaaa"], limit=5) == ""


def test_exclude_ifaces_patterns(tmp_path: Path) -> None:
    entries = [
        IfAddr("eth0", V4, "192.0.2.10", 24, IFF_UP),
        IfAddr("eth0:1", V4, "192.0.2.11", 24, IFF_UP),
        IfAddr("docker0", V4, "172.17.0.1", 16, IFF_UP),
        IfAddr("veth1a2b", V6, "fe80::1", 64, IFF_UP),
        IfAddr("virbr0", V4, "192.168.122.1", 24, IFF_UP),
        IfAddr("eth1", V6, "2001:db8::1", 64, IFF_UP),
    ]
    default = make(tmp_path, addresses=lambda: entries)
    assert default.item(2)[1] == "192.0.2.10;192.0.2.11;172.17.0.1;192.168.122.1"
    assert default.item(3)[1] == "fe80::1;2001:db8::1"
    filtered = make(
        tmp_path, addresses=lambda: entries, exclude_ifaces=["docker*", "veth*", "virbr?"]
    )
    assert filtered.item(2)[1] == "192.0.2.10;192.0.2.11"
    assert filtered.item(3)[1] == "2001:db8::1"
    # Patterns match the whole name getifaddrs reports: "eth0" leaves the alias label in.
    exact = make(tmp_path, addresses=lambda: entries, exclude_ifaces=["eth0"])
    assert exact.item(2)[1] == "192.0.2.11;172.17.0.1;192.168.122.1"
    assert make(tmp_path, addresses=lambda: entries, exclude_ifaces=["eth0*"]).item(2)[1] == (
        "172.17.0.1;192.168.122.1"
    )


def test_getifaddrs_failure_gives_empty_value_and_one_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def failing() -> List[IfAddr]:
        raise OSError(24, "getifaddrs() failed: Too many open files")

    intrinsic = make(tmp_path, addresses=failing)
    with caplog.at_level(logging.WARNING, logger="pykvpd.intrinsic"):
        assert intrinsic.item(2) == ("NetworkAddressIPv4", "")
        assert intrinsic.item(3) == ("NetworkAddressIPv6", "")
    assert [r.getMessage() for r in caplog.records] == [
        "cannot list interface addresses: [Errno 24] getifaddrs() failed: Too many open files"
    ]


def test_real_getifaddrs_in_a_network_namespace(tmp_path: Path) -> None:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs unshare(1) and ip(8) to build a private network namespace")
    if os.geteuid() != 0:
        pytest.skip("needs root to create a network namespace with a veth interface")
    setup = """
set -e
ip link set lo up
ip link add eth0 address 00:15:5d:00:00:01 type veth peer name peer0
ip link add docker0 type bridge
ip addr add 192.0.2.10/24 dev eth0
ip addr add 2001:db8:0:1::10/64 dev eth0 nodad
ip addr add fe80::215:5dff:fe00:1/64 dev eth0 nodad
ip addr add 172.17.0.1/16 dev docker0
exec "$0" -c "$1"
"""
    code = """
import json
from pykvpd.intrinsic import Intrinsic
plain = Intrinsic(hostname=lambda: "h", resolver=lambda h: h)
excluding = Intrinsic(exclude_ifaces=["docker*"], hostname=lambda: "h", resolver=lambda h: h)
print(json.dumps([plain.item(2), plain.item(3), excluding.item(2)]))
"""
    proc = subprocess.run(
        ["unshare", "-n", "sh", "-c", setup, sys.executable, code],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT},
        capture_output=True,
        text=True,
        timeout=60,
    )
    if proc.returncode != 0 and "Operation not permitted" in proc.stderr:
        pytest.skip(f"network namespaces unavailable here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [
        ["NetworkAddressIPv4", "192.0.2.10;172.17.0.1"],
        ["NetworkAddressIPv6", "2001:db8:0:1::10;fe80::215:5dff:fe00:1"],
        ["NetworkAddressIPv4", "192.0.2.10"],
    ]


# ---------------------------------------------------------------------------- FQDN


def test_fqdn_is_the_canonical_name_and_is_cached(tmp_path: Path) -> None:
    lookups = []

    def resolver(host: str) -> str:
        lookups.append(host)
        return "kvp-guest.corp.example"

    intrinsic = make(tmp_path, resolver=resolver)
    assert intrinsic.item(0) == ("FullyQualifiedDomainName", "kvp-guest.corp.example")
    assert intrinsic.item(0) == ("FullyQualifiedDomainName", "kvp-guest.corp.example")
    assert lookups == ["kvp-guest"]


@pytest.mark.parametrize(
    "error", [socket.gaierror(-2, "Name or service not known"), OSError(101, "down"), IndexError()]
)
def test_fqdn_failure_falls_back_to_hostname_never_error_text(
    tmp_path: Path, error: Exception
) -> None:
    def resolver(host: str) -> str:
        raise error

    intrinsic = make(tmp_path, resolver=resolver)
    assert intrinsic.item(0) == ("FullyQualifiedDomainName", "kvp-guest")


def test_fqdn_empty_canonical_name_falls_back_to_hostname(tmp_path: Path) -> None:
    assert make(tmp_path, resolver=lambda host: "").item(0)[1] == "kvp-guest"


def test_hanging_resolver_does_not_hold_the_request(tmp_path: Path) -> None:
    release = threading.Event()
    lookups = []

    def hanging(host: str) -> str:
        lookups.append(host)
        # If item(0) waited for us, it would return this name instead of the hostname.
        release.wait(30)
        return "late.example.test"

    intrinsic = make(tmp_path, resolver=hanging, fqdn_timeout=0.05)
    try:
        assert intrinsic.item(0) == ("FullyQualifiedDomainName", "kvp-guest")
        # A second request while the lookup still hangs neither waits again nor starts another.
        assert intrinsic.item(0) == ("FullyQualifiedDomainName", "kvp-guest")
        assert lookups == ["kvp-guest"]
    finally:
        release.set()
    assert intrinsic.wait_fqdn(20)
    assert intrinsic.fqdn() == "late.example.test"
    assert lookups == ["kvp-guest"]


def test_stale_fqdn_is_served_while_refreshing(tmp_path: Path) -> None:
    now = [1000.0]
    names = iter(["one.example.test", "two.example.test"])
    gate = threading.Event()

    def resolver(host: str) -> str:
        name = next(names)
        if name.startswith("two"):
            assert gate.wait(30)
        return name

    intrinsic = make(tmp_path, resolver=resolver, clock=lambda: now[0], fqdn_ttl=300.0)
    assert intrinsic.fqdn() == "one.example.test"
    now[0] += 299.0
    assert intrinsic.fqdn() == "one.example.test"
    now[0] += 2.0  # past the TTL: the old name is returned at once, a refresh starts
    assert intrinsic.fqdn() == "one.example.test"
    assert not intrinsic.wait_fqdn(0)  # the refresh is still running
    gate.set()
    assert intrinsic.wait_fqdn(20)
    assert intrinsic.fqdn() == "two.example.test"


def test_failed_refresh_keeps_the_last_good_name(tmp_path: Path) -> None:
    now = [0.0]
    answers: List[Optional[str]] = ["good.example.test", None]

    def resolver(host: str) -> str:
        answer = answers.pop(0) if answers else "again.example.test"
        if answer is None:
            raise socket.gaierror(-3, "Temporary failure in name resolution")
        return answer

    intrinsic = make(
        tmp_path, resolver=resolver, clock=lambda: now[0], fqdn_ttl=300.0, fqdn_retry=30.0
    )
    assert intrinsic.fqdn() == "good.example.test"
    now[0] = 301.0
    assert intrinsic.fqdn() == "good.example.test"  # stale, refresh (fails) in background
    assert intrinsic.wait_fqdn(20)
    assert not answers
    now[0] = 320.0  # within the retry delay: no new lookup, still the good name
    assert intrinsic.fqdn() == "good.example.test"
    now[0] = 340.0  # retry delay passed: next refresh succeeds
    assert intrinsic.fqdn() == "good.example.test"
    assert intrinsic.wait_fqdn(20)
    assert intrinsic.fqdn() == "again.example.test"


def test_hostname_change_triggers_a_new_lookup(tmp_path: Path) -> None:
    host = ["alpha"]
    intrinsic = make(tmp_path, hostname=lambda: host[0])
    assert intrinsic.fqdn() == "alpha.example.test"
    host[0] = "beta"
    assert intrinsic.item(0) == ("FullyQualifiedDomainName", "beta.example.test")


def test_first_lookup_failure_is_retried_after_the_retry_delay(tmp_path: Path) -> None:
    now = [0.0]
    outcomes = [False, True]

    def resolver(host: str) -> str:
        if not outcomes.pop(0):
            raise socket.gaierror(-2, "Name or service not known")
        return "late.example.test"

    intrinsic = make(tmp_path, resolver=resolver, clock=lambda: now[0], fqdn_retry=30.0)
    assert intrinsic.fqdn() == "kvp-guest"
    assert intrinsic.wait_fqdn(20)
    now[0] = 10.0
    assert intrinsic.fqdn() == "kvp-guest"  # cached failure, no second lookup yet
    assert outcomes == [True]
    now[0] = 31.0
    assert intrinsic.fqdn() == "kvp-guest"  # the retry runs in the background
    assert intrinsic.wait_fqdn(20)
    assert intrinsic.fqdn() == "late.example.test"


def test_exclude_ifaces_rejects_a_bare_string(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="sequence of patterns"):
        make(tmp_path, exclude_ifaces="docker*")
    intrinsic = make(tmp_path)
    with pytest.raises(TypeError, match="sequence of patterns"):
        intrinsic.exclude_ifaces = "docker*"  # type: ignore[assignment]
    assert intrinsic.exclude_ifaces == ()


def test_exclude_ifaces_can_be_changed_at_run_time(tmp_path: Path) -> None:
    # The daemon reassigns it on SIGHUP; the next request must use the new patterns.
    entries = [
        IfAddr("eth0", V4, "192.0.2.10", 24, IFF_UP),
        IfAddr("docker0", V4, "172.17.0.1", 16, IFF_UP),
    ]
    intrinsic = make(tmp_path, addresses=lambda: entries)
    assert intrinsic.item(2)[1] == "192.0.2.10;172.17.0.1"
    intrinsic.exclude_ifaces = ["docker*"]
    assert intrinsic.exclude_ifaces == ("docker*",)
    assert intrinsic.item(2)[1] == "192.0.2.10"
