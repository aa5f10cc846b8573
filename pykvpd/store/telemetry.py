"""Telemetry events that span several records, reassembled: cloud-init's and azure-init's.

cloud-init splits a long telemetry event over keys ``CLOUD_INIT|...|<uuid>|0..N``, each value a
whole JSON object with ``"msg_i": i``; azure-init repeats one key per 1022-byte chunk.
"""

from __future__ import annotations

import re
from typing import Dict, Iterable, List, Optional, Tuple

from .records import Record

_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


class KvpEvent:
    """One telemetry event, reassembled from one or more records."""

    def __init__(
        self,
        source: str,
        pool: int,
        key: str,
        fields: Optional[Dict[str, object]] = None,
        first_index: int = 0,
    ) -> None:
        self.source = source  # "cloud-init" or "azure-init"
        self.pool = pool
        self.key = key  # the key without the part suffix
        self.fields: Dict[str, object] = dict(fields or {})
        self.msg = ""
        self.parts: List[int] = []  # msg_i of each part found, sorted
        self.first_index = first_index  # record position of the first part (keeps file order)

    @property
    def complete(self) -> bool:
        """All parts from 0 to the highest one seen are present (a lost last part is invisible)."""
        return self.parts == list(range(len(self.parts)))


def _cloud_init_key(key: str, value: str) -> Optional[Tuple[str, Optional[int], Dict[str, object]]]:
    """(base key, part index or None, fields from the key) for a cloud-init event key."""
    parts = key.split("|")
    if len(parts) < 5 or parts[0] != "CLOUD_INIT":
        return None
    index: Optional[int] = None
    if len(parts) >= 6 and parts[-1].isdigit() and '"msg_i"' in value:
        index = int(parts.pop())
    fields: Dict[str, object] = {}
    try:
        fields["incarnation"] = int(parts[1])
    except ValueError:
        fields["incarnation"] = parts[1]
    fields["event_type"] = parts[2]
    fields["uuid"] = parts[-1]
    middle = parts[3:-1]
    if len(middle) >= 2 and _GUID.match(middle[-1]):
        fields["vm_id"] = middle.pop()  # cloud-init >= 25.x puts the VM id before the uuid
    else:
        fields["vm_id"] = None
    fields["name"] = "|".join(middle)
    return "|".join(parts), index, fields


def _azure_init_key(key: str) -> Optional[Dict[str, object]]:
    parts = key.split("|")
    if len(parts) < 5 or not parts[0].startswith("azure-init-"):
        return None
    return {
        "agent": parts[0],
        "vm_id": parts[1],
        "level": parts[2],
        "name": "|".join(parts[3:-1]),
        "span_id": parts[-1],
    }


def reassemble_events(records: Iterable[Tuple[int, int, Record]]) -> List[KvpEvent]:
    """cloud-init and azure-init events from ``(pool, index, record)`` triples, in file order.

    cloud-init parts are joined by ``msg_i`` (the other JSON fields come from part 0); azure-init's
    repeated keys are concatenated in file order. Records of other programs are ignored.
    """
    import json  # only here: most readers of a pool never reassemble events

    events: Dict[Tuple[int, str], KvpEvent] = {}
    pieces: Dict[Tuple[int, str], Dict[int, dict]] = {}
    for pool, index, rec in records:
        if not rec.valid:
            continue
        key, value = rec.text_key, rec.text_value
        parsed = _cloud_init_key(key, value)
        if parsed is not None:
            base, part, fields = parsed
            ident = (pool, base)
            try:
                body = json.loads(value)
                if not isinstance(body, dict):
                    raise ValueError("not an object")
            except ValueError:
                body = {"msg": value}
            part_no = part if part is not None else int(body.get("msg_i", 0) or 0)
            if ident not in events:
                events[ident] = KvpEvent("cloud-init", pool, base, fields, first_index=index)
            pieces.setdefault(ident, {}).setdefault(part_no, body)
            continue
        az = _azure_init_key(key)
        if az is not None:
            ident = (pool, key)
            if ident not in events:
                events[ident] = KvpEvent("azure-init", pool, key, az, first_index=index)
            event = events[ident]
            event.msg += value
            event.parts.append(len(event.parts))
    for ident, parts in pieces.items():
        event = events[ident]
        event.parts = sorted(parts)
        head = parts[event.parts[0]]
        for name, val in head.items():
            if name not in ("msg", "msg_i"):
                event.fields[name] = val
        event.msg = "".join(str(parts[i].get("msg", "")) for i in event.parts)
    return sorted(events.values(), key=lambda e: (e.pool, e.first_index))
