"""Property tests: random operation sequences through ``Handler`` against a plain list model.

The model is what spec §4 says the pool is: an ordered list of (key, value); SET changes the value
of the first record with that exact key or appends; DELETE removes the first such record, and
the last record takes its place unless records of the last record's key lie in between: then
each of those moves up into the previous one's place (docs/compatibility.md, C14; the order
within every key is kept); GET and ENUMERATE read. Interleaved with the host's operations,
"another writer" appends records to the file directly (as cloud-init does) and rewrites it in
place. After every step the reply must match the model and the pool file must decode to exactly
the model's records, in order, zero-filled.
"""

from __future__ import annotations

import os
import tempfile
from typing import List, Optional, Tuple

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pykvpd import protocol as p
from pykvpd.handler import Handler
from pykvpd.store import PoolDir, decode_pool, encode_record

Model = List[Tuple[bytes, bytes]]

KEYS = [b"a", b"A", b"ab", b"abc", b"", "ключ".encode(), b"k" * 511, b"x;y", b"z"]


class NoIntrinsic:
    """The Auto pool is not under test here."""

    def item(self, index: int) -> Optional[tuple]:
        return None


def _utf8(limit: int) -> st.SearchStrategy:
    text = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)))
    return text.map(lambda s: s.encode()[:limit].decode("utf-8", "ignore").encode())


VALUES = st.one_of(st.sampled_from([b"", b"v", b"V" * 2047]), _utf8(2047))
POOLS = st.sampled_from([0, 1, 3, 4])
KEY = st.one_of(st.sampled_from(KEYS), _utf8(511))

OPERATION = st.one_of(
    st.tuples(st.just("set"), POOLS, KEY, VALUES),
    st.tuples(st.just("set-untyped"), POOLS, KEY, st.just(b"")),
    st.tuples(st.just("delete"), POOLS, KEY, st.just(b"")),
    st.tuples(st.just("get"), POOLS, KEY, st.just(b"")),
    st.tuples(st.just("enumerate"), POOLS, st.integers(0, 12), st.just(b"")),
    st.tuples(st.just("append"), POOLS, KEY, VALUES),  # another writer appends to the file
    st.tuples(st.just("rewrite"), POOLS, st.just(b""), st.just(b"")),  # same bytes, in place
)


def first(model: Model, key: bytes) -> Optional[int]:
    return next((i for i, (k, _) in enumerate(model) if k == key), None)


def model_delete(model: Model, at: int) -> None:
    """C14 on a plain list: fill ``at`` from the end without reordering any key's records."""
    last = len(model) - 1
    chain = [at] + [i for i in range(at + 1, last) if model[i][0] == model[last][0]]
    for dst, src in zip(chain, chain[1:] + [last]):
        model[dst] = model[src]
    model.pop()


def step(handler: Handler, pools: PoolDir, models: dict, op: tuple) -> None:
    kind, pool, key, value = op
    model: Model = models[pool]
    path = pools.path(pool)
    if kind == "append":
        with open(path, "ab") as fh:
            fh.write(encode_record(key, value))
        model.append((key, value))
        return
    if kind == "rewrite":
        with open(path, "r+b") as fh:
            fh.write(b"".join(encode_record(k, v) for k, v in model))
        return
    if kind == "enumerate":
        outcome = handler.handle(p.build_enumerate_message(pool, key))
        if key < len(model):
            assert outcome.status == p.HV_S_OK
            assert p.reply_key_value(outcome.reply) == model[key]
        else:
            assert outcome.status == p.HV_S_CONT
        return
    at = first(model, key)
    if kind == "get":
        outcome = handler.handle(p.build_key_message(p.OP_GET, pool, key))
        if at is None:
            assert outcome.status == p.HV_S_CONT
        else:
            assert outcome.status == p.HV_S_OK
            assert p.reply_key_value(outcome.reply)[1] == model[at][1]
        return
    if kind == "delete":
        outcome = handler.handle(p.build_key_message(p.OP_DELETE, pool, key))
        assert outcome.status == (p.HV_S_CONT if at is None else p.HV_S_OK)
        if at is not None:
            model_delete(model, at)
        return
    untyped = kind == "set-untyped"  # value_size 0: an existing value is kept, a new one empty
    outcome = handler.handle(p.build_key_message(p.OP_SET, pool, key, None if untyped else value))
    assert outcome.status == p.HV_S_OK
    if at is None:
        model.append((key, value))
    elif not untyped:
        model[at] = (key, value)


def check_files(pools: PoolDir, models: dict) -> None:
    for pool, model in models.items():
        with open(pools.path(pool), "rb") as fh:
            data = fh.read()
        image = decode_pool(data)
        assert not image.problems
        assert [(r.key, r.value) for r in image.records] == model, pool
        assert data == b"".join(encode_record(k, v) for k, v in model)  # zero-filled


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(OPERATION, max_size=40), st.booleans())
def test_pool_files_always_decode_to_the_model(ops, watch):
    with tempfile.TemporaryDirectory() as directory:
        pools = PoolDir(os.path.join(directory, "hyperv"), create=True, watch=watch)
        try:
            pools.init_files()
            handler = Handler(pools, NoIntrinsic())
            models: dict = {pool: [] for pool in (0, 1, 2, 3, 4)}
            for op in ops:
                step(handler, pools, models, op)
                check_files(pools, models)
        finally:
            pools.close()
