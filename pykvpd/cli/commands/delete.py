"""``kvp delete``: remove a record, or a key with all its chunks KEY.0..N (--chunk)."""

from __future__ import annotations

import argparse

from ... import store
from ...escaping import escape
from ...store import POOL_LABELS
from ..access import one_pool, reading, writing
from ..console import log
from ..errors import EXIT_NOT_FOUND, EXIT_OK
from ..output import SCHEMA_VERSION, Output, text
from ..validate import check_key

FORMATS = ("json",)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("key")
    p.add_argument("--chunk", action="store_true", help="also delete KEY.0..N")


def run(args: argparse.Namespace, out: Output) -> int:
    number = one_pool(args)
    key = check_key(args, args.key)
    with reading(args) as pools:
        exists = pools.exists(number)
    found = 0
    if exists:
        with writing(args, number) as pool:
            if args.chunk:
                found = store.delete_chunked(pool, text(key))
            else:
                found = 1 if pool.delete(key) else 0
    if args.json:
        out.json(
            {
                "version": SCHEMA_VERSION,
                "pool": number,
                "pool_name": POOL_LABELS[number],
                "key": text(key),
                "deleted": found,
            }
        )
    if not found:
        if not args.quiet and not args.json:  # the JSON answer says it
            log.error("%s: not found in %s", escape(key), POOL_LABELS[number])
        return EXIT_NOT_FOUND
    return EXIT_OK
