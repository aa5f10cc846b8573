"""The kernel half of the simulator: a model of the hv_utils KVP driver as the daemon sees it.

The real driver sits between the Hyper-V host (UTF-16 strings, typed values) and the daemon
(7432-byte ``struct hv_kvp_msg`` with UTF-8 strings) behind ``/dev/vmbus/hv_kvp``. Here the
device is an ``AF_UNIX`` ``SOCK_SEQPACKET`` socket: the daemon connects to it instead of opening
the device (``--device PATH``), and every read/write is one datagram, as on the char device.

What is modelled (spec §3, §4.1, §2.2, §6.1):

* single opener: a second connection while one is active is closed at once (the device's EBUSY);
* handshake: a write of at least 7432 bytes with byte 0 = REGISTER1 (100) or legacy REGISTER (4)
  is answered with the registration reply carrying the driver version ("3.1");
* anything the driver answers with EINVAL (short write, unknown handshake op, a reply when no
  request is outstanding, a late reply) closes the connection: the daemon sees an error and
  reopens, which is how the real daemon reacts to EINVAL;
* one host request outstanding at a time, a reply timeout (30 s by default) after which the host
  gets HV_E_FAIL, and closing the device with a request in flight fails that request;
* the conversions of the host's UTF-16 strings and typed values into the daemon's UTF-8 message,
  and of the daemon's reply back into what the host receives, with the kernel's caps and quirks.

What a socket cannot model: the driver only becomes READY when the daemon *reads* the
registration reply (here: as soon as it is sent), a read with a too-small buffer is EINVAL on the
device (a socket truncates), and a second open gets EBUSY (here: connect succeeds, then EOF).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Callable, Deque, List, Optional, Sequence, Union

from pykvpd import protocol as p

log = logging.getLogger(__name__)

DRIVER_VERSION = "3.1"  # HV_DRV_VERSION, what the registration reply carries
DEFAULT_TIMEOUT = 30.0  # HV_UTIL_TIMEOUT

# UTF-8 byte caps of the host -> daemon conversion (§4.1, §6.1).
KEY_BYTES = p.MAX_KEY_SIZE - 1  # 511
VALUE_BYTES = p.MAX_VALUE_SIZE - 1  # 2047
IP_ADAPTER_ID_BYTES = 128
IP_ADDR_BYTES = 1024  # ip_addr, sub_net, dns_addr
IP_GATEWAY_BYTES = 512

# UTF-16 unit caps of the daemon -> host conversion (§2.2).
HOST_KEY_UNITS = p.MAX_KEY_SIZE // 2 - 2  # 254
HOST_VALUE_UNITS = p.MAX_VALUE_SIZE // 2 - 2  # 1022
HOST_IP_ADAPTER_ID_UNITS = 128
HOST_IP_ADDR_UNITS = 1024
HOST_IP_GATEWAY_UNITS = 512

# Capacity of the host's own UTF-16 fields (units): key/value need room for their NUL.
HOST_KEY_FIELD_UNITS = p.MAX_KEY_SIZE // 2  # 256
HOST_VALUE_FIELD_UNITS = p.MAX_VALUE_SIZE // 2  # 1024

_U16 = struct.Struct("<H")

HostValue = Union[str, int, None]


class KernelError(Exception):
    """A host request that got no reply from the daemon (the host sees HV_E_FAIL)."""


class NotRegistered(KernelError):
    """No daemon completed the handshake in time: the request never left the channel."""


class ReplyTimeout(KernelError):
    """The daemon did not answer within the kernel's reply timeout."""


class DaemonGone(KernelError):
    """The device was closed (by the daemon, or by us on EINVAL) with the request in flight."""


class ConversionError(ValueError):
    """The daemon's reply holds bytes the kernel cannot convert (invalid UTF-8)."""


# --------------------------------------------------------------------------- conversions


def utf16_units(text: str) -> List[int]:
    """A host string as UTF-16 code units; lone surrogates in ``text`` stay lone units."""
    raw = text.encode("utf-16-le", "surrogatepass")
    return [u for (u,) in _U16.iter_unpack(raw)]


def units_text(units: Sequence[int]) -> str:
    """UTF-16 code units back to a Python string (what the host displays)."""
    raw = b"".join(_U16.pack(u) for u in units)
    return raw.decode("utf-16-le", "surrogatepass")


