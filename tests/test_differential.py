"""Differential test: our daemon against Debian's hv_kvp_daemon behind the same fake kernel.

Every scenario is sent, message by message, to both daemons (each with its own fake kernel and
its own pool directory, both under ``unshare -m`` with the default ``/var/lib/hyperv``). After
every message the test asserts identical statuses, identical (key, value) strings where the
kernel reads them (cut at the NUL, as its ``strlen`` does, and as the host receives them after the
kernel's UTF-16 conversion), and identical records in all five pool files (key and value strings,
same file size). The deliberate differences of docs/compatibility.md are asserted as such: each
``test_compat_*`` test names its entry (C1, C2, ...) and checks both sides.

One of them changes what "identical records" means (C14): a DELETE moves the last record into
the freed slot where the C daemon shifts the rest up. Once the orders differ, the pools must hold
the same records, and for every key the same values in the same order (so every GET, SET and
DELETE finds the same record); an ENUMERATE must then return, with the C daemon's status, the
record at that index of our own file.
"""

from __future__ import annotations

import os
import random
import socket
import struct
from typing import Dict, List, Optional, Sequence, Tuple

import pytest
from cdaemon import HarnessUnavailable, KvpPeer, c_daemon_missing

from pykvpd import protocol as p
from pykvpd.simulator.conversion import HOST_VALUE_UNITS
from pykvpd.simulator.kernel import DaemonGone
from pykvpd.simulator.messages import HostRequest, to_host
from pykvpd.store import KEY_SIZE, RECORD_SIZE, encode_record

REASON = c_daemon_missing()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

