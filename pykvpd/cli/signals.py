"""Signal dispositions that hold for one command: SIGTERM unwinds, SIGINT stops a watch."""

from __future__ import annotations

import contextlib
import signal
from typing import Any, Iterator


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def handled(signum: int, handler: Any) -> Iterator[None]:
    """SIGNUM goes to HANDLER inside the block and back to what it was after.

    Outside the main thread (``main()`` called from a test thread) signals cannot be set, and the
    block runs with the dispositions it has.
    """
    try:
        previous = signal.signal(signum, handler)
    except ValueError:
        yield
        return
    try:
        yield
    finally:
        signal.signal(signum, previous)


def sigterm_exits() -> Any:
    """SIGTERM unwinds like an exception (exit 143), so watch kills its running hook first."""
    return handled(signal.SIGTERM, _terminate)


def sigint_stops() -> Any:
    """SIGINT stops the watch (and its running hook) even where it was inherited as ignored.

    A shell without job control starts ``kvp watch ... &`` with SIGINT ignored, so a script's
    ``kill -INT $!`` would do nothing and leave the watch and its hooks running.
    """
    return handled(signal.SIGINT, signal.default_int_handler)
