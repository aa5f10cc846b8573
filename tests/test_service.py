"""sd_notify over fake NOTIFY_SOCKETs, journal fields through a recording sender, logging set-up."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import types
import uuid

import pytest

from pykvpd import protocol as p
from pykvpd import service
from pykvpd.protocol import HV_S_CONT, HV_S_OK
from pykvpd.simulator.kernel import FakeKernel
from pykvpd.simulator.messages import HostRequest


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request, tmp_path, monkeypatch):
    """A datagram socket standing in for systemd; yields (sock, NOTIFY_SOCKET value)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        address = str(tmp_path / "notify")
        sock.bind(address)
        value = address
    else:
        name = f"pykvpd-test-{uuid.uuid4().hex}"
        sock.bind("\0" + name)
        value = "@" + name
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", value)
    yield sock, value
    sock.close()


def test_notifier_sends_ready_status_watchdog_stopping(notify_socket):
    sock, value = notify_socket
    notifier = service.Notifier({"NOTIFY_SOCKET": value, "WATCHDOG_USEC": "30000000"})
    assert notifier.enabled
    notifier.ready("registered; 5 pools")
    assert sock.recv(4096) == b"READY=1\nSTATUS=registered; 5 pools"
    notifier.status("last SET pool 0\nsecond line")
    assert sock.recv(4096) == b"STATUS=last SET pool 0 second line"
    notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading()
    head, usec = sock.recv(4096).split(b"\nMONOTONIC_USEC=")
    assert head == b"RELOADING=1"
    assert before <= int(usec) <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.stopping("stopping; 3 host operations")
    assert sock.recv(4096) == b"STOPPING=1\nSTATUS=stopping; 3 host operations"


def test_watchdog_pings_at_most_once_per_interval_over_one_socket(notify_socket, monkeypatch):
    """However often the loop wakes (every host request under load), one keep-alive per half
    WATCHDOG_USEC, and every message goes through the same socket, opened once."""
    sock, _ = notify_socket
    clock = [1000.0]
    monkeypatch.setattr(service.time, "monotonic", lambda: clock[0])
    opened = []
    real_socket = service.socket.socket

    def counting_socket(*args, **kwargs):
        opened.append(args)
        return real_socket(*args, **kwargs)

    monkeypatch.setattr(service.socket, "socket", counting_socket)
    notifier = service.Notifier({"NOTIFY_SOCKET": os.environ["NOTIFY_SOCKET"],
                                 "WATCHDOG_USEC": "30000000"})
    assert notifier.watchdog() == 15.0  # sent at once, next one due in 15 s
    for _ in range(1000):  # 1000 requests within the first second
        clock[0] += 0.001
        notifier.watchdog()
    assert notifier.watchdog() == pytest.approx(14.0)
    clock[0] = 1015.0  # half of WatchdogSec=30 after the first ping
    assert notifier.watchdog() == 15.0
    assert notifier.watchdog() == 15.0
    notifier.status("s")
    sock.settimeout(0.2)
    got = []
    with contextlib.suppress(socket.timeout):
        while True:
            got.append(sock.recv(4096))
    assert got == [b"WATCHDOG=1", b"WATCHDOG=1", b"STATUS=s"]
    assert len(opened) == 1
    notifier.close()


def test_watchdog_off_without_usec(notify_socket):
    sock, _ = notify_socket
    notifier = service.Notifier()
    assert notifier.watchdog() is None
    notifier.status("only this")
    assert sock.recv(4096) == b"STATUS=only this"


def test_notifier_reconnects_after_the_manager_went_away(tmp_path):
    """systemctl daemon-reexec closes the notify socket: the next message connects afresh."""
    path = str(tmp_path / "notify")
    first = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    first.bind(path)
    notifier = service.Notifier({"NOTIFY_SOCKET": path})
    notifier.status("one")
    assert first.recv(4096) == b"STATUS=one"
    first.close()
    os.unlink(path)
    notifier.status("lost")  # refused: warned once, socket dropped
    second = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    second.bind(path)
    second.settimeout(5)
    notifier.status("two")
    assert second.recv(4096) == b"STATUS=two"
    second.close()


def test_notifier_without_socket_is_silent(monkeypatch, tmp_path):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = service.Notifier()
    assert not notifier.enabled
    notifier.ready("x")  # nothing to send to, nothing raised
    notifier.watchdog()


def test_notifier_never_raises_when_manager_is_gone(tmp_path, caplog):
    notifier = service.Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    with caplog.at_level(logging.WARNING, logger="pykvpd.service"):
        notifier.ready("x")
        notifier.watchdog()
    warnings = [r for r in caplog.records if "sd_notify" in r.getMessage()]
    assert len(warnings) == 1  # warned once, not per keep-alive


def test_notifier_rejects_relative_socket_without_raising(tmp_path):
    notifier = service.Notifier({"NOTIFY_SOCKET": "relative/path"})
    notifier.stopping("x")


def test_notify_address_forms():
    assert service.notify_address("@abc") == "\0abc"
    assert service.notify_address("/run/systemd/notify") == "/run/systemd/notify"
    assert service.notify_address("@") is None
    assert service.notify_address("vsock:2:1234") is None


