"""The simulator's kernel model and host view, checked against the spec with a fake daemon.

The fake daemon is a thread that connects to the FakeKernel socket the way the real daemon
does (REGISTER1, then one reply per request) and answers from in-memory pools, so these tests
pin the driver's behaviour without depending on the real daemon.
"""

from __future__ import annotations

import contextlib
import io
import os
import queue
import socket
import tempfile
import threading
import time
from typing import Callable, Dict, List, Optional

import pytest

from pykvpd import protocol as p
from pykvpd.simulator import conversion as conv
from pykvpd.simulator import kernel as k
from pykvpd.simulator import messages as hm
from pykvpd.simulator.host import (
    DEFAULT_GUEST_PARAMETERS,
    E_NOT_FOUND,
    HV_ERROR_ALREADY_EXISTS,
    Host,
    HostError,
    Item,
    RegValue,
)
from pykvpd.simulator.kernel import FakeKernel
from pykvpd.simulator.messages import HostRequest

Handler = Callable[[bytes], Optional[bytes]]


# --------------------------------------------------------------------------- fake daemon


class FakeDaemon:
    """Connects to the simulator socket, registers, answers each request with ``handler``.

    ``handler`` returns the reply bytes, or None to send nothing. ``received`` collects every
    request as raw bytes. ``register_op`` None skips the handshake (for handshake tests).
    """

    def __init__(self, path: str, handler: Handler, register_op: Optional[int] = p.OP_REGISTER1):
        self.path = path
        self.handler = handler
        self.register_op = register_op
        self.received: queue.Queue[bytes] = queue.Queue()
        self.register_reply: Optional[bytes] = None
        self.closed = threading.Event()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> FakeDaemon:
        self.sock.connect(self.path)
        if self.register_op is not None:
            msg = bytearray(p.MSG_SIZE)
            msg[0] = self.register_op
            self.sock.send(bytes(msg))
            self.register_reply = self.sock.recv(65536)
        self.thread.start()
        return self

    def _run(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                break
            if not data:
                break
            self.received.put(data)
            reply = self.handler(data)
            if reply is not None:
                try:
                    self.sock.send(reply)
                except OSError:
                    break
        self.closed.set()

    def send(self, data: bytes) -> None:
        self.sock.send(data)

    def close(self) -> None:
        with_suppress_close(self.sock)
        self.thread.join(timeout=5)


def with_suppress_close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


class MemoryPools:
    """Answers requests like the daemon does, from dicts (enough to exercise the host view)."""

    def __init__(self) -> None:
        self.pools: Dict[int, Dict[bytes, bytes]] = {n: {} for n in range(p.POOL_COUNT)}
        self.auto = [(b"OSName", b"Simulated Linux"), (b"IntegrationServicesVersion", b"3.1")]
        self.ip_requests: List[p.IpRequest] = []

    def __call__(self, msg: bytes) -> bytes:
        req = p.decode_request(msg)
        if isinstance(req, p.IpRequest):
            self.ip_requests.append(req)
            if req.op == p.OP_GET_IP_INFO:
                info = p.IpInfo(req.info.adapter_id, 3, 0, "10.0.0.5;fe80::1", "255.0.0.0;/64")
                return p.encode_ip_info(msg, info)
            return p.encode_status(msg, p.HV_S_OK)
        if isinstance(req, p.EnumerateRequest):
            records = self.auto if req.pool == p.POOL_AUTO else list(self.pools[req.pool].items())
            if req.index >= len(records):
                return p.encode_status(msg, p.HV_S_CONT)
            return p.encode_key_value(msg, *records[req.index])
        pool = self.pools[req.pool]
        if req.op == p.OP_SET:
            pool[req.key] = req.value or b""
        elif req.op == p.OP_DELETE:
            if req.key not in pool:
                return p.encode_status(msg, p.HV_S_CONT)
            del pool[req.key]
        elif req.key not in pool:
            return p.encode_status(msg, p.HV_S_CONT)
        else:
            return p.encode_value(msg, pool[req.key])
        return p.encode_status(msg, p.HV_S_OK)


@pytest.fixture
def sockpath():
    with tempfile.TemporaryDirectory() as tmp:
        yield os.path.join(tmp, "hv_kvp.sock")


@pytest.fixture
def kernel(sockpath):
    kern = FakeKernel(sockpath, timeout=5.0).start()
    yield kern
    kern.close()


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


def ok_reply(msg: bytes) -> bytes:
    return p.encode_status(msg, p.HV_S_OK)


# --------------------------------------------------------------------------- UTF-16 -> UTF-8


def test_host_to_utf8_plain_and_multibyte():
    assert conv.host_to_utf8(conv.utf16_units("Key-é€"), 511) == b"Key-\xc3\xa9\xe2\x82\xac"


def test_host_to_utf8_stops_at_nul_unit():
    assert conv.host_to_utf8(conv.utf16_units("ab\0cd"), 511) == b"ab"


def test_host_to_utf8_drops_unpaired_surrogates():
    assert conv.host_to_utf8(conv.utf16_units("a\ud800b"), 511) == b"ab"  # lone high
    assert conv.host_to_utf8(conv.utf16_units("\udc00x"), 511) == b"x"  # lone low
    assert conv.host_to_utf8(conv.utf16_units("\ud800"), 511) == b""  # high at the very end


def test_host_to_utf8_joins_surrogate_pairs():
    expected = b"\xf0\x9f\x98\x80"
    assert conv.host_to_utf8(conv.utf16_units("\U0001f600"), 511) == expected
    assert conv.utf16_units("\U0001f600") == [0xD83D, 0xDE00]
    assert conv.host_to_utf8([0xD83D, 0xDE00], 511) == expected


def test_host_to_utf8_skips_what_does_not_fit_but_emits_later_shorter_chars():
    # 170 euro signs = 510 bytes; the 171st needs 3 bytes with 1 left: skipped, "a" still fits.
    units = conv.utf16_units("€" * 171 + "a")
    out = conv.host_to_utf8(units, conv.KEY_BYTES)
    assert out == "€".encode() * 170 + b"a"
    assert len(out) == 511


def test_key_cap_is_511_bytes_and_value_cap_2047():
    key = conv.host_to_utf8(conv.utf16_units("K" * 600), conv.KEY_BYTES)
    value = conv.host_to_utf8(conv.utf16_units("é" * 1023), conv.VALUE_BYTES)
    assert len(key) == 511
    assert value == "é".encode() * 1023  # 2046 bytes: the 1024th would not fit
    assert len(conv.host_to_utf8(conv.utf16_units("v" * 3000), conv.VALUE_BYTES)) == 2047


# --------------------------------------------------------------------------- request messages


def test_set_message_fields_and_offsets():
    msg = hm.to_daemon(HostRequest(p.OP_SET, 0, "Name", "valé"))
    assert len(msg) == p.MSG_SIZE
    assert msg[0:2] == bytes([p.OP_SET, 0])
    assert msg[4:8] == bytes(4)  # value_type is consumed by the kernel, never forwarded
    assert msg[8:12] == (5).to_bytes(4, "little")  # key_size includes the NUL
    assert msg[12:16] == (6).to_bytes(4, "little")  # "valé" = 5 bytes + NUL
    assert msg[16:21] == b"Name\0"
    assert msg[528:534] == b"val\xc3\xa9\0"
    assert msg[534:] == bytes(p.MSG_SIZE - 534)


def test_oversized_key_and_value_arrive_capped():
    msg = hm.to_daemon(HostRequest(p.OP_SET, 0, "€" * 255, "v" * 1023))
    req = p.decode_request(msg)
    assert msg[8:12] == (510 + 1).to_bytes(4, "little")  # 170 euros = 510; the 171st: no room
    assert req.key == "€".encode() * 170
    assert req.value == b"v" * 1023


@pytest.mark.parametrize(
    "value,value_type,text",
    [
        (4294967295, p.REG_U32, b"4294967295"),
        (-1, p.REG_U32, b"4294967295"),  # unsigned rendering (OLD-K printed it signed)
        (0, p.REG_U32, b"0"),
        (2**64 - 1, p.REG_U64, b"18446744073709551615"),
        (-2, p.REG_U64, b"18446744073709551614"),
    ],
)
def test_integer_values_rendered_unsigned_decimal(value, value_type, text):
    msg = hm.to_daemon(HostRequest(p.OP_SET, 0, "N", value, value_type))
    assert msg[12:16] == (len(text) + 1).to_bytes(4, "little")
    assert msg[528 : 528 + len(text) + 1] == text + b"\0"


@pytest.mark.parametrize("value_type", [0, 2, 3, 11])
def test_other_value_types_arrive_with_value_size_zero(value_type):
    msg = hm.to_daemon(HostRequest(p.OP_SET, 0, "N", 5, value_type))
    assert msg[12:16] == bytes(4)
    assert msg[528 : 528 + 2048] == bytes(2048)
    assert p.decode_request(msg) == p.KeyRequest(p.OP_SET, 0, b"N", None)


def test_get_carries_value_size_zero():
    msg = hm.to_daemon(HostRequest(p.OP_GET, 3, "HostName", "ignored"))
    assert msg[0:2] == bytes([p.OP_GET, 3])
    assert msg[8:12] == (9).to_bytes(4, "little")
    assert msg[12:16] == bytes(4)
    assert msg[528:532] == bytes(4)


def test_delete_uses_the_delete_view():
    msg = hm.to_daemon(HostRequest(p.OP_DELETE, 0, "Gone"))
    assert msg[4:8] == (5).to_bytes(4, "little")
    assert msg[8:13] == b"Gone\0"


def test_enumerate_fills_only_the_index_and_pool_is_not_validated():
    msg = hm.to_daemon(HostRequest(p.OP_ENUMERATE, 200, index=7))
    assert msg[0:2] == bytes([p.OP_ENUMERATE, 200])
    assert msg[4:8] == (7).to_bytes(4, "little")
    assert msg[8:] == bytes(p.MSG_SIZE - 8)


def test_get_ip_info_carries_only_adapter_id_and_family():
    info = p.IpInfo("00:15:5D:01:02:03", 3, 1, "10.0.0.1", "255.0.0.0", "10.0.0.254", "1.1.1.1")
    msg = hm.to_daemon(HostRequest(p.OP_GET_IP_INFO, 1, ip=info))
    assert msg[4:22] == b"00:15:5D:01:02:03\0"
    assert msg[260] == 3 and msg[261] == 0
    assert msg[262:] == bytes(p.MSG_SIZE - 262)


def test_set_ip_info_caps_each_field_in_bytes():
    info = p.IpInfo("{" + "a" * 200 + "}", 1, 1, "1" * 1500, "2" * 1500, "3" * 900, "4" * 1500)
    req = p.decode_request(hm.to_daemon(HostRequest(p.OP_SET_IP_INFO, 1, ip=info)))
    assert len(req.info.adapter_id) == 128
    assert req.info.ip_addr == "1" * 1024
    assert req.info.sub_net == "2" * 1024
    assert req.info.gate_way == "3" * 512
    assert req.info.dns_addr == "4" * 1024
    assert req.info.dhcp_enabled == 1 and req.info.addr_family == 1


# --------------------------------------------------------------------------- replies


def enum_reply(key: bytes, value: bytes, status: int = p.HV_S_OK) -> bytes:
    buf = bytearray(p.MSG_SIZE)
    buf[0:4] = status.to_bytes(4, "little")
    buf[20 : 20 + len(key)] = key
    buf[532 : 532 + len(value)] = value
    return bytes(buf)


ENUM = HostRequest(p.OP_ENUMERATE, 1, index=0)


def test_enumerate_reply_read_from_20_and_532():
    reply = hm.to_host(ENUM, enum_reply(b"Key\xc3\xa9", b"Value"))
    assert (reply.status, reply.key, reply.value) == (p.HV_S_OK, "Keyé", "Value")


def test_reply_truncated_to_254_and_1022_units():
    reply = hm.to_host(ENUM, enum_reply(b"k" * 511, b"v" * 2047))
    assert reply.key == "k" * 254
    assert reply.value == "v" * 1022


def test_reply_truncation_counts_units_and_never_splits_a_pair():
    value = b"v" * 1021 + "\U0001f600".encode()  # needs 2 units with 1 left: stops
    assert hm.to_host(ENUM, enum_reply(b"k", value)).value == "v" * 1021
    value = b"v" * 1020 + "\U0001f600".encode()
    assert hm.to_host(ENUM, enum_reply(b"k", value)).value == "v" * 1020 + "\U0001f600"
    value = "é".encode() * 1100  # two bytes, one unit each
    assert hm.to_host(ENUM, enum_reply(b"k", value)).value == "é" * 1022


@pytest.mark.parametrize(
    "bad",
    [b"\xff", b"\xc3", b"\xc0\x80", b"\xed\xa0\x80", b"ok\x80", b"\xf4\x90\x80\x80"],
)
def test_invalid_utf8_in_reply_becomes_hv_e_fail(bad):
    reply = hm.to_host(ENUM, enum_reply(b"key", bad))
    assert reply.status == p.HV_E_FAIL
    assert reply.value == "" and reply.key == ""
    assert hm.to_host(ENUM, enum_reply(bad, b"value")).status == p.HV_E_FAIL


def test_invalid_utf8_past_the_unit_budget_is_never_seen():
    reply = hm.to_host(ENUM, enum_reply(b"k", b"v" * 1022 + b"\xff"))
    assert (reply.status, reply.value) == (p.HV_S_OK, "v" * 1022)


def test_non_zero_status_forwarded_verbatim_without_payload():
    reply = hm.to_host(ENUM, enum_reply(b"key", b"value", status=0x12345678))
    assert (reply.status, reply.key, reply.value) == (0x12345678, "", "")
    assert hm.to_host(ENUM, enum_reply(b"", b"", p.HV_S_CONT)).status_name == "HV_S_CONT"


def test_get_reads_the_value_at_532_not_528():
    request = HostRequest(p.OP_GET, 0, "Name")
    buf = bytearray(p.MSG_SIZE)
    buf[528:532] = b"NOPE"  # a value written at the SET/GET offset is not what the host gets
    assert hm.to_host(request, bytes(buf)).value == ""
    buf[528:534] = b"seen!\0"  # ...except for what overlaps 532
    assert hm.to_host(request, bytes(buf)).value == "!"
    buf[532:537] = b"right"
    reply = hm.to_host(request, bytes(buf))
    assert (reply.key, reply.value) == ("Name", "right")  # key not re-sent: the host's own


def test_set_reply_payload_is_ignored():
    reply = hm.to_host(HostRequest(p.OP_SET, 0, "k", "v"), enum_reply(b"\xff", b"\xff"))
    assert (reply.status, reply.key, reply.value) == (p.HV_S_OK, "", "")


def test_legacy_daemon_status_comes_from_byte_20():
    assert hm.to_host(ENUM, enum_reply(b"", b"x", p.HV_E_FAIL), legacy=True).status == p.HV_S_CONT
    reply = hm.to_host(ENUM, enum_reply(b"key", b"val", p.HV_E_FAIL), legacy=True)
    assert (reply.status, reply.key, reply.value) == (p.HV_S_OK, "key", "val")


def test_get_ip_info_reply_fields():
    info = p.IpInfo(
        "00:15:5D:01:02:03", 3, 1, "10.0.0.5;fe80::1", "255.255.255.0;/64", "10.0.0.1;", "10.0.0.2;"
    )
    request = HostRequest(p.OP_GET_IP_INFO, 1, ip=p.IpInfo("00:15:5D:01:02:03"))
    reply = hm.to_host(request, p.encode_ip_info(bytes(p.MSG_SIZE), info))
    assert reply.ip == info
    buf = bytearray(p.encode_ip_info(bytes(p.MSG_SIZE), info))
    buf[p.OFF_IP_DNS] = 0xFF
    assert hm.to_host(request, bytes(buf)).status == p.HV_E_FAIL


# --------------------------------------------------------------------------- the device


def test_register1_handshake(kernel, sockpath):
    daemon = FakeDaemon(sockpath, ok_reply).start()
    assert kernel.wait_registered(5)
    assert daemon.register_reply == p.build_register_reply(p.OP_REGISTER1, "3.1")
    assert daemon.register_reply[4:8] == b"3.1\0"
    assert kernel.version_seen == p.OP_REGISTER1 and kernel.registrations == 1
    daemon.close()


def test_registration_reply_comes_before_any_request(kernel, sockpath):
    """A host request waiting for a daemon must not overtake the registration reply."""
    result: queue.Queue[bytes] = queue.Queue()
    thread = threading.Thread(
        target=lambda: result.put(kernel.transact(p.build_enumerate_message(2, 0)))
    )
    thread.start()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.connect(sockpath)
    sock.send(p.encode_register())
    assert sock.recv(65536) == p.build_register_reply()
    request = sock.recv(65536)
    assert request == p.build_enumerate_message(2, 0)
    sock.send(p.encode_status(request, p.HV_S_CONT))
    assert p.reply_status(result.get(timeout=5)) == p.HV_S_CONT
    thread.join(5)
    sock.close()


def test_legacy_register_handshake_and_status_rule(kernel, sockpath):
    daemon = FakeDaemon(sockpath, lambda m: enum_reply(b"", b"", p.HV_S_OK), p.OP_REGISTER)
    daemon.start()
    assert kernel.wait_registered(5)
    assert daemon.register_reply[0] == p.OP_REGISTER
    assert kernel.legacy
    # status 0 at offset 0 but an empty key at 20: a legacy daemon means "no more items"
    assert kernel.submit(HostRequest(p.OP_ENUMERATE, 1)).status == p.HV_S_CONT
    daemon.close()


@pytest.mark.parametrize(
    "first", [bytes([p.OP_REGISTER1]) * 7431, b"", bytes([p.OP_SET]) + bytes(p.MSG_SIZE - 1)]
)
def test_bad_handshake_closes_the_connection(kernel, sockpath, first):
    daemon = FakeDaemon(sockpath, ok_reply, register_op=None).start()
    daemon.send(first)
    assert daemon.closed.wait(5)
    assert kernel.registrations == 0 and not kernel.registered
    # a 0-byte datagram reads like end-of-file on a socket: closed either way
    assert kernel.rejected_writes == (1 if first else 0)
    daemon.close()


def test_longer_handshake_write_is_accepted(kernel, sockpath):
    daemon = FakeDaemon(sockpath, lambda m: None, register_op=None).start()
    daemon.send(bytes([p.OP_REGISTER1]) + bytes(8000 - 1))
    assert kernel.wait_registered(5)
    assert daemon.received.get(timeout=5) == p.build_register_reply()
    daemon.close()


def test_transact_delivers_exact_bytes_and_returns_the_raw_reply(kernel, sockpath):
    daemon = FakeDaemon(sockpath, lambda m: enum_reply(b"key", b"value")).start()
    assert kernel.wait_registered(5)
    msg = p.build_enumerate_message(1, 4)
    reply = kernel.transact(msg)
    assert daemon.received.get(timeout=5) == msg
    assert reply == enum_reply(b"key", b"value")
    assert kernel.requests == 1 and kernel.replies == 1
    daemon.close()


def test_reply_longer_than_a_message_is_cut_to_7432(kernel, sockpath):
    daemon = FakeDaemon(sockpath, lambda m: ok_reply(m) + b"extra").start()
    assert kernel.wait_registered(5)
    assert len(kernel.transact(p.build_enumerate_message(1, 0))) == p.MSG_SIZE
    daemon.close()


def test_timeout_gives_hv_e_fail_and_a_late_reply_is_rejected(sockpath):
    release = threading.Event()

    def slow(msg: bytes) -> bytes:
        release.wait(10)
        return ok_reply(msg)

    with FakeKernel(sockpath, timeout=0.2) as kern:
        daemon = FakeDaemon(sockpath, slow).start()
        assert kern.wait_registered(5)
        reply = kern.submit(HostRequest(p.OP_SET, 0, "k", "v"))
        assert reply.status == p.HV_E_FAIL
        assert "did not reply" in reply.detail
        assert kern.timeouts == 1 and kern.state == k.STATE_READY
        release.set()  # the late reply: spurious now -> EINVAL -> connection closed
        assert daemon.closed.wait(5)
        assert kern.rejected_writes == 1
        daemon.close()


def test_transact_raises_on_timeout(sockpath):
    with FakeKernel(sockpath, timeout=5.0) as kern:
        daemon = FakeDaemon(sockpath, lambda m: None).start()
        assert kern.wait_registered(5)
        with pytest.raises(k.ReplyTimeout):
            kern.transact(p.build_enumerate_message(0, 0), timeout=0.1)
        daemon.close()


def test_late_reply_is_taken_as_the_answer_to_the_next_request(sockpath):
    """§3.1 step 7: no request/reply correlation in the kernel."""
    release = threading.Event()
    answers = iter([enum_reply(b"answer-to", b"A"), enum_reply(b"answer-to", b"B")])

    def handler(msg: bytes) -> bytes:
        release.wait(10)
        return next(answers)

    with FakeKernel(sockpath, timeout=5.0) as kern:
        daemon = FakeDaemon(sockpath, handler).start()
        assert kern.wait_registered(5)
        with pytest.raises(k.ReplyTimeout):
            kern.transact(p.build_enumerate_message(1, 0), timeout=0.1)
        result: queue.Queue[bytes] = queue.Queue()
        thread = threading.Thread(
            target=lambda: result.put(kern.transact(p.build_enumerate_message(1, 1)))
        )
        thread.start()
        assert wait_for(lambda: kern.state == k.STATE_REQ)
        release.set()
        assert p.reply_key_value(result.get(timeout=5)) == (b"answer-to", b"A")
        thread.join(5)
        daemon.close()


def test_spurious_reply_closes_the_connection(kernel, sockpath):
    daemon = FakeDaemon(sockpath, ok_reply).start()
    assert kernel.wait_registered(5)
    daemon.send(bytes(p.MSG_SIZE))
    assert daemon.closed.wait(5)
    assert kernel.rejected_writes == 1 and not kernel.registered
    daemon.close()


def test_second_register_while_ready_is_spurious(kernel, sockpath):
    daemon = FakeDaemon(sockpath, ok_reply).start()
    assert kernel.wait_registered(5)
    daemon.send(p.encode_register())
    assert daemon.closed.wait(5)
    assert kernel.registrations == 1
    daemon.close()


def test_short_reply_fails_the_request(kernel, sockpath):
    daemon = FakeDaemon(sockpath, lambda m: m[:100]).start()
    assert kernel.wait_registered(5)
    reply = kernel.submit(HostRequest(p.OP_SET, 0, "k", "v"))
    assert reply.status == p.HV_E_FAIL
    assert kernel.failed_by_close == 1 and kernel.rejected_writes == 1
    daemon.close()


def test_close_during_request_fails_it(kernel, sockpath):
    daemon = FakeDaemon(sockpath, lambda m: None).start()
    assert kernel.wait_registered(5)
    result: queue.Queue[hm.HostReply] = queue.Queue()
    thread = threading.Thread(
        target=lambda: result.put(kernel.submit(HostRequest(p.OP_SET, 0, "k", "v")))
    )
    thread.start()
    daemon.received.get(timeout=5)  # the daemon has read the request
    daemon.close()
    reply = result.get(timeout=5)
    assert reply.status == p.HV_E_FAIL and "closed" in reply.detail
    assert kernel.failed_by_close == 1 and kernel.state == k.STATE_INIT
    thread.join(5)


def test_transact_raises_daemon_gone_on_close(kernel, sockpath):
    daemon = FakeDaemon(sockpath, lambda m: None).start()
    assert kernel.wait_registered(5)
    threading.Thread(target=lambda: (daemon.received.get(timeout=5), daemon.close())).start()
    with pytest.raises(k.DaemonGone):
        kernel.transact(p.build_enumerate_message(0, 0))


def test_second_opener_is_refused_and_the_first_keeps_working(kernel, sockpath):
    first = FakeDaemon(sockpath, lambda m: enum_reply(b"from", b"first")).start()
    assert kernel.wait_registered(5)
    second = FakeDaemon(sockpath, ok_reply, register_op=None).start()
    assert second.closed.wait(5)
    assert kernel.busy_rejections == 1
    reply = kernel.submit(HostRequest(p.OP_ENUMERATE, 1))
    assert (reply.key, reply.value) == ("from", "first")
    first.close()
    second.close()


def test_reconnect_registers_again(kernel, sockpath):
    first = FakeDaemon(sockpath, ok_reply).start()
    assert kernel.wait_registered(5)
    first.close()
    assert wait_for(lambda: not kernel.registered)
    second = FakeDaemon(sockpath, lambda m: enum_reply(b"again", b"2")).start()
    assert kernel.wait_registered(5, registrations=2)
    assert kernel.registrations == 2 and kernel.connections == 2
    assert kernel.submit(HostRequest(p.OP_ENUMERATE, 1)).key == "again"
    second.close()


def test_no_daemon_means_hv_e_fail(sockpath):
    with FakeKernel(sockpath, timeout=0.1) as kern:
        reply = kern.submit(HostRequest(p.OP_ENUMERATE, 2))
        assert reply.status == p.HV_E_FAIL and "no daemon" in reply.detail
        with pytest.raises(k.NotRegistered):
            kern.transact(p.build_enumerate_message(2, 0))


def test_close_removes_the_socket(sockpath):
    kern = FakeKernel(sockpath).start()
    assert os.path.exists(sockpath)
    kern.close()
    assert not os.path.exists(sockpath)


# --------------------------------------------------------------------------- the host view


@pytest.fixture
def guest(kernel, sockpath):
    pools = MemoryPools()
    daemon = FakeDaemon(sockpath, pools).start()
    assert kernel.wait_registered(5)
    yield pools
    daemon.close()


def test_add_kvp_items_sets_pool_0_and_refuses_duplicates(kernel, guest):
    host = Host(kernel)
    host.add_kvp_items({"Env": "prod", "Count": 7})
    assert guest.pools[0] == {b"Env": b"prod", b"Count": b"7"}
    with pytest.raises(HostError) as err:
        host.add_kvp_items({"Env": "test"})
    assert err.value.status == HV_ERROR_ALREADY_EXISTS
    assert err.value.status_name == "HV_ERROR_ALREADY_EXISTS"
    assert guest.pools[0][b"Env"] == b"prod"
    assert host.external_items() == [Item("Env", "prod", 0), Item("Count", "7", 0)]


def test_modify_and_remove(kernel, guest):
    host = Host(kernel)
    with pytest.raises(HostError) as err:
        host.modify_kvp_items({"Env": "x"})
    assert err.value.status == E_NOT_FOUND
    host.add_kvp_items({"Env": "prod"})
    host.modify_kvp_items({"Env": "staging"})
    assert guest.pools[0] == {b"Env": b"staging"}
    host.remove_kvp_items(["Env"])
    assert guest.pools[0] == {} and host.external_items() == []
    with pytest.raises(HostError) as err:
        host.remove_kvp_items(["Env"])
    assert err.value.status_name == "HV_S_CONT"


def test_typed_values(kernel, guest):
    host = Host(kernel)
    host.add_kvp_items({"u32": 2**32 - 1, "u64": 2**40, "qword": RegValue(5, 11)})
    assert guest.pools[0] == {b"u32": b"4294967295", b"u64": b"1099511627776", b"qword": b""}


def test_host_refuses_strings_its_fields_cannot_hold(kernel, guest):
    host = Host(kernel)
    with pytest.raises(ValueError):
        host.add_kvp_items({"k" * 256: "v"})
    with pytest.raises(ValueError):
        host.add_kvp_items({"k": "v" * 1024})
    host.add_kvp_items({"k" * 255: "v" * 1023})
    assert guest.pools[0] == {b"k" * 255: b"v" * 1023}


def test_push_guest_parameters_sets_every_pool_3_key(kernel, guest):
    host = Host(kernel, guest_parameters={"VirtualMachineName": "web01"})
    pushed = host.push_guest_parameters({"HostName": "HV-A"})
    assert [i.name for i in pushed] == list(DEFAULT_GUEST_PARAMETERS)
    assert len(pushed) == 16 and all(i.source == 3 for i in pushed)
    assert guest.pools[3][b"VirtualMachineName"] == b"web01"
    assert guest.pools[3][b"HostName"] == b"HV-A"
    assert set(guest.pools[3]) == {n.encode() for n in DEFAULT_GUEST_PARAMETERS}
    assert guest.pools[0] == {}


def test_enumerations_carry_the_source(kernel, guest):
    host = Host(kernel)
    guest.pools[1][b"DeploymentState"] = b"ready"
    assert host.guest_items() == [Item("DeploymentState", "ready", 1)]
    assert host.guest_intrinsic_items() == [
        Item("OSName", "Simulated Linux", 2),
        Item("IntegrationServicesVersion", "3.1", 2),
    ]
    assert host.enumerate(4) == []


def test_enumeration_stops_at_hv_e_fail_with_partial_items(kernel, guest):
    guest.pools[1][b"good"] = b"1"
    guest.pools[1][b"bad"] = b"\xff"
    guest.pools[1][b"later"] = b"3"
    with pytest.raises(HostError) as err:
        Host(kernel).guest_items()
    assert err.value.status_name == "HV_E_FAIL"
    assert err.value.partial == [Item("good", "1", 1)]


def test_get_returns_the_value_at_532(kernel, guest):
    guest.pools[0][b"k"] = b"v"
    assert Host(kernel).get(0, "k") == Item("k", "v", 0)
    with pytest.raises(HostError):
        Host(kernel).get(0, "missing")


def test_ip_info_round_trip(kernel, guest):
    host = Host(kernel)
    info = host.get_ip_info("00-15-5d-01-02-03")
    assert guest.ip_requests[0].info.adapter_id == "00:15:5D:01:02:03"
    assert info.ip_addr == "10.0.0.5;fe80::1" and info.addr_family == 3
    host.set_ip_info(
        "{f8615163-df3e-46c5-913f-f2d2f965ed0e}",
        "10.0.0.5;2001:db8::5",
        "255.255.255.0;64",
        "10.0.0.1",
        "10.0.0.2",
    )
    sent = guest.ip_requests[1]
    assert sent.op == p.OP_SET_IP_INFO
    assert sent.info.addr_family == 3 and sent.info.dhcp_enabled == 0
    assert sent.info.sub_net == "255.255.255.0;64"


def test_transact_raw_passes_any_length_and_short_replies_reopen(kernel, sockpath):
    daemon = FakeDaemon(sockpath, lambda m: ok_reply(m.ljust(p.MSG_SIZE, b"\0"))).start()
    assert kernel.wait_registered(5)
    reply = kernel.transact_raw(b"\x03")
    assert daemon.received.get(timeout=5) == b"\x03"
    assert len(reply) == p.MSG_SIZE and p.reply_status(reply) == p.HV_S_OK
    with pytest.raises(ValueError):
        kernel.transact(b"\x03")
    daemon.close()


def test_drop_connection_fails_the_request_and_the_daemon_may_come_back(kernel, sockpath):
    first = FakeDaemon(sockpath, lambda m: None).start()
    assert kernel.wait_registered(5)
    assert not FakeKernel(sockpath + ".other").drop_connection()  # nobody connected there
    result: queue.Queue[hm.HostReply] = queue.Queue()
    thread = threading.Thread(
        target=lambda: result.put(kernel.submit(HostRequest(p.OP_ENUMERATE, 0)))
    )
    thread.start()
    first.received.get(timeout=5)
    assert kernel.drop_connection("module reload")
    assert result.get(timeout=5).status == p.HV_E_FAIL
    assert first.closed.wait(5)
    second = FakeDaemon(sockpath, ok_reply).start()
    assert kernel.wait_registered(5, registrations=2)
    thread.join(5)
    first.close()
    second.close()


def test_events_record_what_the_driver_saw(kernel, sockpath):
    seen: List[str] = []
    kernel.on_event = lambda event: seen.append(event.kind)
    daemon = FakeDaemon(sockpath, ok_reply).start()
    assert kernel.wait_registered(5)
    kernel.submit(HostRequest(p.OP_SET, 0, "k", "v"))
    daemon.close()
    assert wait_for(lambda: "close" in seen)
    assert seen == ["open", "register", "request", "reply", "close"]
    assert [e.kind for e in kernel.events] == seen


# --------------------------------------------------------------------------- guest view


def test_guest_view_decodes_records_cut_at_nul():
    from pykvpd.simulator.guestview import decode_records

    record = b"Key\0stale".ljust(512, b"\0") + b"Value\0old tail".ljust(2048, b"\0")
    bad = b"\xffK".ljust(512, b"\0") + b"v".ljust(2048, b"\0")
    assert decode_records(record + bad + b"partial") == [("Key", "Value"), ("\\xffK", "v")]
    assert decode_records(b"") == []


# --------------------------------------------------------------------------- command grammar


def test_parse_value_types():
    from pykvpd.simulator.words import CommandError, parse_value

    assert parse_value("plain") == "plain"
    assert parse_value("u32:42") == RegValue(42, p.REG_U32)
    assert parse_value("u64:0x10") == RegValue(16, p.REG_U64)
    assert parse_value("type:11:5") == RegValue(5, 11)
    assert parse_value("type:2:%PATH%") == RegValue("%PATH%", 2)
    assert parse_value("str:u32:42") == "u32:42"
    with pytest.raises(CommandError):
        parse_value("u32:many")


def test_parse_pool_names_and_numbers():
    from pykvpd.simulator.words import CommandError, parse_pool

    assert [parse_pool(w) for w in ("0", "guest", "AUTO", "auto-external", "255")] == [
        0,
        1,
        2,
        3,
        255,
    ]
    with pytest.raises(CommandError):
        parse_pool("256")
    with pytest.raises(CommandError):
        parse_pool("pool")


def test_load_scenario_line_and_json_formats():
    from pykvpd.simulator.scenario import load_scenario

    text = "# comment\n\nhost add Key 'two words'  # trailing\nexpect guest 0 Key 'two words'\n"
    steps, options = load_scenario(text)
    assert steps == [
        (3, ["host", "add", "Key", "two words"]),
        (4, ["expect", "guest", "0", "Key", "two words"]),
    ]
    assert options == {}
    steps, options = load_scenario(
        '{"timeout": 2, "guest_parameters": {"HostName": "H"}, '
        '"steps": ["intrinsic", ["add", "K", "v w"]]}'
    )
    assert steps == [(1, ["intrinsic"]), (2, ["add", "K", "v w"])]
    assert options == {"timeout": 2, "guest_parameters": {"HostName": "H"}}
    assert load_scenario('["guest"]')[0] == [(1, ["guest"])]


def test_control_requests_in_three_shapes():
    from pykvpd.simulator.serve import parse_control_request
    from pykvpd.simulator.words import CommandError

    assert parse_control_request("\"add K 'v w'\"") == ["add", "K", "v w"]
    assert parse_control_request('["add", "K", 5]') == ["add", "K", "5"]
    assert parse_control_request('{"cmd": "remove", "args": ["K"]}') == ["remove", "K"]
    with pytest.raises(CommandError):
        parse_control_request('{"args": []}')
    with pytest.raises(ValueError):
        parse_control_request("not json")


def test_session_against_the_fake_daemon(kernel, guest, tmp_path):
    from pykvpd.simulator.scenario import Session
    from pykvpd.simulator.transcript import Transcript

    out = io.StringIO()
    session = Session(Host(kernel), Transcript(out))
    assert session.execute("host add Env prod")["status"] == "HV_S_OK"
    result = session.execute("add Env again")
    assert result == {
        "ok": False,
        "status": "HV_ERROR_ALREADY_EXISTS",
        "error": "AddKvpItems 'Env': HV_ERROR_ALREADY_EXISTS",
    }
    assert session.execute("expect status HV_ERROR_ALREADY_EXISTS")["ok"]
    assert session.execute("enumerate 0")["result"] == [
        {"Name": "Env", "Data": "prod", "Source": 0}
    ]
    assert session.execute("expect host 0 Env prod")["ok"]
    assert not session.execute("expect host 0 Env other")["ok"]
    assert not session.execute("expect host-missing 0 Env")["ok"]
    assert session.failed_checks == 2
    assert not session.execute("guest show 0")["ok"]  # no pool directory in this session
    assert "unknown command" in session.execute("frobnicate")["error"]
    text = out.getvalue()
    assert "HOST   AddKvpItems Env = prod" in text
    assert "CHECK  FAILED: host pool 0 'Env': 'prod', expected 'other'" in text


def test_closing_the_simulator_fails_a_request_waiting_for_a_daemon(sockpath):
    kern = FakeKernel(sockpath, timeout=60.0).start()
    result: queue.Queue[hm.HostReply] = queue.Queue()
    thread = threading.Thread(target=lambda: result.put(kern.submit(HostRequest(p.OP_GET, 0))))
    thread.start()
    assert wait_for(lambda: kern._channel.locked())
    kern.close()
    reply = result.get(timeout=10)
    assert reply.status == p.HV_E_FAIL and "closed" in reply.detail
    thread.join(5)