def host_to_utf8(units: Sequence[int], max_bytes: int) -> bytes:
    """The kernel's UTF-16 -> UTF-8 conversion with a byte budget (spec §4.1).

    Stops at the first NUL unit. Unpaired surrogates are dropped. A character whose encoding does
    not fit in what is left of the budget is skipped, but later, shorter characters are still
    emitted, so the result is not simply a prefix of the input.
    """
    out = bytearray()
    i = 0
    while i < len(units) and len(out) < max_bytes:
        unit = units[i]
        if unit == 0:
            break
        i += 1
        if 0xD800 <= unit <= 0xDFFF:
            low = units[i] if i < len(units) else 0
            if unit > 0xDBFF or not 0xDC00 <= low <= 0xDFFF:
                continue  # unpaired surrogate: dropped
            i += 1
            code = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)
        else:
            code = unit
        encoded = chr(code).encode("utf-8")
        if len(out) + len(encoded) <= max_bytes:
            out += encoded
    return bytes(out)


def _utf8_sequence_length(lead: int) -> int:
    if lead < 0x80:
        return 1
    if 0xC0 <= lead < 0xE0:
        return 2
    if 0xE0 <= lead < 0xF0:
        return 3
    if 0xF0 <= lead < 0xF8:
        return 4
    return 0  # continuation byte or a lead byte no valid UTF-8 has


def utf8_to_host(data: bytes, max_units: int) -> List[int]:
    """The kernel's UTF-8 -> UTF-16 conversion of a reply string with a unit budget (spec §2.2).

    ``data`` is the string as the kernel's strlen sees it (cut at the NUL). Conversion stops when
    the budget is used up (a character needing a surrogate pair stops it when only one unit is
    left); bytes past that point are never looked at. Invalid UTF-8 met before that point raises
    ConversionError, which the kernel reports to the host as HV_E_FAIL.
    """
    units: List[int] = []
    i = 0
    while i < len(data) and len(units) < max_units:
        size = _utf8_sequence_length(data[i])
        chunk = data[i : i + size] if size else data[i : i + 1]
        try:
            code = ord(chunk.decode("utf-8"))
        except UnicodeDecodeError:
            raise ConversionError(f"invalid UTF-8 at byte {i}: {chunk.hex()}") from None
        i += size
        if code >= 0x10000:
            if max_units - len(units) < 2:
                break
            code -= 0x10000
            units += [0xD800 | (code >> 10), 0xDC00 | (code & 0x3FF)]
        else:
            units.append(code)
    return units


def _cstr(field: bytes) -> bytes:
    """What strlen sees: the bytes up to the first NUL (or to the end of what is there)."""
    return field.split(b"\0", 1)[0]


def render_value(value: HostValue, value_type: int) -> Optional[bytes]:
    """The UTF-8 value bytes the kernel puts in a SET, or None for ``value_size`` 0 (§4.1)."""
    if value_type == p.REG_SZ:
        text = "" if value is None else value
        if not isinstance(text, str):
            raise TypeError(f"REG_SZ value must be a str, not {type(text).__name__}")
        return host_to_utf8(utf16_units(text), VALUE_BYTES)
    if value_type in (p.REG_U32, p.REG_U64):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"REG_U32/REG_U64 value must be an int, not {type(value).__name__}")
        bits = 32 if value_type == p.REG_U32 else 64
        return str(value & ((1 << bits) - 1)).encode("ascii")  # unsigned decimal
    return None  # REG_EXPAND_SZ, REG_QWORD(11), ...: the kernel sends the value empty


# --------------------------------------------------------------------------- host side


@dataclass(frozen=True)
class HostRequest:
    """One request as the host puts it on the channel (strings are the host's UTF-16 text).

    ``value`` is a str for REG_SZ, an int for REG_U32/REG_U64, ignored for other types. ``ip``
    holds host-side IP strings (adapter id = MAC for GET_IP_INFO, GUID for SET_IP_INFO).
    """

    op: int
    pool: int = p.POOL_EXTERNAL
    key: str = ""
    value: HostValue = None
    value_type: int = p.REG_SZ
    index: int = 0
    ip: Optional[p.IpInfo] = None


