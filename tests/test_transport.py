"""pykvpd.transport against a fake kernel: the other end of a SOCK_SEQPACKET socketpair, a
listening Unix socket, and regular files standing in for the char device."""

from __future__ import annotations

import errno
import importlib.machinery
import importlib.util
import logging
import os
import pathlib
import socket
import subprocess
import sys
import threading
import time

import pytest

from pykvpd import devicewait, protocol, transport
from pykvpd.protocol import MSG_SIZE, OP_REGISTER1

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def built_shim(tmp_path_factory):
    """The compiled shim: the in-place build if there is one, else a fresh build in a temp dir."""
    try:
        from pykvpd import _hv_kvp_shim as module
    except ImportError:
        from pykvpd import _shim_build

        so_path = _shim_build.build(str(tmp_path_factory.mktemp("shim")))
        name = "pykvpd._hv_kvp_shim"
        loader = importlib.machinery.ExtensionFileLoader(name, so_path)
        spec = importlib.util.spec_from_file_location(name, so_path, loader=loader)
        module = importlib.util.module_from_spec(spec)
        loader.exec_module(module)
    return module


@pytest.fixture(params=["shim", "fallback"])
def backend(request, monkeypatch, built_shim):
    """Run a test once through the C shim and once through the os.* fallback."""
    monkeypatch.setattr(transport, "_shim_module", built_shim if request.param == "shim" else None)
    return request.param


@pytest.fixture
def pair(backend):
    """(channel, kernel): a Channel on one end of a socketpair, the fake kernel on the other."""
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    channel = transport.Channel.from_socket(ours, "fake-kernel")
    yield channel, kernel
    channel.close()
    kernel.close()


def _message(op: int, fill: int = 0) -> bytes:
    return bytes([op]) + bytes([fill]) * (MSG_SIZE - 1)


# --------------------------------------------------------------------------- handshake


def test_register_writes_register1_and_returns_kernel_version(pair):
    channel, kernel = pair
    kernel.send(protocol.build_register_reply(OP_REGISTER1, "3.1"))  # queued before we ask
    assert channel.register() == "3.1"
    sent = kernel.recv(65536)
    assert len(sent) == MSG_SIZE
    assert sent[0] == OP_REGISTER1 == 100
    assert sent[1:] == bytes(MSG_SIZE - 1)
    assert channel.version == "3.1"


def test_register_reports_other_version_strings(pair):
    channel, kernel = pair
    kernel.send(protocol.build_register_reply(OP_REGISTER1, "10.0.20348"))
    assert channel.register(timeout=5) == "10.0.20348"


def test_register_rejects_a_reply_that_is_not_a_registration(pair):
    channel, kernel = pair
    kernel.send(protocol.build_enumerate_message(0, 0))
    with pytest.raises(transport.TransportError, match="bad registration reply") as info:
        channel.register()
    assert info.value.errno == errno.EPROTO


def test_register_times_out_when_the_kernel_stays_silent(pair):
    channel, _kernel = pair
    with pytest.raises(transport.TransportError, match="no registration reply") as info:
        channel.register(timeout=0.05)
    assert info.value.errno == errno.ETIMEDOUT


# --------------------------------------------------------------------------- framing


def test_read_returns_one_whole_message(pair):
    channel, kernel = pair
    msg = protocol.build_key_message(protocol.OP_SET, protocol.POOL_GUEST, b"key", b"value")
    kernel.send(msg)
    assert channel.read() == msg


def test_write_sends_exactly_one_message(pair):
    channel, kernel = pair
    reply = protocol.encode_status(_message(protocol.OP_GET), protocol.HV_S_CONT)
    channel.write(reply)
    got = kernel.recv(65536)
    assert got == reply
    assert protocol.reply_status(got) == protocol.HV_S_CONT


