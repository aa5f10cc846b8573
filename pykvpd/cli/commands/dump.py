"""``kvp dump``: decode any pool file, damaged or not, record by record, and say what is wrong."""

from __future__ import annotations

import argparse
import contextlib
import os
import stat
import sys
from typing import Dict, List, Optional

from ... import store
from ...escaping import escape
from ...store import RECORD_SIZE, PoolFile
from ..errors import EXIT_IO, EXIT_OK, CliError
from ..output import SCHEMA_VERSION, Output, finding_json, table, text


def _check_file(name: str) -> None:
    """Exit 3 with what ``name`` is, unless it is a regular file ``dump`` can decode."""
    try:
        st = os.stat(name)
    except FileNotFoundError:
        raise CliError(f"{name}: no such file", EXIT_IO) from None
    except OSError as exc:
        raise CliError(f"{name}: {exc.strerror}", EXIT_IO) from None
    if stat.S_ISDIR(st.st_mode):
        raise CliError(
            f"{name}: is a directory; dump decodes one pool file "
            f"(try 'kvp --dir {name} list' or 'kvp --dir {name} fsck')",
            EXIT_IO,
        )
    if not stat.S_ISREG(st.st_mode):
        kind = "character device" if stat.S_ISCHR(st.st_mode) else "special file"
        raise CliError(f"{name}: is a {kind}, not a pool file (use - to read stdin)", EXIT_IO)


FORMATS = ("json",)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="a pool file, or - for stdin")


def run(args: argparse.Namespace, out: Output) -> int:
    if args.file == "-":
        data, name = sys.stdin.buffer.read(), "<stdin>"
    else:
        name = args.file
        _check_file(name)
        pool = PoolFile(name, writable=False, lock_timeout=args.lock_timeout)
        with contextlib.closing(pool):
            data = pool.raw()
    inspection = store.inspect(data)
    image, findings = inspection.image, inspection.findings
    by_index: Dict[Optional[int], List[store.Finding]] = {}
    for f in findings:
        by_index.setdefault(f.index, []).append(f)
    if args.json:
        out.json(
            {
                "version": SCHEMA_VERSION,
                "path": name,
                "size": inspection.size,
                "records": [
                    {
                        "index": i,
                        "offset": i * RECORD_SIZE,
                        "key": text(rec.key),
                        "value": text(rec.value),
                        "valid": rec.valid,
                        "findings": [finding_json(f) for f in by_index.get(i, [])],
                    }
                    for i, rec in enumerate(image.records)
                ],
                "trailing": (
                    {"offset": len(image.records) * RECORD_SIZE, "length": len(image.trailing)}
                    if image.trailing
                    else None
                ),
                "findings": [finding_json(f) for f in findings],
            }
        )
        return EXIT_OK
    out.line(
        f"{name}: {inspection.size} bytes, {len(image.records)} records"
        + (f", {len(image.trailing)} trailing bytes" if image.trailing else "")
        + f", {len(findings)} problem{'s' if len(findings) != 1 else ''}"
    )
    rows = []
    for i, rec in enumerate(image.records):
        rows.append((str(i), str(i * RECORD_SIZE), escape(rec.key), escape(rec.value)))
        for f in by_index.get(i, []):
            rows.append(("", "", f"! {f.kind}", f.message))
    if rows:
        table(out, rows, ("#", "OFFSET", "KEY", "VALUE"))
    for f in by_index.get(None, []):
        out.line(f"! {f.kind}: {f.message}")
    return EXIT_OK
