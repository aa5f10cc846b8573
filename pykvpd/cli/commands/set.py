"""``kvp set``: add or modify a record, or store a long value as chunks KEY.0..N (--chunk)."""

from __future__ import annotations

import sys

from ... import store
from ...escaping import escape
from ...store import POOL_LABELS
from ..access import one_pool, writing
from ..console import log
from ..errors import EXIT_OK, usage
from ..output import SCHEMA_VERSION, Output, text
from ..validate import arg_bytes, byte_size, check_key, checked, limits

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any, Dict

FORMATS = ("json", "raw")  # --raw: keep stdin byte for byte


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("key")
    p.add_argument("value", help="the value, or - to read it from stdin")
    p.add_argument("--chunk", action="store_true", help="split a long value over KEY.0..N")
    p.add_argument("--chunk-size", type=byte_size, metavar="BYTES", help="bytes per chunk")


def read_value(args: argparse.Namespace) -> bytes:
    """The value argument's bytes, or stdin's for ``-`` (one trailing newline dropped)."""
    if args.value != "-":
        return arg_bytes(args.value)
    data = sys.stdin.buffer.read()
    if not args.raw and data.endswith(b"\n"):
        data = data[:-1]  # `echo value | kvp set K -` stores "value"; --raw keeps it
    return data


def run(args: argparse.Namespace, out: Output) -> int:
    number = one_pool(args)
    key_limit, value_limit = limits(args)
    key = check_key(args, args.key)
    value = read_value(args)
    if args.chunk_size is not None and not args.chunk:
        raise usage("--chunk-size needs --chunk")
    if args.chunk:
        size = value_limit if args.chunk_size is None else args.chunk_size
        if not 4 <= size <= value_limit:
            raise usage(f"--chunk-size is {size}; it must be between 4 and {value_limit}")
        checked(value, "value", len(value), args.unsafe)  # NUL and UTF-8 only
        count = len(store.split_value(value, size))
        checked(
            store.chunk_key(text(key), count - 1).encode(),
            f"key of chunk {count - 1}",
            key_limit,
            args.unsafe,
        )
        with writing(args, number) as pool:
            store.write_chunks(pool, text(key), value, size)
        op = "chunked"
    else:
        checked(value, "value", value_limit, args.unsafe)
        count = 0
        with writing(args, number) as pool:
            op = "add" if pool.set(key, value) else "modify"
    log.info("%s %s in %s (%s)", op, escape(key), POOL_LABELS[number], pool.path)
    if args.json:
        result: Dict[str, Any] = {
            "version": SCHEMA_VERSION,
            "pool": number,
            "pool_name": POOL_LABELS[number],
            "key": text(key),
            "op": op,
        }
        if args.chunk:
            result["chunks"] = count
        out.json(result)
    return EXIT_OK
