"""``kvp`` output: escaping for text lines, tables, values, and the ``--json`` shapes."""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any, Dict, List, Optional, Tuple

SCHEMA_VERSION = 2  # 2: records always a list, findings objects, get/wait answer when not found


def text(data: bytes) -> str:
    """Stored bytes as JSON-safe text (invalid UTF-8 replaced)."""
    return data.decode("utf-8", "replace")


class Output:
    """stdout as bytes; every write is flushed, so watch output reaches pipes at once."""

    def __init__(self) -> None:
        self.stream = sys.stdout.buffer

    def write(self, data: bytes) -> None:
        self.stream.write(data)
        self.stream.flush()

    def line(self, line: str) -> None:
        self.write(line.encode("utf-8", "surrogateescape") + b"\n")

    def json(self, obj: object) -> None:
        self.line(json_line(obj))


def json_line(obj: object) -> str:
    """One JSON document on one line, non-ASCII kept as is."""
    import json  # only when JSON is printed: kvp's start-up cost is measured (bench_cli.py)

    return json.dumps(obj, ensure_ascii=False, sort_keys=False)


def table(out: Output, rows: List[Tuple[str, ...]], header: Tuple[str, ...]) -> None:
    """Aligned columns (each at most 48 wide) with the last one left as it is."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    widths = [min(w, 48) for w in widths]
    for row in [header, *rows]:
        cells = [c.ljust(w) for c, w in zip(row, widths)] + [row[-1]]
        out.line("  ".join(cells).rstrip())


def emit_value(args: argparse.Namespace, out: Output, value: bytes) -> None:
    """A value as ``get``/``wait`` print it: a line, NUL-terminated, or exactly as stored."""
    if args.raw:
        out.write(value)
    elif args.null:
        out.write(value + b"\0")
    else:
        out.write(value + b"\n")


def pool_json(number: int, path: str, **fields: Any) -> Dict[str, Any]:
    """The JSON result of a command about one pool file (``clear``, ``is-stale``)."""
    from ..store import POOL_LABELS

    return {
        "version": SCHEMA_VERSION,
        "pool": number,
        "pool_name": POOL_LABELS[number],
        "path": path,
        **fields,
    }


def lookup_json(pool: Optional[int], key: str, value: Optional[str]) -> Dict[str, Any]:
    """``get``/``wait --json``: the value and its pool, or ``found: false`` and nulls."""
    from ..store import POOL_LABELS

    return {
        "version": SCHEMA_VERSION,
        "found": value is not None,
        "pool": pool,
        "pool_name": None if pool is None else POOL_LABELS[pool],
        "key": key,
        "value": value,
    }


def finding_json(f: Any) -> Dict[str, Any]:
    """An fsck finding (``events.Finding``) as ``dump``/``fsck`` print it with ``--json``."""
    return {
        "kind": f.kind,
        "index": f.index,
        "offset": f.offset,
        "message": f.message,
        "repairable": f.repairable,
    }