def test_write_refuses_a_buffer_of_the_wrong_size(pair):
    channel, kernel = pair
    with pytest.raises(ValueError, match="7432"):
        channel.write(b"\0" * 100)
    kernel.setblocking(False)
    with pytest.raises(BlockingIOError):
        kernel.recv(65536)  # nothing went on the wire


@pytest.mark.parametrize("length", [1, 2, 7431])
def test_short_message_is_a_transport_error_naming_its_length(pair, length):
    channel, kernel = pair
    kernel.send(b"\x01" * length)
    with pytest.raises(transport.TransportError, match=rf"short read .*: {length} bytes"):
        channel.read()


def test_oversize_message_is_truncated_and_processed(pair, caplog):
    channel, kernel = pair
    msg = protocol.build_key_message(protocol.OP_SET, protocol.POOL_EXTERNAL, b"k", b"v")
    kernel.send(msg + b"\xee" * (8000 - MSG_SIZE))
    with caplog.at_level(logging.WARNING, logger="pykvpd.transport"):
        assert channel.read() == msg
    assert "8000 bytes" in caplog.text


def test_peer_close_is_a_transport_error(pair):
    channel, kernel = pair
    kernel.close()
    assert channel.wait_readable(5) is True  # hang-up wakes the loop; the read reports it
    with pytest.raises(transport.TransportError, match="closed by the other side"):
        channel.read()


def test_write_after_peer_close_is_a_transport_error(pair):
    channel, kernel = pair
    kernel.close()
    with pytest.raises(transport.TransportError, match="write to fake-kernel failed") as info:
        channel.write(_message(0))
    assert info.value.errno in (errno.EPIPE, errno.ECONNRESET)


def test_wait_readable_reflects_a_pending_message(pair):
    channel, kernel = pair
    assert channel.wait_readable(0) is False
    assert channel.wait_readable(0.01) is False
    kernel.send(_message(protocol.OP_ENUMERATE))
    assert channel.wait_readable(0) is True
    assert channel.wait_readable(None) is True
    channel.read()
    assert channel.wait_readable(0) is False


def test_closed_channel_refuses_io(pair):
    channel, _kernel = pair
    channel.close()
    channel.close()  # idempotent
    assert channel.closed
    with pytest.raises(ValueError, match="closed channel"):
        channel.read()
    with pytest.raises(ValueError, match="closed channel"):
        channel.fileno()


# --------------------------------------------------------------------------- open_channel


