"""``kvp wait``: block until a key is present (with a given value); exit 1 on timeout."""

from __future__ import annotations

import argparse

from ...escaping import escape
from ...store import DEFAULT_POOL_DIR
from ...watch import PoolWatcher, wait_for
from ..access import GET_ORDER
from ..console import log
from ..errors import EXIT_NOT_FOUND, EXIT_OK
from ..output import Output, emit_value, lookup_json, text
from ..validate import check_key, seconds

FORMATS = ("json", "null", "raw")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("key")
    p.add_argument("--value", metavar="V")
    p.add_argument("--timeout", type=seconds, metavar="S", help="give up after S seconds")


def run(args: argparse.Namespace, out: Output) -> int:
    key = text(check_key(args, args.key))
    numbers = args.pools or list(GET_ORDER)
    watcher = PoolWatcher(
        DEFAULT_POOL_DIR if args.dir is None else args.dir,  # inside the image with --root
        numbers,
        lambda k: k == key,
        args.lock_timeout,
        rewrites=False,
        root=args.root,
    )
    with watcher:
        hit = wait_for(watcher, key, args.value, args.timeout)
    if hit is None:
        if args.json:
            out.json(lookup_json(None, key, None))
        elif not args.quiet:
            log.error("timed out after %g s waiting for %s", args.timeout, escape(key))
        return EXIT_NOT_FOUND
    number, value = hit
    if args.json:
        out.json(lookup_json(number, key, value))
    elif not args.quiet:
        emit_value(args, out, value.encode("utf-8"))
    return EXIT_OK
