"""``kvp watch``: one event per change of the chosen keys, printed or run as a command (--exec)."""

from __future__ import annotations

import argparse
import os
import time
from typing import Any, Callable, Dict, Optional

from ...escaping import escape
from ...hooks import HookError, HookRunner, resolve_command
from ...store import DEFAULT_POOL_DIR, POOL_LABELS
from ...watch import OPS, Change, PoolWatcher, absent_initial, key_filter
from ..access import ALL_POOLS
from ..console import log
from ..errors import EXIT_NOT_FOUND, EXIT_OK, CliError, usage
from ..output import SCHEMA_VERSION, Output
from ..signals import sigint_stops, sigterm_exits
from ..validate import count, run_limit, seconds

EXIT_HOOK_FAILED = 4  # --exit-on-failure: a run of the --exec command failed


FORMATS = ("json", "null", "raw")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("keys", nargs="*", metavar="KEY", help="keys or glob patterns (default: all)")
    p.add_argument("--op", metavar="OPS", help="only these ops: initial,add,modify,delete")
    p.add_argument("--no-initial", action="store_true", help="skip the events for the start state")
    p.add_argument(
        "--changes-only",
        action="store_true",
        help="no event when the host re-writes a key with the value it has",
    )
    p.add_argument("-n", "--count", type=count, metavar="N", help="exit after N events")
    p.add_argument(
        "--timeout", type=seconds, metavar="S", help="exit 1 after S seconds in all (as wait)"
    )
    p.add_argument(
        "--hook-timeout", type=run_limit, metavar="S", help="stop a run of --exec after S seconds"
    )
    p.add_argument(
        "--exit-on-failure", action="store_true", help="exit 4 when a run of --exec fails"
    )
    p.add_argument(
        "--exec",
        nargs=argparse.REMAINDER,
        metavar="CMD",
        help="run CMD ARGS... per event (last option; no shell)",
    )


def change_json(change: Change) -> Dict[str, Any]:
    return {
        "version": SCHEMA_VERSION,
        "op": change.op,
        "pool": change.pool,
        "pool_name": change.pool_name or None,
        "key": change.key,
        "value": change.value,
        "old_value": change.old_value,
    }


def change_line(change: Change, raw: bool) -> str:
    """``OP<TAB>POOL<TAB>KEY<TAB>VALUE``: the key always escaped (as ``list`` does), so a
    host-supplied key holding a TAB or newline cannot forge fields or event lines."""
    value = "" if change.value is None else change.value
    key = escape(change.key)
    shown = value if raw else escape(value)
    return f"{change.op}\t{change.pool_name}\t{key}\t{shown}"


def _checked(args: argparse.Namespace) -> set:
    """The ops to report; usage errors for option combinations that cannot work."""
    ops = set(OPS)
    if args.op:
        ops = {o.strip() for o in args.op.split(",") if o.strip()}
        unknown = ops - set(OPS)
        if unknown:
            raise usage(f"unknown op {sorted(unknown)[0]!r}: use {', '.join(OPS)}")
    if args.exec is None:
        if args.hook_timeout is not None:
            raise usage("--hook-timeout limits each run of --exec; there is no --exec")
        if args.exit_on_failure:
            raise usage("--exit-on-failure needs --exec")
    elif not args.exec:
        raise usage("--exec needs a command")
    return ops


class TimedOut(Exception):
    """--timeout passed (exit 1)."""


def run(args: argparse.Namespace, out: Output) -> int:
    ops = _checked(args)
    runner = None
    if args.exec:
        try:
            program = resolve_command(args.exec[0])
        except HookError as exc:
            raise usage(str(exc)) from None
        runner = HookRunner([program, *args.exec[1:]], args.hook_timeout)
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    numbers = args.pools or list(ALL_POOLS)
    emitted = 0

    def left() -> Optional[float]:
        if deadline is None:
            return None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimedOut()
        return remaining

    def emit(change: Change) -> bool:
        """Handle one event; True when --count is reached."""
        nonlocal emitted
        if change.op not in ops:
            return False
        if runner is not None:
            status = runner.run(change, left())
            if status is None and deadline is not None and time.monotonic() >= deadline:
                raise TimedOut()
            if status != 0 and args.exit_on_failure:
                what = "was stopped" if status is None else f"failed (status {status})"
                raise CliError(f"--exit-on-failure: {args.exec[0]} {what}", EXIT_HOOK_FAILED)
        elif args.json:
            out.json(change_json(change))
        elif args.null:
            fields = (change.op, change.pool_name, change.key, change.value or "")
            out.write(b"".join(f.encode("utf-8", "surrogateescape") + b"\0" for f in fields))
        else:
            out.line(change_line(change, args.raw))
        emitted += 1
        return args.count is not None and emitted >= args.count

    watcher = PoolWatcher(
        DEFAULT_POOL_DIR if args.dir is None else args.dir,  # inside the image with --root
        numbers,
        key_filter(args.keys),
        args.lock_timeout,
        rewrites=not args.changes_only,
        root=args.root,
    )
    try:
        with sigterm_exits(), sigint_stops():  # both stop a running hook too
            return _follow(args, watcher, emit, left)
    except TimedOut:
        if not args.quiet:
            log.error("timed out after %g s", args.timeout)
        return EXIT_NOT_FOUND
    finally:
        watcher.close()


def _follow(
    args: argparse.Namespace,
    watcher: PoolWatcher,
    emit: Callable[[Change], bool],
    left: Callable[[], Optional[float]],
) -> int:
    """The start events, then the changes, until --count is reached (or an exception)."""
    first = watcher.initial()
    first += absent_initial(args.keys, first)
    names = ", ".join(POOL_LABELS[n] for n in watcher.pools)
    armed = f"watching {' '.join(args.keys) or 'every key'} in {names}"
    log.info("%s", armed)
    if os.environ.get("NOTIFY_SOCKET"):  # Type=notify (kvp-watch@.service): armed now,
        from ...service import Notifier  # so a host write right after start is not lost

        Notifier().ready(armed)
    for change in [] if args.no_initial else first:
        if emit(change):
            return EXIT_OK
    while True:
        for change in watcher.changes(left()):
            if emit(change):
                return EXIT_OK
