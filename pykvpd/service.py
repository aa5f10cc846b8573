"""systemd integration: journal or stderr logging, per-operation log records, sd_notify.

Everything here degrades silently: without systemd-python (journal fields), ``JOURNAL_STREAM``
or ``NOTIFY_SOCKET`` the daemon logs to stderr and skips notifications, because the same
code runs under systemd, under a SysV script, in a container and in the tests.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from typing import Mapping, Optional

from pykvpd.protocol import STATUS_NAMES

SYSLOG_IDENTIFIER = "pykvpd"
STDERR_FORMAT = "%(asctime)s %(name)s[%(process)d] %(levelname)s: %(message)s"

log = logging.getLogger(__name__)

# Handlers installed by setup_logging(), so a reload (SIGHUP) replaces them instead of stacking.
_installed_handlers: list = []


def _journal_module():
    """systemd.journal if systemd-python is installed (not the unrelated PyPI 'systemd')."""
    try:
        from systemd import journal  # type: ignore[import-not-found]
    except ImportError:
        return None
    return journal if hasattr(journal, "JournalHandler") else None


def stderr_is_journal(environ: Optional[Mapping[str, str]] = None) -> bool:
    """True when JOURNAL_STREAM names our stderr (a child may inherit a stale one)."""
    env = os.environ if environ is None else environ
    value = env.get("JOURNAL_STREAM", "")
    if not value:
        return False
    try:
        dev, ino = (int(part) for part in value.split(":", 1))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def _syslog_handler() -> Optional[logging.Handler]:
    """syslog at /dev/log (ident ``pykvpd``), for a detached daemon whose stderr is /dev/null."""
    import logging.handlers

    try:
        handler = logging.handlers.SysLogHandler(address="/dev/log")
    except OSError:
        return None
    handler.ident = f"{SYSLOG_IDENTIFIER}[{os.getpid()}]: "
    handler.setFormatter(logging.Formatter("%(message)s"))
    return handler


def setup_logging(
    debug: bool, use_journal: Optional[bool] = None, use_syslog: bool = False
) -> None:
    """Route the root logger to the journal (structured fields) or to stderr.

    ``use_journal=None`` decides automatically: the journal when systemd started us with stderr
    connected to it and systemd-python is importable. ``use_syslog`` (a detached daemon, like
    the C one, which logs to syslog) prefers /dev/log to stderr when there is no journal.
    Calling it again (on SIGHUP) replaces the handlers this function installed earlier.
    """
    if use_journal is None:
        use_journal = stderr_is_journal()
    handler: Optional[logging.Handler] = None
    if use_journal:
        journal = _journal_module()
        if journal is not None:
            handler = journal.JournalHandler(SYSLOG_IDENTIFIER=SYSLOG_IDENTIFIER)
            handler.setFormatter(logging.Formatter("%(message)s"))
    if handler is None and use_syslog:
        handler = _syslog_handler()
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(STDERR_FORMAT))
    root = logging.getLogger()
    for old in _installed_handlers:
        root.removeHandler(old)
    _installed_handlers[:] = [handler]
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)


def format_status(status: int) -> str:
    """Status as the host sees it: ``0x80070103``."""
    return f"0x{status & 0xFFFFFFFF:08x}"


def log_operation(
    logger: logging.Logger,
    op: str,
    pool: Optional[int],
    key: Optional[str],
    status: int,
    value: Optional[str] = None,
    debug_values: bool = False,
) -> None:
    """One DEBUG record per host operation, filterable with ``journalctl KVP_POOL=1``.

    Values can be secrets pushed by the host (Ignition configs, passwords), so they appear
    (message and KVP_VALUE) only with ``debug_values``. The message is pre-formatted so no
    ``CODE_ARGS`` field can carry a value into the journal behind the caller's back.
    """
    if not logger.isEnabledFor(logging.DEBUG):
        return
    status_hex = format_status(status)
    fields = {"KVP_OP": op, "KVP_STATUS": status_hex}
    parts = [op]
    if pool is not None:
        fields["KVP_POOL"] = str(pool)
        parts.append(f"pool={pool}")
    if key is not None:
        fields["KVP_KEY"] = key
        parts.append(f"key={key!r}")
    if debug_values and value is not None:
        fields["KVP_VALUE"] = value
        parts.append(f"value={value!r}")
    name = STATUS_NAMES.get(status & 0xFFFFFFFF)
    parts.append(f"status={name} ({status_hex})" if name else f"status={status_hex}")
    logger.debug(" ".join(parts), extra=fields)  # no args: no % parsing, no CODE_ARGS


def notify_address(value: str) -> Optional[str]:
    """NOTIFY_SOCKET as a connectable AF_UNIX address: '@name' is abstract, '/path' a file."""
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None  # vsock: and other forms are not used for system services


class Notifier:
    """sd_notify for readiness, status, watchdog and stopping; never raises.

    One datagram socket, connected at the first message and kept open: a keep-alive then costs
    one ``send``, not the socket + setsockopt + sendmsg + close of a fresh sd_notify() (or
    systemd-python's ``daemon.notify``). With no NOTIFY_SOCKET every method is a no-op.
    """

    def __init__(self, environ: Optional[Mapping[str, str]] = None) -> None:
        env = os.environ if environ is None else environ
        self._socket_value = env.get("NOTIFY_SOCKET", "")
        self._interval = _watchdog_interval(env.get("WATCHDOG_USEC", ""),
                                            env.get("WATCHDOG_PID", ""))
        self._next_ping = 0.0
        self._sock: Optional[socket.socket] = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        """Whether a service manager is listening."""
        return bool(self._socket_value)

    def ready(self, status: str) -> None:
        """Registered with the kernel: systemd may start units ordered after us."""
        self._send("READY=1\nSTATUS=" + _one_line(status))

    def reloading(self) -> None:
        """Configuration reload started (SIGHUP); follow with ready().

        MONOTONIC_USEC= is what systemd 253+ needs to match the message to a reload it asked
        for (Type=notify-reload); systemd 252 ignores it.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def status(self, text: str) -> None:
        """Free-form line shown by ``systemctl status``."""
        self._send("STATUS=" + _one_line(text))

    def stopping(self, status: str) -> None:
        """Clean shutdown has begun; STATUS= in the same message, so no stale text remains."""
        self._send("STOPPING=1\nSTATUS=" + _one_line(status))

    def watchdog(self) -> Optional[float]:
        """Keep-alive if one is due; the seconds until the next is due (how long the serving
        loop may sleep), or None without a watchdog.

        Sent at most once per watchdog_interval() however often it is called: the serving loop
        calls it on every turn while it is making progress, under load once per host request,
        and one clock read is all that request pays.
        """
        interval = self._interval
        if interval is None:
            return None
        now = time.monotonic()
        if now >= self._next_ping:
            self._next_ping = now + interval
            self._send("WATCHDOG=1")
        return self._next_ping - now

    def watchdog_interval(self) -> Optional[float]:
        """Seconds between keep-alives (half of WATCHDOG_USEC), or None if no watchdog is armed."""
        return self._interval

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _send(self, message: str) -> None:
        if not self._socket_value:
            return
        try:
            if self._sock is None:
                self._sock = self._connect()
            self._sock.send(message.encode("utf-8", "replace"))
        except OSError as exc:  # notifications are advisory; the daemon must keep serving
            self.close()  # the manager may have been re-executed: connect afresh next time
            if not self._warned:
                log.warning("sd_notify to %s failed: %s", self._socket_value, exc)
                self._warned = True

    def _connect(self) -> socket.socket:
        address = notify_address(self._socket_value)
        if address is None:
            raise OSError(f"unsupported NOTIFY_SOCKET {self._socket_value!r}")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            sock.connect(address)
        except OSError:
            sock.close()
            raise
        return sock


def _watchdog_interval(usec_text: str, pid_text: str) -> Optional[float]:
    """Half of WATCHDOG_USEC in seconds, or None when unset, invalid or meant for another PID."""
    if not usec_text:
        return None
    try:
        if pid_text and int(pid_text) != os.getpid():
            return None
        usec = int(usec_text)
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 2 / 1_000_000


def _one_line(text: str) -> str:
    """A newline would start a new sd_notify assignment."""
    return " ".join(str(text).splitlines())
