"""``kvp fsck``: check pools (or any files) for damage; ``--repair`` fixes what is safe."""

from __future__ import annotations

import argparse
import contextlib
import os
from typing import Any, Dict, Optional

from ... import store
from ...store import POOL_LABELS, PoolFile
from ..access import ALL_POOLS, reading
from ..errors import EXIT_IO, EXIT_NOT_FOUND, EXIT_OK, CliError, usage
from ..output import SCHEMA_VERSION, Output, finding_json

FORMATS = ("json",)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="*", metavar="FILE")
    p.add_argument("--repair", action="store_true")


def run(args: argparse.Namespace, out: Output) -> int:
    if args.files and args.pools:
        raise usage("give either FILEs or --pool, not both")
    results = []
    if args.files:
        for path in args.files:
            if not os.path.exists(path):
                raise CliError(f"{path}: no such file", EXIT_IO)
            pool = PoolFile(path, writable=args.repair, lock_timeout=args.lock_timeout)
            with contextlib.closing(pool):
                results.append(fsck_one(args, None, pool))
    else:
        with reading(args, writable=args.repair) as pools:
            for number in args.pools or list(ALL_POOLS):
                if pools.exists(number):
                    results.append(fsck_one(args, number, pools.pool(number)))
                else:
                    results.append(_result(number, pools.path(number), exists=False))
    left = 0
    for result in results:
        left += len(result.pop("remaining"))
        if not args.json:
            print_fsck(out, result, args.repair)
    if args.json:
        out.json({"version": SCHEMA_VERSION, "clean": left == 0, "files": results})
    return EXIT_OK if left == 0 else EXIT_NOT_FOUND


def _result(number: Optional[int], path: str, exists: bool) -> Dict[str, Any]:
    return {
        "pool": number,
        "pool_name": POOL_LABELS[number] if number is not None else None,
        "path": path,
        "exists": exists,
        "record_count": 0,
        "findings": [],
        "repaired": [],
        "backup": None,
        "remaining": [],
    }


def fsck_one(args: argparse.Namespace, number: Optional[int], pool: PoolFile) -> Dict[str, Any]:
    """Check (or --repair) one existing pool file; its JSON result plus what remains wrong."""
    result = _result(number, pool.path, exists=True)
    if args.repair:
        try:
            pool.ensure_exists()  # opens it read-write
        except PermissionError:
            raise CliError(
                f"{pool.path}: permission denied; repairing needs root (try sudo)", EXIT_IO
            ) from None
        report = store.repair(pool)
    else:
        report = store.check(pool)
    result["backup"] = report.backup
    result["repaired"] = [finding_json(f) for f in report.repaired]
    result["record_count"] = report.records
    result["findings"] = [finding_json(f) for f in report.findings]
    result["remaining"] = report.remaining()
    return result


def print_fsck(out: Output, result: Dict[str, Any], repair: bool) -> None:
    label = result["path"]
    if not result["exists"]:
        out.line(f"{label}: missing")
        return
    findings = result["findings"]
    state = "clean" if not findings else f"{len(findings)} problem(s)"
    out.line(f"{label}: {result['record_count']} records, {state}")
    repaired = {(f["kind"], f["index"]) for f in result["repaired"]}
    for f in findings:
        where = f"record {f['index']}" if f["index"] is not None else f"offset {f['offset']}"
        if (f["kind"], f["index"]) in repaired:
            note = f"  [{store.REPAIRS[f['kind']]}]"
        elif f["repairable"] and not repair:
            note = "  [--repair fixes this]"
        elif not f["repairable"]:
            note = "  [report only]"
        else:
            note = ""
        out.line(f"  {where}: {f['kind']}: {f['message']}{note}")
    if result["backup"]:
        out.line(f"  original saved as {result['backup']}")