FILE_POOLS = (0, 1, 3, 4)
AUTO_KEYS = (
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

# --------------------------------------------------------------------------- the pair


class Pair:
    """The C daemon and ours, each behind its own fake kernel; messages go to both."""

    def __init__(self, workdir: str, **kwargs: object) -> None:
        self.c = KvpPeer.c(os.path.join(workdir, "c"), **kwargs)
        self.py = KvpPeer.py(os.path.join(workdir, "py"), namespace=True, **kwargs)
        for peer in (self.c, self.py):
            os.makedirs(peer.workdir, exist_ok=True)
        self.reordered: set = set()  # pools whose record order differs after a DELETE (C14)

    def start(self) -> Pair:
        self.c.start()
        self.py.start()
        return self

    def close(self) -> None:
        self.c.close()
        self.py.close()

    def both(self, msg: bytes) -> Tuple[bytes, bytes]:
        return self.c.transact(msg), self.py.transact(msg)

    def write_pool(self, pool: int, data: bytes) -> None:
        self.c.write_pool(pool, data)
        self.py.write_pool(pool, data)

    # ----------------------------------------------------------------- comparing

    def step(self, msg: bytes) -> Tuple[bytes, bytes]:
        """Send one valid kernel message to both and assert identical host-visible results."""
        c_reply, py_reply = self.both(msg)
        op, pool = p.header(msg)
        what = f"{p.OP_NAMES.get(op, op)} pool {pool}"
        assert p.reply_status(py_reply) == p.reply_status(c_reply), what
        if p.reply_status(c_reply) != p.HV_S_OK:
            return c_reply, py_reply
        if op == p.OP_ENUMERATE and pool == p.POOL_AUTO:
            check_auto_item(struct.unpack_from("<I", msg, p.OFF_ENUM_INDEX)[0], c_reply, py_reply)
        elif op == p.OP_ENUMERATE and pool in self.reordered:
            index = struct.unpack_from("<I", msg, p.OFF_ENUM_INDEX)[0]
            valid = [(r.key, r.value) for r in self.py.pool_image(pool).records if r.valid]
            assert p.reply_key_value(py_reply) == valid[index], what
        elif op == p.OP_ENUMERATE:
            assert p.reply_key_value(py_reply) == p.reply_key_value(c_reply), what
            request = HostRequest(op, pool)
            assert to_host(request, py_reply) == to_host(request, c_reply), what
        elif op == p.OP_GET:
            check_get_improvement(self.c, msg, c_reply, py_reply)
        return c_reply, py_reply

    def check_pools(self) -> None:
        """Identical records (key/value strings) and sizes in all five files; ours zero-filled."""
        for pool in range(p.POOL_COUNT):
            c_data, py_data = self.c.pool_bytes(pool), self.py.pool_bytes(pool)
            assert len(py_data) == len(c_data), f"pool {pool} size"
            py_records, c_records = self.py.records(pool), self.c.records(pool)
            if py_records == c_records:
                self.reordered.discard(pool)
            else:  # C14: only the order differs, never within one key
                assert sorted(py_records) == sorted(c_records), f"pool {pool} records"
                assert per_key(py_records) == per_key(c_records), f"pool {pool} key order"
                self.reordered.add(pool)
            assert_zero_filled(py_data)


def per_key(records: Sequence[Tuple[bytes, bytes]]) -> Dict[bytes, List[bytes]]:
    """Each key's values in file order: what first-match-wins readers can ever tell apart."""
    out: Dict[bytes, List[bytes]] = {}
    for key, value in records:
        out.setdefault(key, []).append(value)
    return out


def assert_zero_filled(data: bytes) -> None:
    """C2: every byte after the NUL of a key or value field is zero in our files."""
    for offset in range(0, len(data) - len(data) % RECORD_SIZE, RECORD_SIZE):
        for start, size in ((offset, KEY_SIZE), (offset + KEY_SIZE, RECORD_SIZE - KEY_SIZE)):
            field = data[start : start + size]
            end = field.index(b"\0")
            assert not field[end:].strip(b"\0"), f"stale bytes after the NUL at {start}"


def check_get_improvement(c: KvpPeer, msg: bytes, c_reply: bytes, py_reply: bytes) -> None:
    """C1: the C daemon's GET leaves the value empty where the kernel reads it; ours has it."""
    key = msg[p.OFF_SET_KEY : p.OFF_SET_KEY + p.MAX_KEY_SIZE].split(b"\0", 1)[0]
    pool = msg[p.OFF_POOL]
    expected = next(v for k, v in c.records(pool) if k == key)  # first match, in C's file
    assert p.reply_key_value(c_reply)[1] == b""
    assert p.reply_key_value(py_reply)[1] == expected
    host = to_host(HostRequest(p.OP_GET, pool), py_reply)
    assert host.status == p.HV_S_OK
    assert host.value == expected.decode("utf-8")[:HOST_VALUE_UNITS] or len(expected) > 1022


def check_auto_item(index: int, c_reply: bytes, py_reply: bytes) -> None:
    """Same key; same value except the documented FQDN fallback (C10) and list cap (C13)."""
    c_key, c_value = p.reply_key_value(c_reply)
    py_key, py_value = p.reply_key_value(py_reply)
    assert py_key == c_key == AUTO_KEYS[index].encode()
    if index == 0:
        hostname = socket.gethostname().encode()
        assert py_value in (c_value, hostname), (c_value, py_value)
        assert not py_value.startswith(b"getaddrinfo failed")
    elif index in (2, 3) and len(c_value) > 1022:
        assert len(py_value) <= 1022 and c_value.startswith(py_value + b";")
    else:
        assert py_value == c_value, AUTO_KEYS[index]


@pytest.fixture
def pair(tmp_path):
    both = Pair(str(tmp_path))
    try:
        both.start()
    except HarnessUnavailable as exc:  # pragma: no cover - only when the machine lacks a tool
        both.close()
        pytest.skip(str(exc))
    yield both
    both.close()


# --------------------------------------------------------------------------- messages


def kset(pool: int, key: bytes, value: bytes) -> bytes:
    return p.build_key_message(p.OP_SET, pool, key, value)


def kget(pool: int, key: bytes) -> bytes:
    return p.build_key_message(p.OP_GET, pool, key)


def kdel(pool: int, key: bytes) -> bytes:
    return p.build_key_message(p.OP_DELETE, pool, key)


def kenum(pool: int, index: int) -> bytes:
    return p.build_enumerate_message(pool, index)


def with_u32(msg: bytes, offset: int, value: int) -> bytes:
    buf = bytearray(msg)
    struct.pack_into("<I", buf, offset, value)
    return bytes(buf)


def run(pair: Pair, messages: Sequence[bytes], enumerate_pools: Sequence[int] = FILE_POOLS) -> None:
    """Step through ``messages``, checking pools after each; then walk every pool to its end."""
    for msg in messages:
        pair.step(msg)
        pair.check_pools()
    for pool in enumerate_pools:
        count = len(pair.c.records(pool))
        for index in range(count + 2):
            pair.step(kenum(pool, index))


# --------------------------------------------------------------------------- hand-written


@pytest.mark.parametrize("pool", FILE_POOLS)
def test_every_operation_on_every_pool(pair, pool):
    run(
        pair,
        [
            kget(pool, b"missing"),
            kdel(pool, b"missing"),
            kenum(pool, 0),
            kset(pool, b"alpha", b"1"),
            kset(pool, b"beta", b"two"),
            kset(pool, b"gamma", "drei ✓".encode()),
            kget(pool, b"beta"),
            kenum(pool, 0),
            kenum(pool, 2),
            kenum(pool, 3),
            kdel(pool, b"beta"),
            kget(pool, b"beta"),
            kenum(pool, 1),
            kdel(pool, b"alpha"),
            kdel(pool, b"gamma"),
            kenum(pool, 0),
        ],
        enumerate_pools=(pool,),
    )


def test_overwrite_shorter_then_longer_values(pair):
    long_value = b"L" * 2047
    run(
        pair,
        [
            kset(0, b"k", long_value),
            kset(0, b"k", b"short"),
            kget(0, b"k"),
            kenum(0, 0),
            kset(0, b"k", b""),
            kenum(0, 0),
            kset(0, b"k", b"medium-length value"),
            kset(0, b"other", b"x"),
            kset(0, b"k", long_value[:1000]),
            kget(0, b"k"),
        ],
    )


def test_delete_first_middle_and_last(pair):
    keys = [f"key{i}".encode() for i in range(7)]
    msgs = [kset(1, k, k.upper() * 3) for k in keys]
    msgs += [kdel(1, b"key3"), kenum(1, 3), kdel(1, b"key0"), kenum(1, 0), kdel(1, b"key6")]
    msgs += [kdel(1, b"key6"), kset(1, b"key3", b"back at the end"), kenum(1, 4)]
    run(pair, msgs, enumerate_pools=(1,))


def test_exact_case_sensitive_c_string_match(pair):
    run(
        pair,
        [
            kset(3, b"abcd", b"4"),
            kset(3, b"abc", b"3"),
            kset(3, b"ab", b"2"),
            kset(3, b"ABC", b"upper"),
            kget(3, b"abc"),
            kget(3, b"a"),
            kget(3, b"Abc"),
            kdel(3, b"abc"),
            kget(3, b"abcd"),
            kget(3, b"ab"),
            kdel(3, b"abcde"),
            kset(3, b"", b"empty key"),
            kget(3, b""),
            kset(3, b"", b"empty key, again"),
            kdel(3, b""),
        ],
        enumerate_pools=(3,),
    )


def test_largest_keys_and_values_and_utf8(pair):
    key = "ключ-🔑-".encode() * 30
    key = key[:511].decode("utf-8", "ignore").encode()
    value = "ü€🙂x".encode() * 200
    value = value[:2047].decode("utf-8", "ignore").encode()
    run(
        pair,
        [
            kset(4, b"k" * 511, b"v" * 2047),
            kset(4, key, value),
            kget(4, key),
            kenum(4, 0),
            kenum(4, 1),
            kset(4, key, "é".encode()),
            kdel(4, b"k" * 511),
        ],
        enumerate_pools=(4,),
    )


def test_enumeration_index_edges(pair):
    msgs = [kset(0, f"r{i}".encode(), b"v") for i in range(3)]
    msgs += [kenum(0, i) for i in (0, 2, 3, 4, 1000, 2**31 - 1)]
    run(pair, msgs)


def test_value_without_a_renderable_type(pair):
    """A SET with value_size 0 (REG_EXPAND_SZ, REG_QWORD=11): existing value kept, new key empty."""
    run(
        pair,
        [
            kset(0, b"typed", b"old value"),
            with_u32(kset(0, b"typed", b""), p.OFF_SET_VALUE_SIZE, 0),
            kget(0, b"typed"),
        ],
    )


def test_auto_pool_enumeration_and_set_on_pool_2(pair):
    msgs = [kenum(2, i) for i in range(12)]
    msgs += [kset(2, b"stored", b"but never enumerated"), kget(2, b"stored")]
    msgs += [kenum(2, i) for i in range(12)]
    msgs += [kdel(2, b"stored"), kdel(2, b"stored")]
    run(pair, msgs, enumerate_pools=())


def test_records_written_by_another_program(pair):
    """Duplicates and foreign records (zero-filled, as a careful writer leaves them)."""
    image = b"".join(
        encode_record(k, v)
        for k, v in [(b"dup", b"first"), (b"other", b"x"), (b"dup", b"second"), (b"z", b"")]
    )
    pair.write_pool(1, image)
    run(
        pair,
        [
            kenum(1, 2),
            kget(1, b"dup"),
            kset(1, b"dup", b"changed"),
            kenum(1, 0),
            kenum(1, 2),
            kdel(1, b"dup"),
            kget(1, b"dup"),
            kenum(1, 1),
            kdel(1, b"dup"),
            kget(1, b"dup"),
        ],
        enumerate_pools=(1,),
    )


def test_many_records(pair):
    """More than 100 records (the old read-loop overflow) and the C daemon's 50-record growth."""
    rng = random.Random(7)
    keys = [f"record-{i:03d}".encode() for i in range(130)]
    msgs = [
        kset(0, k, bytes(rng.choice(b"abcdef") for _ in range(rng.randrange(300)))) for k in keys
    ]
    for key in rng.sample(keys, 40):
        msgs.append(kdel(0, key))
    msgs += [kenum(0, i) for i in (0, 50, 89, 90, 91)]
    run(pair, msgs, enumerate_pools=())
    pair.check_pools()


# --------------------------------------------------------------------------- seeded random

RANDOM_KEYS = [
    b"a",
    b"A",
    b"ab",
    b"abc",
    b"abcd",
    b"",
    b"key",
    b"Key",
    "ключ".encode(),
    "🔑".encode(),
    b"k" * 511,
    b"VirtualMachineName",
    b"with space",
    b"semi;colon",
]
VALUE_CHARS = "abcXYZ0189 _-;:/" + "äöü€🙂ß"


def random_value(rng: random.Random) -> bytes:
    size = rng.choice(
        [0, 1, rng.randrange(2, 16), rng.randrange(16, 400), rng.randrange(400, 2100)]
    )
    text = "".join(rng.choice(VALUE_CHARS) for _ in range(size)).encode()
    return text[:2047].decode("utf-8", "ignore").encode()


def random_messages(seed: int, count: int) -> List[bytes]:
    rng = random.Random(seed)
    sizes: Dict[int, int] = {pool: 0 for pool in range(p.POOL_COUNT)}  # rough, for indexes
    out: List[bytes] = []
    for _ in range(count):
        pool = rng.choice((0, 1, 3, 4, 0, 1, 3, 4, 2))
        key = rng.choice(RANDOM_KEYS)
        roll = rng.random()
        if roll < 0.45:
            out.append(kset(pool, key, random_value(rng)))
            sizes[pool] += 1
        elif roll < 0.65:
            out.append(kdel(pool, key))
        elif roll < 0.8:
            out.append(kget(pool, key))
        else:
            limit = 12 if pool == p.POOL_AUTO else sizes[pool] + 2
            out.append(kenum(pool, rng.randrange(limit)))
    return out


@pytest.mark.parametrize("seed", range(24))
def test_random_sequences(pair, seed):
    run(pair, random_messages(seed, 60), enumerate_pools=(0, 1, 3, 4))


# --------------------------------------------------------------------------- documented differences
# Each test names its entry in docs/compatibility.md and asserts both the C daemon's behaviour and
# ours, so the list stays true: a change on either side fails here.


def _status(reply: bytes) -> int:
    return p.reply_status(reply)


def _seed_abc(pair: Pair, pool: int = 0) -> None:
    for key, value in ((b"abc", b"one"), (b"abcd", b"two"), (b"x", b"three")):
        pair.step(kset(pool, key, value))


def test_compat_c1_get_returns_the_value(pair):
    pair.step(kset(0, b"name", b"value"))
    c_reply, py_reply = pair.both(kget(0, b"name"))
    assert _status(c_reply) == _status(py_reply) == p.HV_S_OK
    assert to_host(HostRequest(p.OP_GET, 0), c_reply).value == ""
    assert to_host(HostRequest(p.OP_GET, 0), py_reply).value == "value"


def test_compat_c2_zero_fill(pair):
    pair.step(kset(0, b"k", b"a long first value"))
    pair.step(kset(0, b"k", b"short"))
    c_value = pair.c.pool_bytes(0)[KEY_SIZE:RECORD_SIZE]
    py_value = pair.py.pool_bytes(0)[KEY_SIZE:RECORD_SIZE]
    assert c_value.startswith(b"short\0 first value")  # the C daemon's stale tail
    assert py_value == b"short".ljust(RECORD_SIZE - KEY_SIZE, b"\0")
    assert pair.c.records(0) == pair.py.records(0) == [(b"k", b"short")]


@pytest.mark.parametrize("pool, c_death", [(5, 1), (8, 1), (255, -11)])
def test_compat_c3_pool_out_of_range(pair, pool, c_death):
    pair.step(kset(0, b"kept", b"yes"))
    with pytest.raises(DaemonGone):
        pair.c.transact(kset(pool, b"k", b"v"))
    assert pair.c.proc.wait(5) == c_death  # exit(1), or SIGSEGV for pool 255
    for msg in (kset(pool, b"k", b"v"), kget(pool, b"k"), kdel(pool, b"k"), kenum(pool, 0)):
        assert _status(pair.py.transact(msg)) == p.HV_E_FAIL
    assert pair.py.alive() and pair.py.kernel.registrations == 1
    assert pair.py.records(0) == [(b"kept", b"yes")]


def test_compat_c4_enumerate_index_beyond_2_31(pair):
    _seed_abc(pair)
    c_reply = pair.c.transact(kenum(0, 2**32 - 1))  # index -1 for the C daemon: reads before
    assert _status(c_reply) == p.HV_S_OK  # the array and reports whatever is there
    with pytest.raises(DaemonGone):
        pair.c.transact(kenum(0, 2**31))
    assert pair.c.proc.wait(5) == -11  # SIGSEGV
    for index in (2**31, 2**31 + 5, 2**32 - 1):
        assert _status(pair.py.transact(kenum(0, index))) == p.HV_S_CONT
    assert pair.py.alive()


@pytest.mark.parametrize(
    "name, msg, c_records",
    [
        (
            "GET key_size without NUL (prefix match)",
            with_u32(kget(0, b"abc"), p.OFF_SET_KEY_SIZE, 2),
            None,
        ),
        (
            "DELETE key_size 0 (matches the first record)",
            with_u32(kdel(0, b"zzz"), p.OFF_DEL_KEY_SIZE, 0),
            [(b"abcd", b"two"), (b"x", b"three")],
        ),
        (
            "SET key_size 0 (modifies the first record)",
            with_u32(kset(0, b"zzz", b"new"), p.OFF_SET_KEY_SIZE, 0),
            [(b"abc", b"new"), (b"abcd", b"two"), (b"x", b"three")],
        ),
        (
            "DELETE key_size without NUL (prefix match)",
            with_u32(kdel(0, b"abc"), p.OFF_DEL_KEY_SIZE, 3),
            [(b"abcd", b"two"), (b"x", b"three")],
        ),
        (
            "SET value_size without NUL",
            with_u32(kset(0, b"new", b"value"), p.OFF_SET_VALUE_SIZE, 3),
            [(b"abc", b"one"), (b"abcd", b"two"), (b"x", b"three"), (b"new", b"val")],
        ),
    ],
)
def test_compat_c5_sizes_that_cut_the_string(pair, name, msg, c_records):
    _seed_abc(pair)
    before = pair.py.records(0)
    c_reply, py_reply = pair.both(msg)
    assert _status(c_reply) == p.HV_S_OK, name
    assert pair.c.records(0) == (c_records if c_records is not None else before), name
    assert _status(py_reply) == p.HV_E_FAIL, name
    assert pair.py.records(0) == before, name
    assert pair.py.alive() and pair.c.alive()


@pytest.mark.parametrize(
    "msg",
    [
        with_u32(kset(0, b"k", b"v"), p.OFF_SET_KEY_SIZE, 513),
        with_u32(kset(0, b"k", b"v"), p.OFF_SET_VALUE_SIZE, 2049),
        with_u32(kget(0, b"abc"), p.OFF_SET_KEY_SIZE, 600),
        with_u32(kdel(0, b"abc"), p.OFF_DEL_KEY_SIZE, 0xFFFFFFFF),
    ],
    ids=["set-key-513", "set-value-2049", "get-key-600", "delete-key-4G"],
)
def test_compat_c6_sizes_beyond_the_fields(pair, msg):
    _seed_abc(pair)
    before = pair.c.records(0)
    c_reply, py_reply = pair.both(msg)
    assert _status(c_reply) == p.HV_S_CONT
    assert _status(py_reply) == p.HV_E_FAIL
    assert pair.c.records(0) == pair.py.records(0) == before


@pytest.mark.parametrize("op", [6, 7, 9, 100, 255])
def test_compat_c7_unknown_operation(pair, op):
    msg = bytearray(kenum(0, 0))
    msg[p.OFF_OPERATION] = op
    c_reply, py_reply = pair.both(bytes(msg))
    assert _status(c_reply) == p.HV_S_OK  # echoed as if it had worked
    assert _status(py_reply) == p.HV_E_FAIL
    assert pair.py.alive() and pair.c.alive()


def _raw_record(key: bytes, value: bytes) -> bytes:
    """A record exactly as given, even without NULs (what a broken writer leaves)."""
    return (
        key.ljust(KEY_SIZE, b"\0")[:KEY_SIZE]
        + value.ljust(RECORD_SIZE - KEY_SIZE, b"\0")[: RECORD_SIZE - KEY_SIZE]
    )


def test_compat_c8_damaged_records(pair):
    good = encode_record(b"good", b"1")
    no_nul = _raw_record(b"K" * KEY_SIZE, b"value of the damaged record")
    bad_utf8 = _raw_record(b"bad\xff\xfe", b"2")
    pair.write_pool(1, good + no_nul + bad_utf8 + encode_record(b"last", b"3"))
    # C: records are served raw, so the host gets the damaged ones too.
    c_keys = [pair.c.enumerate(1, i)[1][:4] for i in range(4)]
    assert c_keys == [b"good", b"KKKK", b"bad\xff", b"last"]
    c_host = to_host(HostRequest(p.OP_ENUMERATE, 1), pair.c.transact(kenum(1, 2)))
    assert c_host.status == p.HV_E_FAIL  # the kernel cannot convert it: host enumeration stops
    # Ours: the damaged records are skipped, the valid ones stay reachable.
    assert pair.py.enumerate_all(1) == [(b"good", b"1"), (b"last", b"3")]
    assert pair.py.get(1, b"last") == (p.HV_S_OK, b"3")
    # A DELETE before the record without a NUL: the C daemon aborts (fortified strcpy).
    with pytest.raises(DaemonGone):
        pair.c.transact(kdel(1, b"good"))
    assert pair.c.proc.wait(5) == -6  # SIGABRT
    assert _status(pair.py.transact(kdel(1, b"good"))) == p.HV_S_OK
    assert pair.py.alive()
    # C14: the last record moved into the freed slot; the damaged ones kept their bytes.
    assert [r.key[:4] for r in pair.py.pool_image(1).records] == [b"last", b"KKKK", b"bad\xff"]


def test_compat_c9_partial_trailing_record(pair):
    partial = b"partial".ljust(1000, b"\0")
    pair.write_pool(0, encode_record(b"whole", b"1") + partial)
    c_reply, py_reply = pair.both(kenum(0, 1))
    assert _status(c_reply) == _status(py_reply) == p.HV_S_CONT  # both ignore it when reading
    pair.step(kset(0, b"new", b"2"))
    assert len(pair.c.pool_bytes(0)) == 2 * RECORD_SIZE
    assert pair.c.records(0) == [(b"whole", b"1"), (b"new", b"2")]  # partial bytes dropped
    data = pair.py.pool_bytes(0)
    assert data[RECORD_SIZE : RECORD_SIZE + 1000] == partial  # kept, padded to a record
    assert pair.py.records(0) == [(b"whole", b"1"), (b"partial", b""), (b"new", b"2")]


def test_compat_c10_fqdn_is_never_an_error_text(pair):
    c_reply, py_reply = pair.both(kenum(2, 0))
    check_auto_item(0, c_reply, py_reply)
    assert p.reply_key_value(py_reply)[1]  # never empty: at worst the host name


def test_compat_c11_journal_file_beside_the_pools(pair):
    pair.step(kset(0, b"k", b"v"))
    c_names = sorted(os.listdir(pair.c.pool_dir))
    py_names = sorted(os.listdir(pair.py.pool_dir))
    assert c_names == [f".kvp_pool_{i}" for i in range(5)]
    extra = sorted(set(py_names) - set(c_names))
    assert extra == [".pykvpd-journal-kvp_pool_0"]
    assert os.path.getsize(os.path.join(pair.py.pool_dir, extra[0])) == 0  # no change pending
    pair.step(kset(0, b"k", b"v"))  # the same value again: noted for watchers, bytes unchanged
    extra = sorted(set(os.listdir(pair.py.pool_dir)) - set(c_names))
    assert extra == [".pykvpd-host-writes", ".pykvpd-journal-kvp_pool_0"]


def test_compat_c12_command_line(tmp_path):
    import subprocess
    import sys

    from cdaemon import C_DAEMON, ROOT

    def rc(argv: List[str]) -> int:
        return subprocess.run(argv, capture_output=True, timeout=30, cwd=ROOT).returncode

    ours = [sys.executable, "-m", "pykvpd"]
    for option, c_expected, py_expected in (
        ("-h", 0, 0),
        ("--help", 0, 0),
        ("--no-such-option", 1, 1),
        ("-x", 1, 1),
    ):
        assert rc([C_DAEMON, option]) == c_expected, option
        assert rc([*ours, option]) == py_expected, option
    # -d/--debug: Debian's 6.1 daemon does not know it (newer upstream does); ours accepts it.
    assert rc([C_DAEMON, "--debug"]) == 1
    missing = str(tmp_path / "no-device")
    status = str(tmp_path / "status.json")
    cmd = [*ours, "-n", "-d", "--device", missing, "--pool-dir", str(tmp_path / "pools")]
    out = subprocess.run(
        [*cmd, "--status-file", status, "--config", str(tmp_path / "none.conf")],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert out.returncode == 1  # no device: exit 1, like the C daemon; not a usage error
    assert "usage" not in out.stderr.lower()


# 80 IPv4 addresses (1,190 characters joined) and a few IPv6 ones on a veth pair in a fresh
# network namespace (TEST-NET / documentation ranges; nothing is sent anywhere).
MANY_ADDRESSES = (
    "ip link add v0 address 02:00:00:00:00:01 type veth"
    " peer name v1 address 02:00:00:00:00:02 && ip link set v0 up && ip link set v1 up && "
    "for i in $(seq 1 80); do ip addr add 198.51.100.$i/32 dev v0 || exit 1; done && "
    "ip -6 addr add 2001:db8::10/64 dev v1 nodad && ip -6 addr add 2001:db8::11/64 dev v1 nodad"
)


def _veth_missing() -> Optional[str]:
    import subprocess

    probe = subprocess.run(
        ["unshare", "-n", "sh", "-c", "ip link add v0 type veth peer name v1"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    return None if probe.returncode == 0 else f"no veth in a new netns: {probe.stderr.strip()}"


def test_compat_c13_address_lists_capped_at_whole_addresses(tmp_path):
    reason = _veth_missing()
    if reason:
        pytest.skip(reason)
    both = Pair(str(tmp_path), netns_setup=MANY_ADDRESSES).start()
    try:
        c_reply, py_reply = both.both(kenum(2, 2))
        c_value, py_value = p.reply_key_value(c_reply)[1], p.reply_key_value(py_reply)[1]
        assert len(c_value) > 1022  # the kernel would cut it mid-address at 1022 units
        assert to_host(HostRequest(p.OP_ENUMERATE, 2), c_reply).value == c_value[:1022].decode()
        assert len(py_value) <= 1022 and c_value.startswith(py_value + b";")
        assert py_value.split(b";")[-1] in c_value.split(b";")
        for index in (3, 5, 9):  # shorter lists and fixed values: identical
            both.step(kenum(2, index))
        # FQDN in a namespace where name resolution fails (C10).
        c_reply, py_reply = both.both(kenum(2, 0))
        check_auto_item(0, c_reply, py_reply)
    finally:
        both.close()


def test_compat_c14_delete_moves_the_last_record_into_the_freed_slot(pair):
    image = b"".join(
        encode_record(k, v)
        for k, v in [(b"a", b"0"), (b"k", b"1"), (b"b", b"2"), (b"k", b"3"), (b"c", b"4")]
    )
    pair.write_pool(1, image)
    pair.step(kdel(1, b"a"))
    assert pair.c.records(1) == [(b"k", b"1"), (b"b", b"2"), (b"k", b"3"), (b"c", b"4")]
    assert pair.py.records(1) == [(b"c", b"4"), (b"k", b"1"), (b"b", b"2"), (b"k", b"3")]
    pair.check_pools()  # same records, same order within each key
    # The last record is now a later "k": it is never moved in front of the other "k".
    pair.step(kdel(1, b"c"))
    assert pair.py.records(1) == [(b"k", b"1"), (b"k", b"3"), (b"b", b"2")]
    for msg in (kget(1, b"k"), kdel(1, b"k"), kget(1, b"k"), kenum(1, 0), kenum(1, 2)):
        pair.step(msg)
        pair.check_pools()
