"""``kvp clear``: remove every record of a pool, or only if it is stale (``--if-stale``)."""

from __future__ import annotations

import argparse

from ... import store
from ..access import one_pool, reading, writing
from ..errors import EXIT_IO, EXIT_OK, CliError
from ..output import Output, pool_json

FORMATS = ("json",)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--if-stale", action="store_true", help="only if not modified since boot")


def run(args: argparse.Namespace, out: Output) -> int:
    number = one_pool(args)
    with reading(args) as pools:
        path, exists = pools.path(number), pools.exists(number)
    result = {"cleared": False, "removed": 0, "stale": None}
    if exists:
        boot = store.boot_time() if args.if_stale else None
        if args.if_stale and boot is None:
            raise CliError("cannot tell the boot time; not clearing", EXIT_IO)
        with writing(args, number) as pool:
            done = store.clear(pool, if_stale_since=boot)
        result = {
            "cleared": done.cleared,
            "removed": done.records if done.cleared else 0,
            "stale": done.stale,
        }
    if args.json:
        out.json(pool_json(number, path, **result))
    elif not args.quiet:
        if result["cleared"]:
            out.line(f"{path}: cleared ({result['removed']} records removed)")
        elif exists:
            out.line(f"{path}: modified since boot; left alone")
        else:
            out.line(f"{path}: missing; nothing to clear")
    return EXIT_OK
