"""The long-running service: wires transport -> handler -> transport, and nothing more.

The loop blocks in ``poll`` with no timeout while idle (no wake-ups unless systemd asked for a
watchdog or a status update is pending), survives device errors by reopening and re-registering with
bounded backoff, and on SIGTERM finishes the request in hand before exiting 0. The command line
and process set-up are in pykvpd/startup.py.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import select
import signal
import time
from typing import Optional

from . import devicewait, transport
from .handler import Handler, Outcome
from .hostwrites import HostWriteLog
from .protocol import HV_E_FAIL, OP_NAMES, encode_status
from .store import PoolDir

log = logging.getLogger("pykvpd")

DEFAULT_DEVICE = "/dev/vmbus/hv_kvp"
PROCESS_NAME = "hv_kvp_daemon"  # LISA and WALinuxAgent look the daemon up by this name
LATE_REPLY_SECONDS = (
    28.0  # the kernel gives up at 30 s; a later reply would answer the next request
)
REOPEN_GIVE_UP_SECONDS = 300.0
STATUS_EVERY_SECONDS = 1.0
REGISTER_TIMEOUT_SECONDS = 30.0  # a kernel that never answers the handshake: reopen

# --------------------------------------------------------------------------- the daemon


class _StopWhileWaiting(Exception):
    """SIGTERM/SIGINT arrived while the device was awaited: nothing is in hand, exit 0 now."""


class Daemon:
    """State of one running daemon: its pools, its channel to the kernel, its counters."""

    def __init__(self, args: argparse.Namespace, config) -> None:  # noqa: ANN001
        from . import service
        from .intrinsic import Intrinsic

        self.args = args
        self.config = config
        self.debug = bool(args.debug or config.debug)
        self.debug_values = bool(args.debug_values or config.debug_values)
        self.notifier = service.Notifier()
        self._service = service
        pool_dir = args.pool_dir or config.pool_dir
        self.pools = PoolDir(pool_dir, create=True, mode=config.pool_file_mode, watch=True)
        self.pools.init_files()
        self.intrinsic = Intrinsic(exclude_ifaces=tuple(config.exclude_interfaces))
        self.host_writes = HostWriteLog(pool_dir, config.pool_file_mode)
        self.handler = Handler(
            self.pools, self.intrinsic, self._netconfig(pool_dir), self.host_writes
        )
        self.channel: Optional[transport.Channel] = None
        self.stopping = False
        self._awaiting_device = False  # SIGTERM then interrupts the wait (_StopWhileWaiting)
        self.reload_requested = False
        self.reloads = 0  # SIGHUPs handled, taken or refused: `pykvpd reload` waits on it
        self.last_reload: Optional[dict] = None
        self.host_ops = 0
        self.last_op = ""
        self.last_error = ""
        self.registered_since: Optional[float] = None
        self._status_due: Optional[float] = None
        self._status_file = None
        self._status_path = args.status_file
        self._wakeup_r: Optional[int] = None
        self._poller: Optional[select.poll] = None
        self._polled_fd = -1

    def _netconfig(self, pool_dir: str) -> _LazyNetConfig:
        return _LazyNetConfig(pool_dir, self.args.ip_injection or self.config.ip_injection)

    # ----------------------------------------------------------------- channel

    def connect(self, first: bool) -> None:
        """Open the device (waiting for it if allowed) and register; raises on fatal errors."""
        device = self.args.device
        wait = self.args.wait_device
        if wait is None:  # a config file may set it; without one, exit at once as the C daemon
            wait = self.config.wait_device if self.config.source else 0.0
        if first and wait > 0 and not os.path.exists(device):
            log.info("waiting up to %g s for %s", wait, device)
            # The wait retries its poll after a signal handler returns; only an exception from
            # the handler ends it early.
            self._awaiting_device = True
            try:
                if self.stopping:
                    raise _StopWhileWaiting
                found = devicewait.wait_for_device(device, wait, self._wakeup_r)
            finally:
                self._awaiting_device = False
            if not found:
                raise transport.DeviceMissing(f"{device} did not appear within {wait:g} s")
        self.channel = transport.open_channel(device)
        version = self.channel.register(timeout=REGISTER_TIMEOUT_SECONDS)
        self.intrinsic.integration_services_version = version
        self.registered_since = time.time()
        log.info("registered with the kernel on %s; IntegrationServicesVersion %s", device, version)

    def reconnect(self) -> None:
        """Close, reopen and re-register with bounded exponential backoff."""
        self._close_channel()
        delay, deadline = 0.05, time.monotonic() + REOPEN_GIVE_UP_SECONDS
        while not self.stopping:
            try:
                self.connect(first=False)
                self._update_status(force=True)
                return
            except transport.DeviceBusy:
                raise
            except (OSError, transport.TransportError) as exc:
                self._close_channel()
                if time.monotonic() + delay > deadline:
                    raise transport.TransportError(
                        f"cannot reopen {self.args.device} for {REOPEN_GIVE_UP_SECONDS:g} s: {exc}"
                    ) from None
                log.warning(
                    "reopening %s failed (%s); retrying in %.2f s", self.args.device, exc, delay
                )
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _close_channel(self) -> None:
        self._poller = None
        if self.channel is not None:
            with contextlib.suppress(OSError):
                self.channel.close()
            self.channel = None
        self.registered_since = None

    # ----------------------------------------------------------------- serving

    def serve_one(self) -> None:
        """Read one request, answer it; transport errors lead to a reopen, never to an exit."""
        assert self.channel is not None
        try:
            msg = self.channel.read()
        except transport.TransportError as exc:
            log.warning("read from %s failed (%s); reopening", self.args.device, exc)
            self.last_error = f"read: {exc}"
            self.reconnect()
            return
        started = time.monotonic()
        outcome = self._handle(msg)
        self.host_ops += 1
        self.last_op = outcome.op
        if outcome.error:
            self.last_error = f"{outcome.op}: {outcome.error}"
            log.warning(
                "%s on pool %s answered %s: %s",
                outcome.op,
                outcome.pool,
                _status_name(outcome.status),
                outcome.error,
            )
        if self.debug:
            self._service.log_operation(
                log,
                outcome.op,
                outcome.pool,
                outcome.key,
                outcome.status,
                outcome.value,
                self.debug_values,
            )
        if time.monotonic() - started > LATE_REPLY_SECONDS:
            log.error(
                "%s took too long; the kernel has given up on it: reopening instead of "
                "answering the next request with this reply",
                outcome.op,
            )
            self.reconnect()
            return
        try:
            self.channel.write(outcome.reply)
        except transport.TransportError as exc:
            log.warning("write to %s failed (%s); reopening", self.args.device, exc)
            self.last_error = f"write: {exc}"
            self.reconnect()
        self._status_due = self._status_due or time.monotonic()

    def _handle(self, msg: bytes) -> Outcome:
        """The handler's answer; a bug in it fails this request, never the daemon."""
        try:
            return self.handler.handle(msg)
        except Exception as exc:  # the boundary: log once with the traceback, keep serving
            log.exception("internal error while handling a request; answering HV_E_FAIL")
            op = OP_NAMES.get(msg[0], f"op {msg[0]}") if msg else "empty"
            reply = encode_status(msg, HV_E_FAIL)
            return Outcome(reply, op, HV_E_FAIL, None, None, None, repr(exc))

    def run(self) -> int:
        try:
            self.connect(first=True)
        except _StopWhileWaiting:
            log.info("stopped while waiting for %s", self.args.device)
            return 0
        except transport.TransportError as exc:
            # Opened, but the handshake failed (a bad or missing registration reply): the same
            # recovery as any later device error, not an exit.
            log.warning("registration on %s failed (%s); reopening", self.args.device, exc)
            self.reconnect()
        # The status file first: once systemd sees READY=1 it allows `systemctl reload`, whose
        # `pykvpd reload` needs this daemon's status file.
        self._update_status(force=True, notify=False)
        self.notifier.ready(self._status_text())
        notifier = self.notifier
        keepalive = notifier.watchdog if notifier.watchdog_interval() is not None else None
        while not self.stopping:
            if self.reload_requested:
                self._reload()
            # The loop has made progress: keep-alive if one is due (one clock read otherwise).
            timeout = keepalive() if keepalive is not None else None
            if self._status_due is not None:
                timeout = self._status_timeout(timeout)
            ready = self._wait(timeout)
            if self.stopping:
                break
            if ready:
                self.serve_one()
            if self._status_due is not None:
                self._update_status()
        notifier.stopping(f"stopping; {self.host_ops} host operations")
        self._close_channel()
        self._update_status(force=True, notify=False)
        notifier.close()
        return 0

    def _wait(self, timeout: Optional[float]) -> bool:
        """Block until a request is queued, a signal arrives, or the timeout passes.

        Signals wake us through the wake-up pipe (Python would otherwise retry the poll after
        running the handler, and SIGTERM would wait for the next host request).
        """
        assert self.channel is not None
        if self._poller is None or self._polled_fd != self.channel.fileno():
            self._poller = select.poll()  # kept across requests; rebuilt after a reopen
            self._polled_fd = self.channel.fileno()
            self._poller.register(self._polled_fd, select.POLLIN)
            if self._wakeup_r is not None:
                self._poller.register(self._wakeup_r, select.POLLIN)
        poller = self._poller
        ms = -1 if timeout is None else max(0, math.ceil(timeout * 1000))  # not early: no spin
        try:
            events = poller.poll(ms)
        except OSError as exc:
            log.warning("poll on %s failed (%s); reopening", self.args.device, exc)
            self.reconnect()
            return False
        ready = False
        for fd, _mask in events:
            if fd == self._wakeup_r:
                devicewait.drain_pipe(fd)
            else:
                ready = True  # POLLIN, or POLLERR/POLLHUP: the read reports it and we reopen
        return ready

    def install_signals(self) -> None:
        """SIGTERM/SIGINT stop after the request in hand; SIGHUP reloads the config."""

        def stop(signum: int, _frame: object) -> None:
            self.stopping = True
            if self._awaiting_device:
                raise _StopWhileWaiting

        def hup(signum: int, _frame: object) -> None:
            self.reload_requested = True

        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wakeup_r = r
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, hup)

    def _status_timeout(self, timeout: Optional[float]) -> float:
        """TIMEOUT shortened to when the pending status update is due."""
        assert self._status_due is not None
        status = max(0.0, self._status_due + STATUS_EVERY_SECONDS - time.monotonic())
        return status if timeout is None else min(timeout, status)

    # ----------------------------------------------------------------- status / config

    def _status_text(self) -> str:
        state = "registered" if self.registered_since else "not registered"
        last = f", last {self.last_op}" if self.last_op else ""
        return f"{state}; pools in {self.pools.directory}; {self.host_ops} host operations{last}"

    def _update_status(self, force: bool = False, notify: bool = True) -> None:
        """Publish STATUS= and the status file at most once a second, and once when idle."""
        now = time.monotonic()
        if not force and (
            self._status_due is None or now - self._status_due < STATUS_EVERY_SECONDS
        ):
            return
        self._status_due = None
        if notify:
            self.notifier.status(self._status_text())
        if self._status_file is None:
            try:
                from .status import StatusFile
            except ImportError:
                return
            self._status_file = StatusFile(self._status_path)
        self._status_file.update(
            pid=os.getpid(),
            registered=self.registered_since is not None,
            registered_since=self.registered_since,
            version=self.intrinsic.integration_services_version,
            host_ops=self.host_ops,
            last_op=self.last_op,
            last_error=self.last_error,
            pool_dir=self.pools.directory,
            reloads=self.reloads,
            last_reload=self.last_reload,
        )

    def _reload(self) -> None:
        """SIGHUP: re-read the config file; pool directory and device changes need a restart.

        RELOADING=1 before, READY=1 after, and the outcome in the status file at once: that
        is what `pykvpd reload` (the unit's ExecReload=) waits for and reports.
        """
        self.reload_requested = False  # cleared before the read: a later SIGHUP reads again
        self.notifier.reloading()
        from .config import ConfigError, load_config

        try:
            config = load_config(self.args.config)
        except ConfigError as exc:
            log.error("SIGHUP: keeping the old configuration: %s", exc)
            self._reloaded(str(exc))
            return
        self.config = config
        self.debug = bool(self.args.debug or config.debug)
        self.debug_values = bool(self.args.debug_values or config.debug_values)
        self.intrinsic.exclude_ifaces = tuple(config.exclude_interfaces)
        self.handler.netconfig = self._netconfig(self.pools.directory)
        logging.getLogger().setLevel(logging.DEBUG if self.debug else logging.INFO)
        log.info("configuration reloaded from %s", self.args.config)
        self._reloaded(None)

    def _reloaded(self, error: Optional[str]) -> None:
        self.reloads += 1
        self.last_reload = {"ok": error is None, "error": error, "at": time.time()}
        self.notifier.ready(self._status_text())  # before the status file ends the ExecReload=
        self._update_status(force=True, notify=False)

    def close(self) -> None:
        self._close_channel()
        self.host_writes.close()
        self.pools.close()


class _LazyNetConfig:
    """Imports and builds the IP configuration code at the first IP request, not at start.

    Most guests never see GET/SET_IP_INFO; not loading it keeps start-up fast and RSS small.
    """

    def __init__(self, state_dir: str, injection: str) -> None:
        self._args = {"state_dir": state_dir, "injection": injection}
        self._impl = None

    def _get(self):  # noqa: ANN202
        if self._impl is None:
            from .netconfig import NetConfig

            self._impl = NetConfig(**self._args)
        return self._impl

    def get_ip_info(self, request):  # noqa: ANN001, ANN201
        return self._get().get_ip_info(request)

    def set_ip_info(self, request):  # noqa: ANN001, ANN201
        return self._get().set_ip_info(request)


def _status_name(status: int) -> str:
    from .protocol import STATUS_NAMES

    return STATUS_NAMES.get(status, f"0x{status:08x}")