def test_watchdog_interval():
    pid = str(os.getpid())
    assert service.Notifier({"WATCHDOG_USEC": "30000000"}).watchdog_interval() == 15.0
    env = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": pid}
    assert service.Notifier(env).watchdog_interval() == 15.0
    env = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert service.Notifier(env).watchdog_interval() is None
    assert service.Notifier({}).watchdog_interval() is None
    assert service.Notifier({"WATCHDOG_USEC": "junk"}).watchdog_interval() is None
    assert service.Notifier({"WATCHDOG_USEC": "0"}).watchdog_interval() is None


class RecordingJournal:
    """Stands in for systemd.journal.send: keeps every (message, fields) pair."""

    def __init__(self) -> None:
        self.entries = []

    def __call__(self, MESSAGE, **fields):  # noqa: N803 - systemd.journal.send's spelling
        self.entries.append((MESSAGE, fields))


def _journal_logger(name: str, sender, monkeypatch):
    journal = pytest.importorskip("systemd.journal")
    if not hasattr(journal, "JournalHandler"):
        pytest.skip("the installed 'systemd' module is not systemd-python")
    handler = journal.JournalHandler(SYSLOG_IDENTIFIER="pykvpd", sender_function=sender)
    logger = logging.getLogger(name)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    logger.addHandler(handler)
    monkeypatch.setattr(logger, "handlers", [handler])
    return logger


def test_log_operation_journal_fields_without_value(monkeypatch):
    sender = RecordingJournal()
    logger = _journal_logger("pykvpd.test.journal1", sender, monkeypatch)
    service.log_operation(logger, "SET", 1, "Secret", HV_S_OK, value="hunter2")
    (message, fields), = sender.entries
    assert fields["KVP_OP"] == "SET"
    assert fields["KVP_POOL"] == "1"
    assert fields["KVP_KEY"] == "Secret"
    assert fields["KVP_STATUS"] == "0x00000000"
    assert fields["SYSLOG_IDENTIFIER"] == "pykvpd"
    assert fields["PRIORITY"] == "7"  # debug
    assert "KVP_VALUE" not in fields
    assert "hunter2" not in message
    assert "CODE_ARGS" not in fields
    assert all("hunter2" not in str(v) for v in fields.values())


def test_log_operation_journal_fields_with_debug_values(monkeypatch):
    sender = RecordingJournal()
    logger = _journal_logger("pykvpd.test.journal2", sender, monkeypatch)
    service.log_operation(logger, "ENUMERATE", 3, None, HV_S_CONT, value="v", debug_values=True)
    (message, fields), = sender.entries
    assert fields["KVP_STATUS"] == "0x80070103"
    assert fields["KVP_VALUE"] == "v"
    assert "KVP_KEY" not in fields
    assert "HV_S_CONT" in message and "value='v'" in message


def test_log_operation_plain_record(caplog):
    logger = logging.getLogger("pykvpd.test.plain")
    with caplog.at_level(logging.DEBUG, logger="pykvpd.test.plain"):
        service.log_operation(logger, "GET", 0, "k%s", 0x80004005, value="secret")
    (record,) = caplog.records
    assert record.levelno == logging.DEBUG
    assert record.getMessage() == "GET pool=0 key='k%s' status=HV_E_FAIL (0x80004005)"
    assert record.KVP_STATUS == "0x80004005"
    assert record.KVP_POOL == "0"


def test_log_operation_skipped_when_not_debug(caplog):
    logger = logging.getLogger("pykvpd.test.quiet")
    with caplog.at_level(logging.INFO, logger="pykvpd.test.quiet"):
        service.log_operation(logger, "GET", 0, "k", 0)
    assert caplog.records == []


@pytest.fixture
def clean_root_logger():
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    yield root
    for handler in list(service._installed_handlers):
        root.removeHandler(handler)
    service._installed_handlers.clear()
    root.handlers[:], root.level = saved[0], saved[1]


def test_setup_logging_stderr_without_journal_stream(monkeypatch, clean_root_logger):
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    service.setup_logging(debug=True)
    handler = service._installed_handlers[0]
    assert type(handler) is logging.StreamHandler
    assert clean_root_logger.level == logging.DEBUG
    service.setup_logging(debug=False)  # reload replaces, does not stack
    assert sum(h in clean_root_logger.handlers for h in service._installed_handlers) == 1
    assert handler not in clean_root_logger.handlers
    assert clean_root_logger.level == logging.INFO


