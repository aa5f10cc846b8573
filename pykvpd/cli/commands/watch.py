"""``kvp watch``: one event per change of the chosen keys, printed or run as a command (--exec)."""

from __future__ import annotations

import argparse
import fnmatch
from typing import Any, Callable, Dict, Optional, Sequence

from ...watch import OPS, Change, HookRunner, PoolWatcher
from ..access import ALL_POOLS, pool_directory
from ..errors import EXIT_OK, usage
from ..output import SCHEMA_VERSION, Output, escape
from ..validate import count, seconds


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("keys", nargs="*", metavar="KEY", help="keys or glob patterns (default: all)")
    p.add_argument("--op", metavar="OPS", help="only these ops: initial,add,modify,delete")
    p.add_argument("--no-initial", action="store_true", help="skip the events for current state")
    p.add_argument("-n", "--count", type=count, metavar="N", help="exit after N events")
    p.add_argument("--timeout", type=seconds, metavar="S", help="per-run timeout of --exec")
    p.add_argument(
        "--exec",
        nargs=argparse.REMAINDER,
        metavar="CMD",
        help="run CMD ARGS... per event (last option; no shell)",
    )


def key_filter(patterns: Sequence[str]) -> Optional[Callable[[str], bool]]:
    if not patterns:
        return None
    exact = set(patterns)
    globs = [p for p in patterns if any(c in p for c in "*?[")]
    return lambda key: key in exact or any(fnmatch.fnmatchcase(key, g) for g in globs)


def change_json(change: Change) -> Dict[str, Any]:
    return {
        "version": SCHEMA_VERSION,
        "op": change.op,
        "pool": change.pool,
        "pool_name": change.pool_name,
        "key": change.key,
        "value": change.value,
        "old_value": change.old_value,
    }


def run(args: argparse.Namespace, out: Output) -> int:
    ops = set(OPS)
    if args.op:
        ops = {o.strip() for o in args.op.split(",") if o.strip()}
        unknown = ops - set(OPS)
        if unknown:
            raise usage(f"unknown op {sorted(unknown)[0]!r}: use {', '.join(OPS)}")
    if args.exec is not None and not args.exec:
        raise usage("--exec needs a command")
    if args.timeout is not None and args.exec is None:
        raise usage("--timeout is the per-run timeout of --exec")
    runner = HookRunner(args.exec, args.timeout) if args.exec else None
    numbers = args.pools or list(ALL_POOLS)
    emitted = 0

    def emit(change: Change) -> bool:
        """Handle one event; True when --count is reached."""
        nonlocal emitted
        if change.op not in ops:
            return False
        if runner is not None:
            runner.run(change)
        elif args.json:
            out.json(change_json(change))
        elif args.null:
            fields = (change.op, change.pool_name, change.key, change.value or "")
            out.write(b"".join(f.encode("utf-8", "surrogateescape") + b"\0" for f in fields))
        else:
            value = "" if change.value is None else change.value
            shown = value if args.raw else escape(value.encode("utf-8", "surrogateescape"))
            out.line(f"{change.op}\t{change.pool_name}\t{change.key}\t{shown}")
        emitted += 1
        return args.count is not None and emitted >= args.count

    watcher = PoolWatcher(pool_directory(args), numbers, key_filter(args.keys), args.lock_timeout)
    try:
        first = watcher.initial()
        for change in [] if args.no_initial else first:
            if emit(change):
                return EXIT_OK
        while True:
            for change in watcher.changes():
                if emit(change):
                    return EXIT_OK
    finally:
        if runner is not None:
            runner.kill()
        watcher.close()
