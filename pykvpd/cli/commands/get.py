"""``kvp get``: print the value of a key, first match in the host's pools first (or --join)."""

from __future__ import annotations

import argparse
import logging

from ... import store
from ...store import POOL_LABELS
from ..access import GET_ORDER, first_values, read_image, require_dir
from ..errors import EXIT_NOT_FOUND, EXIT_OK
from ..output import SCHEMA_VERSION, Output, emit_value, escape, text
from ..validate import check_key

log = logging.getLogger("kvp")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("key")
    p.add_argument("--join", action="store_true", help="reassemble KEY.0..N (as Ignition reads)")


def run(args: argparse.Namespace, out: Output) -> int:
    require_dir(args)
    key = check_key(args, args.key)
    for n in args.pools or list(GET_ORDER):
        image = read_image(args, n)
        values = first_values(image)
        chunks = None
        if args.join:
            joined = store.join_chunks(values, text(key))
            if joined is None:
                continue
            value, chunks = joined
        elif text(key) in values:
            value = values[text(key)]
        else:
            continue
        if args.json:
            result = {
                "version": SCHEMA_VERSION,
                "pool": n,
                "pool_name": POOL_LABELS[n],
                "key": text(key),
                "value": text(value),
            }
            if chunks is not None:
                result["chunks"] = chunks
            out.json(result)
        else:
            emit_value(args, out, value)
        return EXIT_OK
    where = "any pool" if not args.pools else ", ".join(POOL_LABELS[n] for n in args.pools)
    if not args.quiet:
        log.error("%s: not found in %s", escape(key), where)
    return EXIT_NOT_FOUND
