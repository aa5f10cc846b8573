"""The Auto pool (pool 2): the ten key/value pairs the guest generates for the host's ENUMERATE.

The host walks index 0, 1, 2, ... and stops at the first non-OK status; ``Intrinsic.item`` answers
one index with ``(key, value)`` or None past the end. Values follow the C daemon (spec §5) so the
host sees the same data, with two documented improvements (spec §9 rows 16 and 17):

* NetworkAddressIPv4/IPv6 lists are capped at whole addresses within the 1022 characters the
  kernel passes on; the C daemon's lists were cut mid-address by the kernel instead.
* FullyQualifiedDomainName is resolved lazily with a short timeout, cached, and refreshed when the
  hostname changes or the cache ages; on failure it is the plain hostname. The C daemon resolved
  it once at start-up (often before networking) and reported an error text on failure.

A third, opt-in difference: interfaces matching ``exclude_ifaces`` patterns (for example
``docker*``) are left out of the address lists; with the default (no patterns) the lists equal C's.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import socket
import threading
import time
from typing import Callable, Iterable, List, NamedTuple, Optional, Sequence, Tuple

from . import ifaddrs
from .osinfo import OsInfo, UnameResult, compute_os_info

log = logging.getLogger(__name__)

# Index -> key, the fixed table of spec §5.1. Spelling is part of the host interface.
AUTO_KEYS: Tuple[str, ...] = (
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

# The kernel converts a value to at most 1022 UTF-16 units for the host; more is cut silently.
MAX_HOST_VALUE_CHARS = 1022

DEFAULT_FQDN_TIMEOUT = 2.0
DEFAULT_FQDN_TTL = 300.0
DEFAULT_FQDN_RETRY = 30.0  # a failed lookup (e.g. network not up yet) is retried sooner


# ------------------------------------------------------------------------- addresses


def join_addresses(addresses: Iterable[str], limit: int = MAX_HOST_VALUE_CHARS) -> str:
    """``;``-joined addresses, stopping before the first one that would exceed ``limit`` chars."""
    joined = ""
    for address in addresses:
        candidate = f"{joined};{address}" if joined else address
        if len(candidate) > limit:
            break
        joined = candidate
    return joined


def select_addresses(
    entries: Iterable[ifaddrs.IfAddr], family: int, exclude_ifaces: Sequence[str] = ()
) -> List[str]:
    """Addresses of one family in the given order; loopback-flagged and excluded interfaces skipped.

    Down interfaces, link-local and duplicate addresses stay, as in the C daemon.
    """
    return [
        entry.address
        for entry in entries
        if entry.family == family
        and not entry.is_loopback
        and not any(fnmatch.fnmatchcase(entry.ifname, pattern) for pattern in exclude_ifaces)
    ]


# ------------------------------------------------------------------------------ FQDN


def resolve_canonical_name(hostname: str) -> str:
    """``getaddrinfo(hostname, AF_INET, AI_CANONNAME)``'s canonical name ("" when there is none)."""
    # An ASCII name goes as bytes: a str would load the IDNA codec (and unicodedata) for nothing.
    host = hostname.encode("ascii") if hostname.isascii() else hostname
    results = socket.getaddrinfo(
        host, None, socket.AF_INET, socket.SOCK_STREAM, 0, socket.AI_CANONNAME
    )
    return results[0][3] if results else ""


class _Cached(NamedTuple):
    host: str
    value: str
    expires: float
    resolved: bool  # False when the value is only the hostname after a failed lookup


class _Lookup:
    """One background resolution of one hostname."""

    def __init__(self, host: str, started: float) -> None:
        self.host = host
        self.started = started
        self.done = threading.Event()


