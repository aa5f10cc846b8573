"""``kvp get``: print the value of a key, first match in the host's pools first (or --join)."""

from __future__ import annotations

from ... import store
from ...escaping import escape
from ...store import POOL_LABELS
from ..access import GET_ORDER, first_values, read_image, reading
from ..console import log
from ..errors import EXIT_NOT_FOUND, EXIT_OK
from ..output import Output, emit_value, lookup_json, text
from ..validate import check_key

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

FORMATS = ("json", "null", "raw")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("key")
    p.add_argument("--join", action="store_true", help="reassemble KEY.0..N (as Ignition reads)")


def run(args: argparse.Namespace, out: Output) -> int:
    key = check_key(args, args.key)
    numbers = args.pools or list(GET_ORDER)
    missed = []  # the pools searched in vain, for the hint that KEY.0, KEY.1, ... exist
    with reading(args) as pools:
        for n in numbers:
            values = first_values(read_image(pools, n))
            chunks = None
            if args.join:
                joined = store.join_chunks(values, text(key))
                if joined is None:
                    continue
                value, chunks = joined
            elif text(key) in values:
                value = values[text(key)]
            else:
                missed.append(values)
                continue
            if args.json:
                result = lookup_json(n, text(key), text(value))
                if chunks is not None:
                    result["chunks"] = chunks
                out.json(result)
            else:
                emit_value(args, out, value)
            return EXIT_OK
    if args.json:
        out.json(lookup_json(None, text(key), None))
    elif not args.quiet:
        where = "any pool" if not args.pools else ", ".join(POOL_LABELS[n] for n in args.pools)
        chunked = any(store.chunk_key(text(key), 0) in values for values in missed)
        hint = (
            f" ({escape(key)}.0, .1, ... exist: --join reads them as one value)" if chunked else ""
        )
        log.error("%s: not found in %s%s", escape(key), where, hint)
    return EXIT_NOT_FOUND
