"""Loggers that import :mod:`logging` when they first log, not when their module is imported.

The store and ``kvp`` log only when something is wrong (a damaged pool, a recovered journal),
and ``kvp get``/``kvp set`` run in shell loops: importing logging, with threading, traceback,
weakref, string, re and enum behind it, would be a third of such a run (benchmarks/bench_cli.py).
A module writes ``log = LazyLogger(__name__)`` and uses it as the ``logging.Logger`` of
that name. Its first use imports logging and runs the set-up a program gave to
:func:`when_first_used` (``kvp`` installs its ``kvp: message`` handler there). The daemon
configures logging when it starts, so for it nothing changes.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    import logging
    from typing import Any, Callable, Optional

_setup: Optional[Callable[[], None]] = None


def when_first_used(setup: Callable[[], None]) -> None:
    """Run ``setup`` before the first message of a lazy logger, or now if logging is in use.

    "In use" means imported by anyone: then a message could be logged at once, so the set-up
    cannot wait (``kvp watch`` imports modules that log through :mod:`logging` directly).
    """
    global _setup
    if "logging" in sys.modules:
        _setup = None
        setup()
    else:
        _setup = setup


def _real(name: str) -> logging.Logger:
    global _setup
    import logging

    setup, _setup = _setup, None
    if setup is not None:
        setup()
    return logging.getLogger(name)


class LazyLogger:
    """Stands for ``logging.getLogger(name)``; the first attribute asked for imports logging.

    Only names a ``Logger`` has and this class does not (``warning``, ``isEnabledFor``, ...)
    reach ``__getattr__``, so after the first use each call costs one extra lookup.
    """

    __slots__ = ("name", "_logger")

    def __init__(self, name: str) -> None:
        self.name = name
        self._logger: Optional[logging.Logger] = None

    def __getattr__(self, attr: str) -> Any:
        logger = self._logger
        if logger is None:
            logger = self._logger = _real(self.name)
        return getattr(logger, attr)

    def __repr__(self) -> str:
        return f"<LazyLogger {self.name}>"
