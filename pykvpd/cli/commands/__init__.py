"""The ``kvp`` commands: name, module and one-line summary; a module is imported only when run.

Each module has ``add_arguments(parser)`` for its own options, ``run(args, out) -> int``, and
``FORMATS``: which of ``--json``, ``--null`` and ``--raw`` mean something to it (the others are
refused rather than ignored).
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Dict, Tuple

COMMANDS: Dict[str, Tuple[str, str]] = {
    "list": ("list", "list records (default: every pool)"),
    "get": ("get", "print a value (default: first match in pools 0, 3, 1, 2, 4)"),
    "set": ("set", "add or modify a record (default pool: guest)"),
    "delete": ("delete", "delete a record (default pool: guest)"),
    "dump": ("dump", "decode any pool file, damaged or not, and say what is wrong"),
    "watch": ("watch", "print (or --exec) one event per change; fires once at start"),
    "wait": ("wait", "wait until KEY is present (with --value V); exit 1 on timeout"),
    "is-stale": ("is_stale", "exit 0 if the pool was not modified since boot, else 1"),
    "clear": ("clear", "remove every record of a pool (default: guest)"),
    "fsck": ("fsck", "check pools (or FILEs) for damage; --repair fixes what is safe"),
}


def load(name: str) -> ModuleType:
    """The module of command ``name`` (imported now, on first use)."""
    return importlib.import_module(f"{__name__}.{COMMANDS[name][0]}")