class Intrinsic:
    """The Auto pool's values; ``item(index)`` answers the host's ENUMERATE of pool 2.

    OS info is read once, on first use. Address lists are recomputed on every request. The
    FQDN never makes a request wait more than ``fqdn_timeout`` seconds: a lookup runs in a daemon
    thread; until it answers (or when it fails) the value is the plain hostname, and a stale
    cached value is served while a refresh runs in the background.
    """

    def __init__(
        self,
        *,
        os_release: str = "/etc/os-release",
        etc_dir: str = "/etc",
        exclude_ifaces: Sequence[str] = (),
        fqdn_timeout: float = DEFAULT_FQDN_TIMEOUT,
        fqdn_ttl: float = DEFAULT_FQDN_TTL,
        fqdn_retry: float = DEFAULT_FQDN_RETRY,
        uname: Callable[[], UnameResult] = os.uname,
        hostname: Callable[[], str] = socket.gethostname,
        resolver: Callable[[str], str] = resolve_canonical_name,
        addresses: Callable[[], Sequence[ifaddrs.IfAddr]] = ifaddrs.getifaddrs,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.integration_services_version = "Unknown version"
        self._os_release = os_release
        self._etc_dir = etc_dir
        self.exclude_ifaces = exclude_ifaces  # the setter validates and makes a tuple
        self._fqdn_timeout = fqdn_timeout
        self._fqdn_ttl = fqdn_ttl
        self._fqdn_retry = fqdn_retry
        self._uname = uname
        self._hostname = hostname
        self._resolver = resolver
        self._addresses = addresses
        self._clock = clock
        self._os_info: Optional[OsInfo] = None
        self._lock = threading.Lock()
        self._cache: Optional[_Cached] = None
        self._lookup: Optional[_Lookup] = None
        self._wanted_host: Optional[str] = None
        self._last_address_error: Optional[str] = None

    # -- public

    def item(self, index: int) -> Optional[Tuple[str, str]]:
        """(key, value) for index 0..9; None past the end (the caller answers HV_S_CONT)."""
        if not 0 <= index < len(AUTO_KEYS):
            return None
        return AUTO_KEYS[index], self._value(index)

    def items(self) -> List[Tuple[str, str]]:
        """All ten pairs in index order (for ``kvp`` listings and status)."""
        return [(key, self._value(index)) for index, key in enumerate(AUTO_KEYS)]

    @property
    def exclude_ifaces(self) -> Tuple[str, ...]:
        """fnmatch patterns of interfaces left out of the address lists; assignable (SIGHUP)."""
        return self._exclude_ifaces

    @exclude_ifaces.setter
    def exclude_ifaces(self, patterns: Sequence[str]) -> None:
        if isinstance(patterns, (str, bytes)):
            raise TypeError("exclude_ifaces must be a sequence of patterns, not one string")
        self._exclude_ifaces = tuple(patterns)

    @property
    def os_info(self) -> OsInfo:
        if self._os_info is None:
            self._os_info = compute_os_info(self._uname(), self._os_release, self._etc_dir)
        return self._os_info

    def network_addresses(self, family: int) -> str:
        """The NetworkAddressIPv4 (AF_INET) or NetworkAddressIPv6 (AF_INET6) value.

        When ``getifaddrs()`` fails the value is empty and the error is logged (the C daemon
        sent the text "getifaddrs failed" to the host instead).
        """
        try:
            entries = self._addresses()
        except OSError as exc:
            message = str(exc)
            if message != self._last_address_error:  # one log line per distinct failure
                log.warning("cannot list interface addresses: %s", message)
            self._last_address_error = message
            return ""
        self._last_address_error = None
        return join_addresses(select_addresses(entries, family, self._exclude_ifaces))

    def fqdn(self) -> str:
        """FullyQualifiedDomainName: cached canonical name, else the hostname; never blocks long.

        A lookup that hangs is not started again for the same hostname until it returns
        (``getaddrinfo`` has its own resolver timeouts); requests meanwhile get the hostname.
        """
        host = self._current_hostname()
        now = self._clock()
        with self._lock:
            self._wanted_host = host
            cached = self._cache if self._cache is not None and self._cache.host == host else None
            if cached is not None and now < cached.expires:
                return cached.value
            lookup = self._lookup
            if lookup is None or lookup.host != host:
                lookup = self._start_lookup(host, now)
        if cached is not None:
            return cached.value  # stale: serve it while the refresh runs
        lookup.done.wait(max(0.0, lookup.started + self._fqdn_timeout - now))
        with self._lock:
            if self._cache is not None and self._cache.host == host:
                return self._cache.value
        return host

    def wait_fqdn(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for a running FQDN lookup; True when none is running any more.

        For one-shot callers (a CLI listing wants the resolved name, not the fallback) and tests;
        the daemon never calls it.
        """
        with self._lock:
            lookup = self._lookup
        return lookup is None or lookup.done.wait(timeout)

    # -- internals

    def _value(self, index: int) -> str:
        if index == 0:
            return self.fqdn()
        if index == 1:
            return self.integration_services_version
        if index == 2:
            return self.network_addresses(socket.AF_INET)
        if index == 3:
            return self.network_addresses(socket.AF_INET6)
        info = self.os_info
        return (
            info.build_number,
            info.name,
            info.major_version,
            info.minor_version,
            info.version,
            info.architecture,
        )[index - 4]

    def _current_hostname(self) -> str:
        try:
            return self._hostname()
        except OSError as exc:
            log.warning("gethostname() failed: %s", exc)
            return ""

    def _start_lookup(self, host: str, now: float) -> _Lookup:
        """Start resolving ``host`` in a daemon thread (caller holds the lock)."""
        lookup = _Lookup(host, now)
        self._lookup = lookup
        thread = threading.Thread(
            target=self._run_lookup, args=(lookup,), name="pykvpd-fqdn", daemon=True
        )
        thread.start()
        return lookup

    def _run_lookup(self, lookup: _Lookup) -> None:
        try:
            value = self._resolver(lookup.host) or lookup.host
            resolved = True
        except Exception as exc:  # any resolver failure means "use the hostname"
            log.info("FQDN lookup of %r failed, using the hostname: %s", lookup.host, exc)
            value = lookup.host
            resolved = False
        with self._lock:
            if self._lookup is lookup:
                self._lookup = None
            if lookup.host == self._wanted_host:
                self._store(lookup.host, value, resolved)
        lookup.done.set()

    def _store(self, host: str, value: str, resolved: bool) -> None:
        """Cache a lookup result; a failure keeps an earlier good name for the same host."""
        now = self._clock()
        old = self._cache
        if not resolved and old is not None and old.host == host and old.resolved:
            self._cache = _Cached(host, old.value, now + self._fqdn_retry, True)
            return
        ttl = self._fqdn_ttl if resolved else self._fqdn_retry
        self._cache = _Cached(host, value, now + ttl, resolved)