def test_setup_logging_uses_journal_handler_when_stream_matches(
    monkeypatch, tmp_path, clean_root_logger
):
    created = []

    class StubJournalHandler(logging.Handler):
        def __init__(self, **fields):
            super().__init__()
            created.append(fields)

    fake_systemd = types.ModuleType("systemd")
    fake_journal = types.ModuleType("systemd.journal")
    fake_journal.JournalHandler = StubJournalHandler
    fake_systemd.journal = fake_journal
    monkeypatch.setitem(sys.modules, "systemd", fake_systemd)
    monkeypatch.setitem(sys.modules, "systemd.journal", fake_journal)
    stderr_file = open(tmp_path / "stderr", "w")  # noqa: SIM115
    monkeypatch.setattr(sys, "stderr", stderr_file)
    st = os.fstat(stderr_file.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    try:
        service.setup_logging(debug=False)
        assert isinstance(service._installed_handlers[0], StubJournalHandler)
        assert created == [{"SYSLOG_IDENTIFIER": "pykvpd"}]
        # A JOURNAL_STREAM inherited from elsewhere does not describe our stderr.
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")
        service.setup_logging(debug=False)
        assert type(service._installed_handlers[0]) is logging.StreamHandler
    finally:
        stderr_file.close()


def test_setup_logging_without_systemd_python(monkeypatch, clean_root_logger):
    monkeypatch.setitem(sys.modules, "systemd", None)  # import fails
    monkeypatch.setitem(sys.modules, "systemd.journal", None)
    service.setup_logging(debug=False, use_journal=True)
    assert type(service._installed_handlers[0]) is logging.StreamHandler


# ---------------------------------------------------------- the daemon against a fake kernel


def _datagrams(sock: socket.socket, until: float) -> list:
    """Everything received before ``until`` (monotonic), as decoded strings."""
    got = []
    while True:
        left = until - time.monotonic()
        if left <= 0:
            return got
        sock.settimeout(left)
        try:
            got.append(sock.recv(4096).decode())
        except socket.timeout:
            return got


def _recv_until(sock: socket.socket, predicate, timeout: float = 20.0) -> list:
    """Datagrams up to and including the first one matching ``predicate``."""
    deadline = time.monotonic() + timeout
    got = []
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            message = sock.recv(4096).decode()
        except socket.timeout:
            break
        got.append(message)
        if predicate(message):
            return got
    raise AssertionError(f"no matching notification; got {got!r}")


def test_daemon_ready_status_watchdog_stuck_and_stopping(tmp_path):
    """Readiness after registration, STATUS with the operations, WATCHDOG only while the loop
    runs (none while it is stuck on a pool lock held by someone else), STOPPING on SIGTERM."""
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"pykvpd-daemon-test-{uuid.uuid4().hex}"
    notify.bind("\0" + name)
    pool_dir = tmp_path / "pools"
    status_path = tmp_path / "status.json"
    kernel = FakeKernel(str(tmp_path / "hv_kvp.sock"), timeout=60.0).start()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(
        os.environ,
        NOTIFY_SOCKET="@" + name,
        WATCHDOG_USEC="200000",  # keep-alive every 0.1 s
        PYTHONPATH=root,
    )
    env.pop("WATCHDOG_PID", None)
    env.pop("JOURNAL_STREAM", None)
    daemon = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pykvpd",
            "-n",
            "--device",
            kernel.path,
            "--pool-dir",
            str(pool_dir),
            "--status-file",
            str(status_path),
            "--config",
            str(tmp_path / "absent.conf"),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    holder = None
    try:
        first = _recv_until(notify, lambda m: "READY=1" in m)
        # READY only after the handshake (the fake kernel marks itself registered just after
        # sending the reply the daemon reacts to, hence a short wait rather than a snapshot)
        assert kernel.wait_registered(5) and kernel.registrations == 1
        assert any("STATUS=" in m and "registered" in m for m in first)
        _recv_until(notify, lambda m: m == "WATCHDOG=1")

        reply = kernel.submit(HostRequest(p.OP_SET, pool=0, key="k", value="v"))
        assert reply.status == p.HV_S_OK
        _recv_until(notify, lambda m: m.startswith("STATUS=") and "1 host operation" in m)

        # Stick the loop: hold the pool's flock, as another writer would, and send a SET.
        holder = open(pool_dir / ".kvp_pool_0", "rb")  # noqa: SIM115
        fcntl.flock(holder, fcntl.LOCK_EX)
        result = {}
        worker = threading.Thread(
            target=lambda: result.update(
                reply=kernel.submit(HostRequest(p.OP_SET, pool=0, key="k2", value="v2"))
            )
        )
        worker.start()
        _datagrams(notify, time.monotonic() + 0.5)  # let the daemon reach the lock
        stuck = _datagrams(notify, time.monotonic() + 1.5)  # 15 keep-alives if it were healthy
        assert "WATCHDOG=1" not in stuck
        fcntl.flock(holder, fcntl.LOCK_UN)
        worker.join(30)
        assert result["reply"].status == p.HV_S_OK
        _recv_until(notify, lambda m: m == "WATCHDOG=1")  # healthy again

        daemon.send_signal(signal.SIGTERM)
        last = _recv_until(notify, lambda m: "STOPPING=1" in m)[-1]
        assert last == "STOPPING=1\nSTATUS=stopping; 2 host operations"
        assert daemon.wait(20) == 0
        after = _datagrams(notify, time.monotonic() + 0.3)
        assert after == []  # no "registered" STATUS= after STOPPING=1
    finally:
        if holder is not None:
            holder.close()
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        kernel.close()
        notify.close()