@dataclass(frozen=True)
class HostReply:
    """What the host gets back: the status and, for ENUMERATE/GET/GET_IP_INFO, the payload."""

    status: int
    key: str = ""
    value: str = ""
    ip: Optional[p.IpInfo] = None
    detail: str = ""  # why the kernel itself failed the request, for transcripts

    @property
    def status_name(self) -> str:
        return status_name(self.status)


def status_name(status: int) -> str:
    """HV_S_OK, HV_E_FAIL, ... or the hex value for codes the header does not name."""
    return p.STATUS_NAMES.get(status, f"0x{status:08X}")


def _ip_text(text: str, max_bytes: int) -> str:
    return host_to_utf8(utf16_units(text), max_bytes).decode("utf-8")


def to_daemon(request: HostRequest) -> bytes:
    """Build the 7432-byte message the kernel hands the daemon for a host request (§4, §6.1)."""
    op, pool = request.op, request.pool
    if op in (p.OP_GET, p.OP_SET, p.OP_DELETE):
        key = host_to_utf8(utf16_units(request.key), KEY_BYTES)
        value = render_value(request.value, request.value_type) if op == p.OP_SET else None
        return p.build_key_message(op, pool, key, value)
    if op == p.OP_ENUMERATE:
        return p.build_enumerate_message(pool, request.index)
    if op in (p.OP_GET_IP_INFO, p.OP_SET_IP_INFO):
        ip = request.ip or p.IpInfo(adapter_id="")
        info = p.IpInfo(
            adapter_id=_ip_text(ip.adapter_id, IP_ADAPTER_ID_BYTES),
            addr_family=ip.addr_family,
            dhcp_enabled=ip.dhcp_enabled,
            ip_addr=_ip_text(ip.ip_addr, IP_ADDR_BYTES),
            sub_net=_ip_text(ip.sub_net, IP_ADDR_BYTES),
            gate_way=_ip_text(ip.gate_way, IP_GATEWAY_BYTES),
            dns_addr=_ip_text(ip.dns_addr, IP_ADDR_BYTES),
        )
        return p.build_ip_message(op, info, pool)
    buf = bytearray(p.MSG_SIZE)  # an op the kernel does not know: only the header is copied
    buf[p.OFF_OPERATION], buf[p.OFF_POOL] = op & 0xFF, pool & 0xFF
    return bytes(buf)


def _convert(data: bytes, max_units: int) -> str:
    return units_text(utf8_to_host(_cstr(data), max_units))


def to_host(request: HostRequest, reply: bytes, legacy: bool = False) -> HostReply:
    """What the host receives for the daemon's ``reply`` to ``request`` (spec §2.2).

    The kernel uses the operation it remembered, never the reply's header. A REGISTER1 daemon's
    status is the u32 at offset 0, forwarded verbatim; a legacy daemon's status is HV_S_CONT when
    the ENUMERATE key's first byte is NUL, else HV_S_OK. A non-zero status carries no payload.
    """
    if legacy:
        status = p.HV_S_CONT if reply[p.OFF_ENUM_KEY] == 0 else p.HV_S_OK
    else:
        status = p.reply_status(reply)
    if status != p.HV_S_OK:
        return HostReply(status)
    op = request.op
    try:
        if op in (p.OP_SET, p.OP_DELETE, p.OP_SET_IP_INFO):
            return HostReply(status)
        if op == p.OP_GET:  # value read at 532 (the ENUMERATE offset); key not re-sent
            value = _convert(reply[p.OFF_ENUM_VALUE :], HOST_VALUE_UNITS)
            return HostReply(status, key=request.key, value=value)
        if op == p.OP_GET_IP_INFO:
            return HostReply(status, ip=_ip_to_host(reply))
        key = _convert(reply[p.OFF_ENUM_KEY :], HOST_KEY_UNITS)  # ENUMERATE and unknown ops
        value = _convert(reply[p.OFF_ENUM_VALUE :], HOST_VALUE_UNITS)
        return HostReply(status, key=key, value=value)
    except ConversionError as exc:
        return HostReply(p.HV_E_FAIL, detail=f"reply conversion failed: {exc}")


