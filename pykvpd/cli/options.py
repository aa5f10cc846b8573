"""``kvp``'s common options as one table, and what every parsed command line must satisfy.

Two parsers read command lines: ``parser`` (argparse: every form, --help, the error messages)
and ``quickargs`` (the everyday ``get``/``set`` lines, without importing argparse). Both take
the common options from ``COMMON`` and hand what they read to ``finish``, so a line means the
same whichever parser read it.
"""

from __future__ import annotations

from ..store.pooldir import DEFAULT_POOL_DIR
from ..store.records import pool_number
from .errors import usage
from .validate import seconds

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any, Callable, Dict, List, Optional, Tuple

# Kinds of option: what one occurrence does to its value.
VALUE, FLAG, APPEND, COUNT = "value", "flag", "append", "count"


class Option:
    """One common option: its spellings, where its value goes, and its --help line."""

    __slots__ = ("flags", "dest", "kind", "metavar", "help", "group", "type")

    def __init__(
        self,
        flags: Tuple[str, ...],
        dest: str,
        kind: str,
        help: str,
        metavar: Optional[str] = None,
        group: Optional[str] = None,
        type: Optional[Callable[[str], Any]] = None,
    ) -> None:
        self.flags = flags
        self.dest = dest
        self.kind = kind
        self.help = help
        self.metavar = metavar
        self.group = group  # options of one group exclude each other
        self.type = type  # checks and converts a VALUE (raises argparse.ArgumentTypeError)


COMMON = (
    Option(
        ("--dir",), "dir", VALUE, f"pool directory (default {DEFAULT_POOL_DIR})", "DIR", "where"
    ),
    Option(("--root",), "root", VALUE, "offline image: use ROOT/var/lib/hyperv", "ROOT", "where"),
    Option(
        ("-p", "--pool"),
        "pool",
        APPEND,
        "0..4 or external|guest|auto|auto-external|auto-internal; repeat or comma-separate",
        "POOL",
    ),
    Option(("--json",), "json", FLAG, "JSON output (schema in docs/kvp.md)", group="form"),
    Option(("--null",), "null", FLAG, "NUL-terminated fields", group="form"),
    Option(("--raw",), "raw", FLAG, "values exactly as stored, unescaped", group="form"),
    Option(("--unsafe",), "unsafe", FLAG, "allow keys to 511, values to 2047 bytes"),
    Option(
        ("--lock-timeout",), "lock_timeout", VALUE, "give up on a lock after S s", "S", type=seconds
    ),
    Option(("-v", "--verbose"), "verbose", COUNT, "log more (to stderr)"),
    Option(("-q", "--quiet"), "quiet", FLAG, "print only errors"),
)

DEFAULTS: Dict[str, Any] = {
    "dir": None,
    "root": None,
    "pool": [],
    "json": False,
    "null": False,
    "raw": False,
    "unsafe": False,
    "lock_timeout": 20.0,
    "verbose": 0,
    "quiet": False,
}


def finish(args: Any, command: str, module: ModuleType) -> None:
    """Fill in the common options not given, refuse output forms ``command`` has no use for,
    and resolve ``--pool`` into ``args.pools`` (numbers, in order, each once)."""
    for name, default in DEFAULTS.items():
        if not hasattr(args, name):
            setattr(args, name, list(default) if isinstance(default, list) else default)
    if sum(bool(x) for x in (args.json, args.null, args.raw)) > 1:
        raise usage("use only one of --json, --null and --raw")
    for form in ("json", "null", "raw"):
        if getattr(args, form) and form not in module.FORMATS:
            raise usage(f"--{form} does not apply to '{command}'")
    pools: List[int] = []
    for item in args.pool:
        parts = [part.strip() for part in item.split(",")]
        if not all(parts):
            raise usage(f"--pool {item!r} names an empty pool (an unset variable?)")
        try:
            pools.extend(pool_number(part) for part in parts)
        except ValueError as exc:
            raise usage(str(exc)) from None
    args.pools = list(dict.fromkeys(pools))
