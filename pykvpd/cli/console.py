"""What ``kvp`` says on stderr: ``kvp: message`` lines, as many as -q and -v let through.

The commands' own messages are written here directly. The store's warnings (a damaged pool, a
recovered journal) come through :mod:`logging`, which ``kvp`` imports only when the store
really logs (``pykvpd.lazylog``: logging is a third of a ``kvp get``); they are shown in the
same form, at the same level.
"""

from __future__ import annotations

import sys

from ..lazylog import when_first_used

ERROR, WARNING, INFO, DEBUG = 40, 30, 20, 10  # logging's numbers, so both channels agree


class Console:
    """The ``kvp: message`` lines of one run, filtered by the level its options set."""

    def __init__(self) -> None:
        self.level = WARNING

    def configure(self, verbose: int, quiet: bool, store_quiet: bool = False) -> None:
        """Set the level (-q: errors only, -v: info, -vv: debug) for this channel and for the
        store's log records; ``store_quiet`` keeps only the store's errors (``dump`` and
        ``fsck`` report damage themselves)."""
        self.level = ERROR if quiet else (DEBUG if verbose > 1 else INFO if verbose else WARNING)
        level = self.level
        store_level = max(level, ERROR) if store_quiet else level

        def route_logging() -> None:
            import logging

            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("kvp: %(message)s"))
            root = logging.getLogger()
            root.handlers[:] = [handler]
            root.setLevel(level)
            logging.getLogger("pykvpd.store").setLevel(store_level)

        when_first_used(route_logging)

    def say(self, level: int, message: str, *args: object) -> None:
        """``kvp: message % args`` on stderr if ``level`` is let through."""
        if level >= self.level:
            sys.stderr.write(f"kvp: {message % args if args else message}\n")
            sys.stderr.flush()

    def error(self, message: str, *args: object) -> None:
        self.say(ERROR, message, *args)

    def warning(self, message: str, *args: object) -> None:
        self.say(WARNING, message, *args)

    def info(self, message: str, *args: object) -> None:
        self.say(INFO, message, *args)


log = Console()
