"""``kvp fsck``: check pools (or any files) for damage; ``--repair`` fixes what is safe."""

from __future__ import annotations

import argparse
import contextlib
import os
from typing import Any, Dict, List, Optional, Tuple

from ... import store
from ...store import POOL_LABELS, PoolFile, pool_filename
from ..access import ALL_POOLS, require_dir
from ..errors import EXIT_IO, EXIT_NOT_FOUND, EXIT_OK, CliError, usage
from ..output import SCHEMA_VERSION, Output, finding_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="*", metavar="FILE")
    p.add_argument("--repair", action="store_true")


def run(args: argparse.Namespace, out: Output) -> int:
    targets: List[Tuple[Optional[int], str]]
    if args.files:
        if args.pools:
            raise usage("give either FILEs or --pool, not both")
        targets = [(None, path) for path in args.files]
    else:
        directory = require_dir(args)
        numbers = args.pools or list(ALL_POOLS)
        targets = [(n, os.path.join(directory, pool_filename(n))) for n in numbers]
    results, left = [], 0
    for number, path in targets:
        result = fsck_one(args, number, path)
        results.append(result)
        left += len(result["remaining"])
        if not args.json:
            print_fsck(out, result, args.repair)
    if args.json:
        out.json(
            {
                "version": SCHEMA_VERSION,
                "clean": left == 0,
                "files": [{k: v for k, v in r.items() if k != "remaining"} for r in results],
            }
        )
    return EXIT_OK if left == 0 else EXIT_NOT_FOUND


def fsck_one(args: argparse.Namespace, number: Optional[int], path: str) -> Dict[str, Any]:
    result: Dict[str, Any] = {
        "pool": number,
        "pool_name": POOL_LABELS[number] if number is not None else None,
        "path": path,
        "exists": os.path.exists(path),
        "records": 0,
        "findings": [],
        "repaired": [],
        "backup": None,
        "remaining": [],
    }
    if not result["exists"]:
        if number is None:
            raise CliError(f"{path}: no such file", EXIT_IO)
        return result
    if args.repair:
        if not os.access(path, os.W_OK) or not os.access(os.path.dirname(path) or ".", os.W_OK):
            raise CliError(f"{path}: permission denied; repairing needs root (try sudo)", EXIT_IO)
        pool = PoolFile(path, writable=True, lock_timeout=args.lock_timeout)
        with contextlib.closing(pool):
            report = store.repair(pool)
    else:
        pool = PoolFile(path, writable=False, lock_timeout=args.lock_timeout)
        with contextlib.closing(pool):
            report = store.check(pool)
    findings = report.findings
    result["backup"] = report.backup
    result["repaired"] = [finding_json(f) for f in report.repaired]
    result["records"] = report.records
    result["findings"] = [finding_json(f) for f in findings]
    result["remaining"] = report.remaining()
    return result


def print_fsck(out: Output, result: Dict[str, Any], repair: bool) -> None:
    label = result["path"]
    if not result["exists"]:
        out.line(f"{label}: missing")
        return
    findings = result["findings"]
    state = "clean" if not findings else f"{len(findings)} problem(s)"
    out.line(f"{label}: {result['records']} records, {state}")
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
