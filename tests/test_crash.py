"""Crash test: SIGKILL our daemon at random moments during a stream of host SET/DELETE.

A pool of hundreds and one of thousands of records get a stream of modifies (random value
lengths), appends and deletes at random positions, and two pools of 10,000 records a stream that
is mostly or almost only DELETEs (each moves the last record into the freed slot). A timer
kills the daemon (SIGKILL) after a random delay, the daemon is restarted, and so on, a few
hundred times with fixed seeds. After every kill:

* after the restart (the daemon first completes a change a kill interrupted, from its journal):
  the pool holds exactly the acknowledged state (every change whose reply reached the kernel),
  with the one request in flight either applied or not; whole records, no duplicated keys, never
  empty. This is the guarantee, asserted;
* right away, before anything recovers, the file alone (what readers that do not know the journal,
  such as cloud-init or waagent, would see). A kill can tear an in-place write at a page boundary
  (records are 2560 bytes, pages 4096) or fall between a DELETE's write and its truncate; when
  that was seen, the test reports it as a warning with the details, so it stays visible (and
  fails if it is not rare).

The C daemon loses acknowledged data in one kill out of five on a 200-record pool (spec appendix
and issue #2: it truncates and rewrites the whole file); ``test_the_c_daemon_fails_this`` shows
that the test can tell.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
import warnings
from typing import Dict, List, Optional, Tuple

import pytest
from cdaemon import KvpPeer, c_daemon_missing

from pykvpd import protocol as p
from pykvpd.simulator.kernel import KernelError
from pykvpd.store import decode_pool, encode_record

Model = Dict[bytes, bytes]
Op = Tuple[str, bytes, bytes]  # ("set" | "delete", key, value)

REQUEST_TIMEOUT = 1.0  # a request racing a kill waits at most this long for the registration


def initial_records(count: int, rng: random.Random) -> List[Tuple[bytes, bytes]]:
    return [(b"key-%05d" % i, random_value(rng)) for i in range(count)]


def random_value(rng: random.Random) -> bytes:
    return b"v" * rng.choice((0, 1, 10, 100, 1000, 2047))


def next_op(model: Model, rng: random.Random, counter: List[int], deletes: float = 0.25) -> Op:
    """A modify, an append or (with probability ``deletes``) a DELETE of a random key."""
    roll = rng.random()
    if model and roll >= 1 - deletes and len(model) >= 50:
        return ("delete", rng.choice(list(model)), b"")
    if model and roll < (1 - deletes) * 2 / 3:  # (empty only after a C daemon emptied it)
        return ("set", rng.choice(list(model)), random_value(rng))
    counter[0] += 1
    return ("set", b"new-%06d" % counter[0], random_value(rng))


def apply(model: Model, op: Op) -> Model:
    out = dict(model)
    kind, key, value = op
    if kind == "set":
        out[key] = value
    else:
        out.pop(key, None)
    return out


def message(pool: int, op: Op) -> bytes:
    kind, key, value = op
    if kind == "set":
        return p.build_key_message(p.OP_SET, pool, key, value)
    return p.build_key_message(p.OP_DELETE, pool, key)


def file_state(data: bytes) -> Tuple[Model, List[str], int]:
    """The pool file as a reader that keeps the first of duplicate keys sees it (the daemon, the
    host), what is wrong with it (damage, emptiness), and how many records are duplicated."""
    image = decode_pool(data)
    problems = list(image.problems)
    if not image.records:
        problems.append("pool is empty")
    state: Model = {}
    duplicates = 0
    for record in image.records:
        if record.key in state:
            duplicates += 1
            if state[record.key] != record.value:
                problems.append(f"key {record.key!r} twice with different values")
        else:
            state[record.key] = record.value
    return state, problems, duplicates


def stream_until_killed(
    peer: KvpPeer,
    pool: int,
    model: Model,
    rng: random.Random,
    counter: List[int],
    delay: float,
    deletes: float,
) -> Tuple[Model, Optional[Op], int]:
    """Send changes until the daemon is killed ``delay`` s from now.

    Returns the acknowledged state, the request in flight (None if the kill fell between two
    requests) and the number of acknowledged changes.
    """
    killed = threading.Event()
    proc = peer.proc
    assert proc is not None

    def kill() -> None:
        killed.set()
        proc.send_signal(signal.SIGKILL)

    timer = threading.Timer(delay, kill)
    timer.start()
    in_flight: Optional[Op] = None
    acked = 0
    try:
        while not killed.is_set():
            op = next_op(model, rng, counter, deletes)
            try:
                reply = peer.transact(message(pool, op), timeout=REQUEST_TIMEOUT)
            except KernelError:
                in_flight = op
                break
            assert p.reply_status(reply) == p.HV_S_OK, op
            model = apply(model, op)
            acked += 1
    finally:
        timer.join()
        proc.wait(10)
    return model, in_flight, acked


def run_kills(
    peer: KvpPeer,
    pool: int,
    records: int,
    kills: int,
    max_delay: float,
    seed: int,
    deletes: float = 0.25,
) -> Dict[str, int]:
    rng = random.Random(seed)
    model: Model = dict(initial_records(records, rng))
    os.makedirs(peer.pool_dir, exist_ok=True)
    with open(peer.pool_path(pool), "wb") as fh:
        fh.write(b"".join(encode_record(k, v) for k, v in model.items()))
    peer.start()
    counter = [0]
    stats = dict.fromkeys(
        ("kills", "acked", "in_flight_applied", "in_flight_not_applied", "file_alone_duplicates"), 0
    )
    failures: List[str] = []  # broken guarantees
    alone: List[str] = []  # damage seen in the file alone before the restart
    try:
        for kill in range(kills):
            delay = rng.uniform(0, max_delay)
            model, in_flight, acked = stream_until_killed(
                peer, pool, model, rng, counter, delay, deletes
            )
            stats["kills"] += 1
            stats["acked"] += acked
            # Right after the kill, before anything recovers: what readers that do not know our
            # journal (cloud-init, waagent) see. Whole records, never empty, every acknowledged
            # change there; an identical copy of a record (a DELETE between its write and its
            # truncate) reads the same for them and is counted, not failed.
            raw_state, problems, duplicates = file_state(peer.pool_bytes(pool))
            allowed = [model] + ([apply(model, in_flight)] if in_flight else [])
            if problems or raw_state not in allowed:
                alone.append(f"kill {kill} ({delay * 1000:.1f} ms, {in_flight}): {problems}")
            stats["file_alone_duplicates"] += bool(duplicates)
            # After the restart (the daemon completes an interrupted change first): exactly the
            # acknowledged state, the request in flight applied or not, no duplicates.
            peer.restart()
            peer.get(pool, b"key-00000")
            state, problems, duplicates = file_state(peer.pool_bytes(pool))
            if problems or duplicates:
                failures.append(f"kill {kill}: after restart {problems}, {duplicates} duplicates")
            if state == model:
                stats["in_flight_not_applied"] += in_flight is not None
            elif in_flight and state == apply(model, in_flight):
                stats["in_flight_applied"] += 1
                model = state
            else:
                lost = sorted(set(model) - set(state))[:3]
                changed = sorted(k for k in set(model) & set(state) if model[k] != state[k])[:3]
                failures.append(f"kill {kill}: acknowledged state lost: {lost} {changed}")
                model = state
            if len(failures) >= 5:
                break
    finally:
        peer.close()
    assert not failures, "\n".join(failures)
    stats["file_alone_damaged"] = len(alone)
    stats["file_alone_examples"] = alone[:3]  # type: ignore[assignment]
    return stats


@pytest.mark.parametrize(
    "pool, records, kills, max_delay, seed, deletes",
    [
        (0, 300, 170, 0.030, 1, 0.25),
        (1, 3000, 110, 0.060, 2, 0.25),
        (1, 10_000, 30, 0.060, 4, 0.7),
        (3, 10_000, 20, 0.040, 5, 0.95),
    ],
    ids=["hundreds", "thousands", "ten-thousand-delete-heavy", "ten-thousand-deletes"],
)
def test_kill_during_writes(tmp_path, pool, records, kills, max_delay, seed, deletes):
    started = time.monotonic()
    stats = run_kills(
        KvpPeer.py(str(tmp_path)), pool, records, kills, max_delay, seed, deletes
    )
    assert stats["kills"] == kills
    # The kills must land among the writes, not only between them.
    assert stats["in_flight_applied"] + stats["in_flight_not_applied"] >= kills // 4, stats
    print(f"{stats} in {time.monotonic() - started:.1f} s")
    if stats["file_alone_damaged"]:
        # A documented limit (docs/compatibility.md, "Crash safety"): without rename, no write of
        # a 2560-byte record is atomic against SIGKILL at a page boundary, and a DELETE's shift is
        # several writes; the journal completes the change at the next start (asserted above).
        # Until then a reader of the bare file may see it half done. Shown, not failed.
        warnings.warn(
            f"the bare file was mid-change right after {stats['file_alone_damaged']} of "
            f"{kills} kills (completed on restart): {stats['file_alone_examples']}",
            stacklevel=1,
        )
    assert stats["file_alone_damaged"] <= kills // 10, stats


C_REASON = c_daemon_missing()


@pytest.mark.skipif(C_REASON is not None, reason=C_REASON or "")
def test_the_c_daemon_fails_this(tmp_path):
    """The same check catches Debian's daemon losing acknowledged data (truncate + rewrite)."""
    with pytest.raises(AssertionError, match="empty|lost|partial|twice"):
        run_kills(KvpPeer.c(str(tmp_path)), 0, 2000, 40, 0.030, 3)
