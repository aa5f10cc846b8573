"""``kvp list``: every record of the chosen pools, or the cloud-init/azure-init events in them."""

from __future__ import annotations

import argparse
import logging
from typing import Any, Dict, Optional

from ... import store
from ...store import POOL_LABELS
from ..access import ALL_POOLS, read_image, reading, valid_records
from ..errors import EXIT_OK
from ..output import SCHEMA_VERSION, Output, escape, finding_json, table

log = logging.getLogger("kvp")


# fsck kinds of the records (and partial tail) a reader leaves out
LEFT_OUT = ("partial-record", "key-no-nul", "value-no-nul", "invalid-utf8")
FORMATS = ("json", "null", "raw")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--events", action="store_true", help="reassembled cloud-init/azure-init events")


def run(args: argparse.Namespace, out: Output) -> int:
    numbers = args.pools or list(ALL_POOLS)
    with reading(args) as pools:
        directory = pools.directory
        paths = {n: pools.path(n) for n in numbers}
        images = {n: read_image(pools, n) for n in numbers}
        # The store has warned once about each damaged pool; JSON also gets the details.
        damage = {
            n: [f for f in store.check(pools.pool(n)).findings if f.kind in LEFT_OUT]
            for n, image in images.items()
            if image is not None and image.problems and args.json
        }
    if args.events:
        return list_events(args, out, images)
    pools_info, records = [], []
    for n in numbers:
        image = images[n]
        pools_info.append(
            {
                "pool": n,
                "pool_name": POOL_LABELS[n],
                "path": paths[n],
                "exists": image is not None,
                "findings": [finding_json(f) for f in damage.get(n, [])],
            }
        )
        records.extend((n, i, rec) for i, rec in valid_records(image))
    if args.json:
        out.json(
            {
                "version": SCHEMA_VERSION,
                "directory": directory,
                "pools": pools_info,
                "records": [
                    {
                        "pool": n,
                        "pool_name": POOL_LABELS[n],
                        "index": i,
                        "key": rec.text_key,
                        "value": rec.text_value,
                    }
                    for n, i, rec in records
                ],
            }
        )
    elif args.null:
        for n, _i, rec in records:
            out.write(POOL_LABELS[n].encode() + b"\0" + rec.key + b"\0" + rec.value + b"\0")
    elif args.raw:
        for n, _i, rec in records:
            out.write(POOL_LABELS[n].encode() + b"\t" + rec.key + b"\t" + rec.value + b"\n")
    elif records:
        rows = [(POOL_LABELS[n], escape(rec.key), escape(rec.value)) for n, _i, rec in records]
        table(out, rows, ("POOL", "KEY", "VALUE"))
    return EXIT_OK


def list_events(args: argparse.Namespace, out: Output, images: Dict[int, Any]) -> int:
    triples = [(n, i, rec) for n, image in images.items() for i, rec in valid_records(image)]
    found = store.reassemble_events(triples)
    boot = store.boot_time()

    def this_boot(event: store.KvpEvent) -> Optional[bool]:
        inc = event.fields.get("incarnation")
        if boot is None or not isinstance(inc, int):
            return None
        return abs(inc - boot) <= 2  # cloud-init's int(time.time() - uptime) drifts by a second

    if args.json:
        out.json(
            {
                "version": SCHEMA_VERSION,
                "events": [
                    {
                        "source": e.source,
                        "pool": e.pool,
                        "pool_name": POOL_LABELS[e.pool],
                        "key": e.key,
                        "parts": len(e.parts),
                        "complete": e.complete,
                        "this_boot": this_boot(e),
                        "fields": e.fields,
                        "msg": e.msg,
                    }
                    for e in found
                ],
            }
        )
        return EXIT_OK
    for e in found:
        f = e.fields
        kind = f.get("event_type") or f.get("level") or ""
        head = [str(f.get("timestamp") or f.get("ts") or "-"), e.source, str(kind), str(f["name"])]
        if "result" in f:
            head.append(str(f["result"]))
        if "duration" in f:
            head.append(f"{f['duration']}s")
        if len(e.parts) > 1 or not e.complete:
            head.append(f"[{len(e.parts)} parts{'' if e.complete else ', INCOMPLETE'}]")
        if this_boot(e) is False:
            head.append("[previous boot]")
        msg = e.msg.encode("utf-8", "surrogateescape")
        out.line(" ".join(head) + ("  " + escape(msg) if msg else ""))
    return EXIT_OK