def _ip_to_host(reply: bytes) -> p.IpInfo:
    def field(offset: int, max_units: int) -> str:
        return _convert(reply[offset:], max_units)

    return p.IpInfo(
        adapter_id=field(p.OFF_IP_ADAPTER_ID, HOST_IP_ADAPTER_ID_UNITS),
        addr_family=reply[p.OFF_IP_ADDR_FAMILY],
        dhcp_enabled=reply[p.OFF_IP_DHCP_ENABLED],
        ip_addr=field(p.OFF_IP_ADDR, HOST_IP_ADDR_UNITS),
        sub_net=field(p.OFF_IP_SUBNET, HOST_IP_ADDR_UNITS),
        gate_way=field(p.OFF_IP_GATEWAY, HOST_IP_GATEWAY_UNITS),
        dns_addr=field(p.OFF_IP_DNS, HOST_IP_ADDR_UNITS),
    )


# --------------------------------------------------------------------------- the device


# Driver states (spec §3.1); USERSPACE_RECV is transient here and folded into READY.
STATE_INIT = "DEVICE_INIT"
STATE_READY = "READY"
STATE_REQ = "USERSPACE_REQ"

MAX_EVENTS = 10_000  # the most recent driver events kept in ``FakeKernel.events``
_RECV_SIZE = 65536  # larger than any message: longer writes are truncated to MSG_SIZE anyway