def test_open_channel_connects_to_a_listening_seqpacket_socket(tmp_path, backend):
    path = str(tmp_path / "kvp.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server.bind(path)
    server.listen(1)
    try:
        with transport.open_channel(path) as channel:
            kernel, _ = server.accept()
            with kernel:
                kernel.send(protocol.build_register_reply())
                assert channel.register() == "3.1"
                assert kernel.recv(65536) == protocol.encode_register()
                assert channel.name == path
    finally:
        server.close()


def test_open_channel_on_a_file_reads_and_writes_through_the_device_path(tmp_path, backend):
    """A regular file stands in for the char device: real open/read/write through the shim."""
    path = tmp_path / "hv_kvp"
    request = protocol.build_enumerate_message(protocol.POOL_AUTO, 3)
    path.write_bytes(request)
    channel = transport.open_channel(str(path))
    try:
        assert channel.read() == request
        reply = protocol.encode_key_value(request, b"FullyQualifiedDomainName", b"vm.example")
        channel.write(reply)
        with pytest.raises(transport.TransportError, match="closed by the other side"):
            channel.read()  # end of file: the fd is at the end
    finally:
        channel.close()
    assert path.read_bytes() == request + reply


def test_device_open_is_close_on_exec_and_read_write(tmp_path, backend):
    path = tmp_path / "hv_kvp"
    path.write_bytes(b"")
    with transport.open_channel(str(path)) as channel:
        fd = channel.fileno()
        assert os.get_inheritable(fd) is False
        fdinfo = pathlib.Path(f"/proc/self/fdinfo/{fd}").read_text()
        flags = int(fdinfo.split("flags:")[1].split()[0], 8)
        assert flags & os.O_ACCMODE == os.O_RDWR
        assert flags & os.O_CLOEXEC


def test_missing_device_raises_device_missing(tmp_path, backend):
    with pytest.raises(transport.DeviceMissing) as info:
        transport.open_channel(str(tmp_path / "vmbus" / "hv_kvp"))
    assert info.value.errno == errno.ENOENT
    assert isinstance(info.value, transport.ChannelOpenError)
    assert not isinstance(info.value, transport.TransportError)


def test_socket_nobody_listens_on_raises_device_missing(tmp_path, backend):
    path = str(tmp_path / "stale.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stale.bind(path)
    stale.close()  # the socket file stays, nobody listens
    with pytest.raises(transport.DeviceMissing) as info:
        transport.open_channel(path)
    assert info.value.errno == errno.ECONNREFUSED


class _FakeLib:
    """Stands in for the shim's lib so the kernel's EBUSY/EBADF can be produced on demand."""

    HVKVP_READ_CAPACITY = 16384

    def __init__(self, open_errno: int) -> None:
        self.open_errno = open_errno
        self.opened = []

    def hvkvp_open(self, path: bytes) -> int:
        self.opened.append(path)
        return -self.open_errno


class _FakeShim:
    def __init__(self, open_errno: int) -> None:
        self.lib = _FakeLib(open_errno)


def test_ebusy_from_the_device_raises_device_busy(tmp_path, monkeypatch):
    path = tmp_path / "hv_kvp"
    path.write_bytes(b"")
    shim = _FakeShim(errno.EBUSY)
    monkeypatch.setattr(transport, "_shim_module", shim)
    with pytest.raises(transport.DeviceBusy, match="another KVP daemon") as info:
        transport.open_channel(str(path))
    assert info.value.errno == errno.EBUSY
    assert info.value.filename == str(path)
    assert shim.lib.opened == [os.fsencode(str(path))]


def test_other_open_errors_raise_channel_open_error(tmp_path, monkeypatch):
    path = tmp_path / "hv_kvp"
    path.write_bytes(b"")
    monkeypatch.setattr(transport, "_shim_module", _FakeShim(errno.EBADF))
    with pytest.raises(transport.ChannelOpenError) as info:
        transport.open_channel(str(path))
    assert type(info.value) is transport.ChannelOpenError
    assert info.value.errno == errno.EBADF


def test_device_errors_on_read_and_write_are_transport_errors(tmp_path, backend):
    """EBADF-style failures (module torn down) surface as TransportError with the errno."""
    path = tmp_path / "hv_kvp"
    path.write_bytes(b"")
    channel = transport.open_channel(str(path))
    fd = channel.fileno()
    read_only = os.open(str(path), os.O_RDONLY)
    os.dup2(read_only, fd)  # same fd number, now not writable: write fails with EBADF
    os.close(read_only)
    with pytest.raises(transport.TransportError) as info:
        channel.write(_message(0))
    assert info.value.errno == errno.EBADF
    dir_fd = os.open(str(tmp_path), os.O_RDONLY | os.O_DIRECTORY)
    os.dup2(dir_fd, fd)  # reading a directory: EISDIR
    os.close(dir_fd)
    with pytest.raises(transport.TransportError) as info:
        channel.read()
    assert info.value.errno == errno.EISDIR
    channel.close()


# --------------------------------------------------------------------------- wait_for_device


def _create_later(path: str, delay: float) -> threading.Thread:
    def create() -> None:
        time.sleep(delay)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb"):
            pass

    thread = threading.Thread(target=create, daemon=True)
    thread.start()
    return thread


def test_wait_for_device_returns_true_at_once_when_present(tmp_path):
    path = tmp_path / "hv_kvp"
    path.write_bytes(b"")
    assert devicewait.wait_for_device(str(path), timeout=0) is True


def test_wait_for_device_sees_the_file_appear(tmp_path):
    path = str(tmp_path / "hv_kvp")
    thread = _create_later(path, 0.2)
    assert devicewait.wait_for_device(path, timeout=30) is True
    thread.join()


def test_wait_for_device_follows_missing_parent_directories(tmp_path):
    path = str(tmp_path / "dev" / "vmbus" / "hv_kvp")
    thread = _create_later(path, 0.2)
    assert devicewait.wait_for_device(path, timeout=30) is True
    assert os.path.exists(path)
    thread.join()


def test_wait_for_device_ignores_unrelated_files_and_times_out(tmp_path):
    path = str(tmp_path / "vmbus" / "hv_kvp")
    other = _create_later(str(tmp_path / "vmbus" / "hv_vss"), 0.0)
    assert devicewait.wait_for_device(path, timeout=0.3) is False
    other.join()
    assert not os.path.exists(path)


def test_wait_for_device_without_inotify_still_works(tmp_path, monkeypatch):
    def no_inotify():
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(devicewait, "Inotify", no_inotify)
    path = str(tmp_path / "hv_kvp")
    assert devicewait.wait_for_device(path, timeout=0.1) is False
    thread = _create_later(path, 0.1)
    assert devicewait.wait_for_device(path, timeout=30) is True
    thread.join()


def test_wait_for_device_wakes_on_the_signal_pipe_and_drains_it(tmp_path):
    """A signal that lands just before the poll starts does not interrupt it; its byte on the
    wake-up pipe does (the daemon's SIGTERM then ends the wait at once). The byte is drained, so
    a SIGHUP during the wait does not turn it into a busy loop, and the wait goes on."""
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        os.write(w, b"\x0f")  # what signal.set_wakeup_fd writes for a signal
        path = str(tmp_path / "hv_kvp")
        assert devicewait.wait_for_device(path, timeout=0.2, wake_fd=r) is False
        with pytest.raises(BlockingIOError):
            os.read(r, 1)  # drained
        thread = _create_later(path, 0.1)
        os.write(w, b"\x01")
        assert devicewait.wait_for_device(path, timeout=30, wake_fd=r) is True
        thread.join()
    finally:
        os.close(r)
        os.close(w)


# --------------------------------------------------------------------------- process name

_NAME_PROBE = """
import sys, threading
from pykvpd import transport
if sys.argv[1] == "fallback":
    transport._shim_module = None
elif transport._shim() is None:
    sys.exit("shim not importable")
transport.set_process_name(*sys.argv[2:])
print(open(f"/proc/self/task/{threading.get_native_id()}/comm").read().strip())
"""


@pytest.mark.parametrize(
    ("name", "expected"),
    [((), "hv_kvp_daemon"), (("a-very-long-daemon-name",), "a-very-long-dae")],
)
@pytest.mark.parametrize("mode", ["shim", "fallback"])
def test_set_process_name(built_shim, tmp_path, mode, name, expected):
    env = dict(os.environ)
    # Without an in-place build the shim lives in a temp dir: give the child an overlay copy.
    paths = [ROOT]
    shim_dir = os.path.dirname(os.path.dirname(built_shim.__file__))
    if shim_dir != ROOT:
        paths.insert(0, _overlay_with_shim(tmp_path, built_shim.__file__))
    env["PYTHONPATH"] = os.pathsep.join(paths)
    result = subprocess.run(
        [sys.executable, "-c", _NAME_PROBE, mode, *name],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(tmp_path),
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected


def _overlay_with_shim(tmp_path, so_path: str) -> str:
    """A copy of the package with the freshly built shim beside it (no in-place build exists)."""
    import shutil

    overlay = tmp_path / "overlay"
    shutil.copytree(os.path.join(ROOT, "pykvpd"), overlay / "pykvpd")
    shutil.copy(so_path, overlay / "pykvpd" / os.path.basename(so_path))
    return str(overlay)
