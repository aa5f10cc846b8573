"""Moves whole 7432-byte KVP messages between the kernel and the daemon loop, and nothing else.

The kernel side is either the char device ``/dev/vmbus/hv_kvp`` (driven through the compiled C
shim, see csrc/hv_kvp_shim.c) or, for the host simulator and tests, a Unix ``SOCK_SEQPACKET``
socket with the same framing: one datagram per message. What a message means is
pykvpd.protocol's business; this module only enforces the framing (exactly ``MSG_SIZE`` bytes)
and turns every failure into one of three exceptions the daemon can act on:

* ``TransportError``: I/O on an open channel failed; close it, reopen, register again.
* ``DeviceBusy`` / ``DeviceMissing`` (both ``ChannelOpenError``): the channel cannot be opened;
  the C daemon exits 1 in that case and systemd decides what happens next.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import math
import os
import select
import socket
import stat
import time
from typing import Any, Dict, Optional

from pykvpd import protocol
from pykvpd.protocol import MSG_SIZE

log = logging.getLogger(__name__)

DEVICE_PATH = "/dev/vmbus/hv_kvp"
PROCESS_NAME = "hv_kvp_daemon"
# Reads ask for more than one message so an oversize one is seen; the shim exports its value.
_DEFAULT_READ_CAPACITY = 16384
_PR_SET_NAME = 15  # <linux/prctl.h>, for the ctypes fallback


class TransportError(OSError):
    """I/O on an open channel failed (short or oversize-by-error read/write, EINVAL, EBADF, peer
    closed, bad registration reply). The daemon's answer is always the same: close and reopen."""


class ChannelOpenError(OSError):
    """The channel could not be opened at all; reopening will not help."""


class DeviceBusy(ChannelOpenError):
    """EBUSY: the kernel allows one opener and another daemon already holds the device."""


class DeviceMissing(ChannelOpenError):
    """The device (or simulator socket) does not exist or nobody listens on it."""


# --------------------------------------------------------------------------- the C shim

_UNSET: Any = object()
_shim_module: Any = _UNSET


def _shim() -> Any:
    """The compiled shim module (``ffi``, ``lib``), or None when it was not built.

    Loaded lazily so the debug message about the fallback reaches a configured logger, once.
    """
    global _shim_module
    if _shim_module is _UNSET:
        try:
            from pykvpd import _hv_kvp_shim as module
        except ImportError as exc:
            log.debug("C shim not built (%s); using os.open/os.read/os.write instead", exc)
            module = None
        _shim_module = module
    return _shim_module


def _read_capacity() -> int:
    shim = _shim()
    return int(shim.lib.HVKVP_READ_CAPACITY) if shim is not None else _DEFAULT_READ_CAPACITY


def _check(result: int) -> int:
    """Turn a shim ``-errno`` into the matching OSError subclass (e.g. InterruptedError)."""
    if result < 0:
        raise OSError(-result, os.strerror(-result))
    return result


def _poll_fd(fd: int, timeout: Optional[float]) -> int:
    """revents of one fd for POLLIN (0 on timeout); retries EINTR with the remaining time."""
    shim = _shim()
    if shim is None:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        ready = poller.poll(None if timeout is None else math.ceil(timeout * 1000))
        return ready[0][1] if ready else 0
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        remaining_ms = -1
        if deadline is not None:
            remaining_ms = max(0, math.ceil((deadline - time.monotonic()) * 1000))
        try:
            return _check(shim.lib.hvkvp_poll(fd, remaining_ms))
        except InterruptedError:
            continue


# --------------------------------------------------------------------------- backends


class _DeviceIO:
    """The char device: a plain fd, through the shim (os.* when the shim is missing)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._shim = _shim()
        self._buf = (
            None if self._shim is None else self._shim.ffi.new("unsigned char[]", _read_capacity())
        )

    def read(self) -> bytes:
        if self._shim is None:
            return os.read(self.fd, _read_capacity())
        count = _check(self._shim.lib.hvkvp_read(self.fd, self._buf))
        return self._shim.ffi.buffer(self._buf, count)[:]

    def write(self, msg: bytes) -> int:
        if self._shim is None:
            return os.write(self.fd, msg)
        return _check(self._shim.lib.hvkvp_write(self.fd, msg))

    def close(self) -> None:
        os.close(self.fd)


_MSG_TRUNC = int(socket.MSG_TRUNC)  # a plain int: the enum's & costs more than the recv


class _SocketIO:
    """A connected SOCK_SEQPACKET socket: the simulator or a test playing the kernel."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()

    def read(self) -> bytes:
        data, _, flags, _ = self.sock.recvmsg(_read_capacity())
        if flags & _MSG_TRUNC:
            log.warning("message longer than %d bytes; its tail was discarded", len(data))
        return data

    def write(self, msg: bytes) -> int:
        return self.sock.send(msg, socket.MSG_NOSIGNAL)

    def close(self) -> None:
        self.sock.close()


# --------------------------------------------------------------------------- the channel