class _Pending:
    """One host request waiting for the daemon's reply."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.reply: Optional[bytes] = None
        self.error: Optional[KernelError] = None


@dataclass(frozen=True)
class Event:
    """One thing the driver saw, for transcripts and tests."""

    when: float
    kind: str
    detail: str


class FakeKernel:
    """The KVP driver behind a SOCK_SEQPACKET socket at ``path``; thread-safe.

    ``timeout`` is the reply timeout (HV_UTIL_TIMEOUT). ``transact`` is the raw interface (one
    daemon-side message in, the daemon's raw reply out); ``submit`` runs the host conversions
    around it and never raises for daemon failures: the host just sees HV_E_FAIL.
    """

    def __init__(
        self,
        path: str,
        timeout: float = DEFAULT_TIMEOUT,
        version: str = DRIVER_VERSION,
        on_event: Optional[Callable[[Event], None]] = None,
        register_wait: Optional[float] = None,
    ) -> None:
        """``register_wait``: how long a request waits for a daemon to be registered (default:
        the reply timeout); 0 fails it at once, as an interactive console wants."""
        self.path = path
        self.timeout = timeout
        self.register_wait = register_wait
        self.version = version
        self.on_event = on_event
        self.version_seen: Optional[int] = None  # register op of the last handshake: 100 or 4
        self.events: Deque[Event] = collections.deque(maxlen=MAX_EVENTS)
        self.registrations = 0
        self.requests = 0  # host requests sent to the daemon
        self.replies = 0  # replies accepted
        self.timeouts = 0
        self.failed_by_close = 0  # requests failed because the device was closed
        self.rejected_writes = 0  # EINVAL: short write, bad handshake, spurious/late reply
        self.busy_rejections = 0  # second opener while one is active (EBUSY)
        self.connections = 0
        self._lock = threading.Condition()
        self._channel = threading.Lock()  # one host request at a time
        self._state = STATE_INIT
        self._conn: Optional[socket.socket] = None
        self._pending: Optional[_Pending] = None
        self._listener: Optional[socket.socket] = None
        self._stopping = False
        self._threads: List[threading.Thread] = []

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeKernel:
        """Create the socket and start accepting the daemon."""
        if os.path.exists(self.path):
            os.unlink(self.path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        listener.bind(self.path)
        listener.listen(4)
        listener.settimeout(0.1)
        self._listener = listener
        self._spawn(self._accept_loop, "kvp-kernel-accept")
        return self

    def close(self) -> None:
        """Stop accepting, close the device (failing any in-flight request), remove the socket."""
        with self._lock:
            self._stopping = True
            conn = self._conn
            self._lock.notify_all()  # requests waiting for a daemon give up now
        if conn is not None:
            self._drop(conn, "simulator shutting down")
        if self._listener is not None:
            with contextlib.suppress(OSError):  # wakes accept() at once on Linux
                self._listener.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=2.0)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if os.path.exists(self.path):
            os.unlink(self.path)

    def __enter__(self) -> FakeKernel:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def state(self) -> str:
        with self._lock:
            return self._state

    @property
    def registered(self) -> bool:
        with self._lock:
            return self._state != STATE_INIT

    @property
    def legacy(self) -> bool:
        """True when the daemon registered with the legacy REGISTER (no IP injection)."""
        return self.version_seen == p.OP_REGISTER

    def wait_registered(self, timeout: float = 10.0, registrations: Optional[int] = None) -> bool:
        """Wait until a daemon is registered (and, if given, ``registrations`` reached)."""

        def ready() -> bool:
            enough = registrations is None or self.registrations >= registrations
            return self._state != STATE_INIT and enough

        with self._lock:
            return self._lock.wait_for(ready, timeout)

    def stats(self) -> dict:
        """The counters, for tests and the control socket."""
        with self._lock:
            return {
                "state": self._state,
                "registrations": self.registrations,
                "version_seen": self.version_seen,
                "requests": self.requests,
                "replies": self.replies,
                "timeouts": self.timeouts,
                "failed_by_close": self.failed_by_close,
                "rejected_writes": self.rejected_writes,
                "busy_rejections": self.busy_rejections,
                "connections": self.connections,
            }

    # ------------------------------------------------------------------ host interface

    def transact(self, raw_msg: bytes, timeout: Optional[float] = None) -> bytes:
        """Send one daemon-side message and return the daemon's raw reply (first 7432 bytes).

        Waits up to ``timeout`` (default: the kernel timeout) for a registered daemon, then up to
        the same time for the reply. Raises NotRegistered, ReplyTimeout or DaemonGone.
        """
        if len(raw_msg) != p.MSG_SIZE:
            raise ValueError(f"message is {len(raw_msg)} bytes, expected {p.MSG_SIZE}")
        return self.transact_raw(raw_msg, timeout)

    def transact_raw(self, data: bytes, timeout: Optional[float] = None) -> bytes:
        """Like ``transact`` for a datagram of any length (0, 2, 7431, 8000 bytes...).

        A real kernel only sends 7432-byte messages; this is for tests that feed a daemon
        malformed input. Same queueing, timeout and errors as ``transact``.
        """
        limit = self.timeout if timeout is None else timeout
        with self._channel:
            pending = self._queue(data, limit)
            if not pending.done.wait(limit):
                self._expire(pending, limit)
            if pending.error is not None:
                raise pending.error
            assert pending.reply is not None
            return pending.reply

    def drop_connection(self, reason: str = "kernel closed the device") -> bool:
        """Close the device under the daemon (module reload, hibernation): it must reopen.

        Fails an in-flight request with HV_E_FAIL, like any close. False if nobody was connected.
        """
        with self._lock:
            conn = self._conn
        if conn is None:
            return False
        self._drop(conn, reason)
        return True

    def submit(self, request: HostRequest, timeout: Optional[float] = None) -> HostReply:
        """Run one host request through the conversions and the daemon; HV_E_FAIL on failure."""
        message = to_daemon(request)
        try:
            reply = self.transact(message, timeout)
        except KernelError as exc:
            return HostReply(p.HV_E_FAIL, detail=str(exc))
        result = to_host(request, reply, self.legacy)
        if result.detail:
            self._event("conversion-failed", result.detail)
        return result

    def _queue(self, raw_msg: bytes, limit: float) -> _Pending:
        wait = limit if self.register_wait is None else min(limit, self.register_wait)
        with self._lock:
            ready = self._lock.wait_for(lambda: self._state == STATE_READY or self._stopping, wait)
            if self._stopping:
                raise NotRegistered("the simulated device is closed")
            if not ready and wait <= 0:
                raise NotRegistered(
                    f"no daemon is registered on {self.path}; start one with --device {self.path}"
                )
            if not ready:
                raise NotRegistered(f"no daemon registered within {wait:g} s")
            pending = _Pending()
            self._pending = pending
            self._state = STATE_REQ
            self.requests += 1
            conn = self._conn
        op, pool = p.header(raw_msg.ljust(2, b"\0"))
        self._event("request", f"{p.OP_NAMES.get(op, op)} pool {pool} ({len(raw_msg)} bytes)")
        assert conn is not None
        try:
            conn.send(raw_msg)
        except OSError as exc:
            self._drop(conn, f"send to daemon failed: {exc}")
        return pending

    def _expire(self, pending: _Pending, limit: float) -> None:
        with self._lock:
            if self._pending is not pending:
                return  # the reply (or the close) won the race
            self._pending = None
            self._state = STATE_READY
            self.timeouts += 1
            pending.error = ReplyTimeout(f"daemon did not reply within {limit:g} s")
        self._event("timeout", f"no reply within {limit:g} s: host gets HV_E_FAIL")

    # ------------------------------------------------------------------ device side

    def _spawn(self, target: Callable[..., None], name: str, *args: object) -> None:
        thread = threading.Thread(target=target, name=name, args=args, daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()]
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        while not self._stopping:
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                if self._stopping:
                    return
                raise
            conn.settimeout(None)
            with self._lock:
                busy = self._conn is not None or self._stopping
                if busy:
                    self.busy_rejections += 1
                else:
                    self._conn = conn
                    self._state = STATE_INIT
                    self.connections += 1
            if busy:
                self._event("busy", "second opener refused (EBUSY): connection closed")
                conn.close()
                continue
            self._event("open", "daemon opened the device")
            self._spawn(self._read_loop, "kvp-kernel-device", conn)

    def _read_loop(self, conn: socket.socket) -> None:
        """Every datagram the daemon writes is one write() on the device."""
        try:
            while True:
                try:
                    data = conn.recv(_RECV_SIZE)
                except OSError as exc:
                    self._drop(conn, f"device error: {exc}")
                    return
                if not data:
                    self._drop(conn, "daemon closed the device")
                    return
                error = self._on_write(conn, data)
                if error:
                    with self._lock:
                        self.rejected_writes += 1
                    self._drop(conn, f"EINVAL: {error}")
                    return
        finally:
            conn.close()

    def _on_write(self, conn: socket.socket, data: bytes) -> Optional[str]:
        """Handle one daemon write; returns the reason when the driver would answer EINVAL."""
        if len(data) < p.MSG_SIZE:
            return f"short write of {len(data)} bytes"
        data = data[: p.MSG_SIZE]
        with self._lock:
            state = self._state
            if state == STATE_INIT:
                op = data[p.OFF_OPERATION]
                if op not in (p.OP_REGISTER1, p.OP_REGISTER):
                    return f"incompatible daemon (handshake operation {op})"
            elif state == STATE_READY:
                return "spurious reply: no request outstanding"
            else:
                pending = self._pending
                assert pending is not None
                self._pending = None
                self._state = STATE_READY
                self.replies += 1
                self._event("reply", f"status {status_name(p.reply_status(data))}")
                pending.reply = data
                pending.done.set()
                self._lock.notify_all()
                return None
        return self._register(conn, op)

    def _register(self, conn: socket.socket, op: int) -> Optional[str]:
        """Send the registration reply, then become READY: no request can overtake the reply."""
        name = "REGISTER1" if op == p.OP_REGISTER1 else "legacy REGISTER"
        self._event("register", f"{name}: replying with version {self.version}")
        try:
            conn.send(p.build_register_reply(op, self.version))
        except OSError as exc:
            return f"registration reply not delivered: {exc}"
        with self._lock:
            if self._conn is conn:
                self._state = STATE_READY
                self.version_seen = op
                self.registrations += 1
                self._lock.notify_all()
        return None

    def _drop(self, conn: socket.socket, reason: str) -> None:
        """Close the device: fail the in-flight request, back to DEVICE_INIT (spec §3.2)."""
        with self._lock:
            if self._conn is not conn:
                return
            self._conn = None
            self._state = STATE_INIT
            pending, self._pending = self._pending, None
            if pending is not None:
                self.failed_by_close += 1
                pending.error = DaemonGone(f"device closed with the request in flight ({reason})")
                pending.done.set()
            self._lock.notify_all()
        self._event("close", reason)
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_RDWR)

    def _event(self, kind: str, detail: str) -> None:
        event = Event(time.monotonic(), kind, detail)
        with self._lock:
            self.events.append(event)
        log.debug("kernel %s: %s", kind, detail)
        if self.on_event is not None:
            self.on_event(event)
