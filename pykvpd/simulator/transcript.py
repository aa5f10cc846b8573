"""The record of a simulated session: what the host, the guest and the kernel each saw.

Entries are printed as they happen (text mode) or collected and dumped as one JSON document
(``--json``), so the demo, scenarios and the serve console share one output format.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from typing import IO, Any, Dict, List, Optional, Sequence, Tuple

from pykvpd.simulator.host import Item

SIDES = {"host": "HOST ", "guest": "GUEST", "kernel": "KERNEL", "check": "CHECK", "info": "     "}


def items_data(items: Sequence[Item]) -> List[Dict[str, Any]]:
    return [item.as_dict() for item in items]


def items_table(items: Sequence[Item]) -> List[str]:
    """Name/Data/Source columns, the way Get-VMKvp-style host tools list them."""
    if not items:
        return ["(no items)"]
    width = max(len("Name"), *(len(i.name) for i in items))
    lines = [f"{'Name':<{width}}  Source  Data"]
    lines += [f"{i.name:<{width}}  {i.source:>6}  {i.data}" for i in items]
    return lines


def records_lines(records: Sequence[Tuple[str, str]]) -> List[str]:
    if not records:
        return ["(empty)"]
    return [f"{key} = {value}" for key, value in records]


class Transcript:
    """Collects entries; in text mode also writes each one to ``out`` immediately."""

    def __init__(self, out: IO[str], as_json: bool = False) -> None:
        self.out = out
        self.as_json = as_json
        self.entries: List[Dict[str, Any]] = []
        self._lock = threading.Lock()
        self._broken = False

    def section(self, title: str) -> None:
        self._add({"side": "section", "text": title}, ["", f"== {title}"])

    def say(self, side: str, text: str, detail: Sequence[str] = (), data: Any = None) -> None:
        """One entry; ``detail`` lines are indented under it, ``data`` goes to JSON only."""
        entry: Dict[str, Any] = {"side": side, "text": text}
        if data is not None:
            entry["data"] = data
        label = SIDES.get(side, side.upper()[:6])
        lines = [f"{label:<6} {text}"] + [f"{'':<6}   {line}" for line in detail]
        self._add(entry, lines)

    def host(self, text: str, detail: Sequence[str] = (), data: Any = None) -> None:
        self.say("host", text, detail, data)

    def guest(self, text: str, detail: Sequence[str] = (), data: Any = None) -> None:
        self.say("guest", text, detail, data)

    def kernel(self, text: str) -> None:
        self.say("kernel", text)

    def _add(self, entry: Dict[str, Any], lines: List[str]) -> None:
        with self._lock:
            self.entries.append(entry)
            if not self.as_json:
                self._write("\n".join(lines) + "\n")

    def _write(self, text: str) -> None:
        """Write and flush; a reader that went away (``| head``) only ends the output."""
        if self._broken:
            return
        try:
            self.out.write(text)
            self.out.flush()
        except BrokenPipeError:
            self._broken = True
            with contextlib.suppress(OSError, ValueError, AttributeError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, self.out.fileno())  # so the interpreter's final flush is quiet
                os.close(devnull)

    def finish(self, result: Optional[Dict[str, Any]] = None) -> None:
        """In JSON mode, write everything as one document."""
        if self.as_json:
            document = dict(result or {})
            document["transcript"] = self.entries
            self._write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
