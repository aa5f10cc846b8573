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
  and of the daemon's reply back into what the host receives, with the kernel's caps and quirks
  (``submit`` applies them: they live in ``messages`` and ``conversion``, pure and testable).

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
import threading
import time
from dataclasses import dataclass
from typing import Callable, Deque, List, Optional

from pykvpd import protocol as p
from pykvpd.simulator.messages import HostReply, HostRequest, status_name, to_daemon, to_host
from pykvpd.simulator.unixsocket import listen_unix

log = logging.getLogger(__name__)

DRIVER_VERSION = "3.1"  # HV_DRV_VERSION, what the registration reply carries
DEFAULT_TIMEOUT = 30.0  # HV_UTIL_TIMEOUT


class KernelError(Exception):
    """A host request that got no reply from the daemon (the host sees HV_E_FAIL)."""


class NotRegistered(KernelError):
    """No daemon completed the handshake in time: the request never left the channel."""


class ReplyTimeout(KernelError):
    """The daemon did not answer within the kernel's reply timeout."""


class DaemonGone(KernelError):
    """The device was closed (by the daemon, or by us on EINVAL) with the request in flight."""


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
        self._listener = listen_unix(self.path, socket.SOCK_SEQPACKET, 4, 0.1)
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