class Channel:
    """One open kernel channel. Not thread-safe: the daemon loop is its only user."""

    def __init__(self, io: Any, name: str) -> None:
        self._io = io
        self.name = name
        self.version: Optional[str] = None  # IntegrationServicesVersion, after register()

    @classmethod
    def from_socket(cls, sock: socket.socket, name: str = "<socket>") -> Channel:
        """Wrap an already connected SOCK_SEQPACKET socket (e.g. one end of a socketpair)."""
        return cls(_SocketIO(sock), name)

    @property
    def closed(self) -> bool:
        return self._io is None

    def fileno(self) -> int:
        return self._live().fd

    def _live(self) -> Any:
        if self._io is None:
            raise ValueError(f"I/O operation on closed channel {self.name}")
        return self._io

    def read(self) -> bytes:
        """Block until the kernel hands over one message; returns exactly MSG_SIZE bytes.

        A longer message is cut to MSG_SIZE and processed (as the C daemon's fixed-size read
        does); a shorter one, or end of file, raises TransportError.
        """
        io = self._live()
        while True:
            try:
                data = io.read()
            except InterruptedError:
                continue
            except BlockingIOError:  # the device's spurious wake-up: nothing queued after all
                self.wait_readable(None)
                continue
            except OSError as exc:
                raise TransportError(
                    exc.errno, f"read from {self.name} failed: {exc.strerror}"
                ) from exc
            break
        if not data:
            raise TransportError(f"{self.name} was closed by the other side (read returned 0)")
        if len(data) < MSG_SIZE:
            raise TransportError(
                f"short read from {self.name}: {len(data)} bytes, expected {MSG_SIZE}"
            )
        if len(data) > MSG_SIZE:
            log.warning(
                "oversize message from %s: %d bytes, processing its first %d",
                self.name,
                len(data),
                MSG_SIZE,
            )
            data = data[:MSG_SIZE]
        return data

    def write(self, msg: bytes) -> None:
        """Hand one reply (exactly MSG_SIZE bytes) to the kernel."""
        if len(msg) != MSG_SIZE:
            raise ValueError(f"a message is {MSG_SIZE} bytes, not {len(msg)}")
        io = self._live()
        while True:
            try:
                written = io.write(msg)
            except InterruptedError:
                continue
            except OSError as exc:
                raise TransportError(
                    exc.errno, f"write to {self.name} failed: {exc.strerror}"
                ) from exc
            break
        if written != MSG_SIZE:
            raise TransportError(f"short write to {self.name}: {written} of {MSG_SIZE} bytes")

    def wait_readable(self, timeout: Optional[float]) -> bool:
        """Sleep until a message (or an error/hang-up, which the next read reports) is pending.

        ``timeout`` in seconds, None for ever; False when it expired first.
        """
        revents = _poll_fd(self._live().fd, timeout)
        if revents & select.POLLNVAL:
            raise TransportError(errno.EBADF, f"poll on {self.name}: descriptor is not open")
        return revents != 0

    def register(self, timeout: Optional[float] = None) -> str:
        """The REGISTER1 handshake: write it, read the kernel's reply, return its version ("3.1").

        Reading the reply is what makes the kernel start forwarding host requests. ``timeout``
        bounds the wait for the reply (None: block like the C daemon).
        """
        self.write(protocol.encode_register())
        if timeout is not None and not self.wait_readable(timeout):
            raise TransportError(
                errno.ETIMEDOUT, f"no registration reply from {self.name} within {timeout} s"
            )
        msg = self.read()
        try:
            reply = protocol.decode_register_reply(msg)
        except protocol.MalformedMessage as exc:
            raise TransportError(
                errno.EPROTO, f"bad registration reply from {self.name}: {exc}"
            ) from None
        self.version = reply.version
        return reply.version

    def close(self) -> None:
        """Close the channel; the kernel fails any host request still in flight."""
        if self._io is not None:
            io, self._io = self._io, None
            io.close()

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._io is None else f"fd={self._io.fd}"
        return f"<Channel {self.name} {state}>"


# --------------------------------------------------------------------------- opening

_OPEN_ERRORS: Dict[int, Any] = {
    errno.EBUSY: DeviceBusy,
    errno.ENOENT: DeviceMissing,
    errno.ENOTDIR: DeviceMissing,
    errno.ENODEV: DeviceMissing,
    errno.ENXIO: DeviceMissing,
    errno.ECONNREFUSED: DeviceMissing,  # a socket file left behind by a simulator that is gone
}


def _open_error(exc: OSError, path: str) -> ChannelOpenError:
    cls = _OPEN_ERRORS.get(exc.errno or 0, ChannelOpenError)
    reason = exc.strerror or str(exc)
    if cls is DeviceBusy:
        reason += "; another KVP daemon has it open"
    return cls(exc.errno, f"open {path} failed: {reason}", path)


def _open_device(path: str) -> _DeviceIO:
    shim = _shim()
    if shim is None:
        return _DeviceIO(os.open(path, os.O_RDWR | os.O_CLOEXEC))
    while True:
        try:
            return _DeviceIO(_check(shim.lib.hvkvp_open(os.fsencode(path))))
        except InterruptedError:
            continue


def _connect_socket(path: str) -> _SocketIO:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)  # close-on-exec by default
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    return _SocketIO(sock)


def open_channel(path: str = DEVICE_PATH) -> Channel:
    """Open the kernel channel at ``path``: a Unix socket is connected as SOCK_SEQPACKET (the
    simulator), anything else is opened read-write as the char device.

    Raises DeviceBusy (EBUSY), DeviceMissing (absent, or a socket nobody listens on) or
    ChannelOpenError (anything else, e.g. EACCES, or EBADF after the module was torn down).
    """
    try:
        is_socket = stat.S_ISSOCK(os.stat(path).st_mode)
        io = _connect_socket(path) if is_socket else _open_device(path)
    except OSError as exc:
        raise _open_error(exc, path) from None
    return Channel(io, path)


# --------------------------------------------------------------------------- process name


def set_process_name(name: str = PROCESS_NAME) -> None:
    """Name the calling thread (the main thread names the process in ps, top and the journal),
    so tools that look for ``hv_kvp_daemon`` find us. The kernel keeps 15 bytes."""
    raw = os.fsencode(name)
    shim = _shim()
    if shim is not None:
        _check(shim.lib.hvkvp_set_name(raw))
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_NAME, ctypes.c_char_p(raw), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_NAME) failed: {os.strerror(err)}")
