"""What a pool's reader keeps in memory: key -> slot, first-match order, valid-record order.

Values are not kept: they are read from the file on demand, so memory grows with the number and
length of keys, not with the file (a 10,000-record pool is 25 MB of file and well under 2 MB of
index). The index is pure bookkeeping without I/O; ``PoolFile`` loads it from the file and keeps
it right after each of its own changes.

Records are numbered by slot (their position in the file). Of several records with one key, the
one in the lowest slot is the one GET returns and SET or DELETE changes (first match wins, as in
the C daemon). ``plan_delete`` keeps a DELETE to a bounded number of record moves while keeping
the order among the records of every key exactly as it was, so first-match-wins answers stay the
same after any sequence of changes.
"""

from __future__ import annotations

import bisect

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Dict, List, Optional, Set, Tuple

    # One move of a DELETE: the record in slot ``src`` is written to slot ``dst``.
    Move = Tuple[int, int]


class PoolIndex:
    """Keys by slot, the first slot of each key, the later slots of duplicated keys, and the
    slots of records a host cannot be shown."""

    def __init__(self) -> None:
        self.keys: List[Optional[bytes]] = []  # per slot; None: a key no lookup can match
        self.first: Dict[bytes, int] = {}
        self._later: Dict[bytes, List[int]] = {}  # only keys with duplicates, slots ascending
        self.bad: Set[int] = set()  # slots of records with a problem (skipped by ENUMERATE)
        self._shown: Optional[List[int]] = None  # slots ENUMERATE walks, when some are bad

    def __len__(self) -> int:
        return len(self.keys)

    # ----------------------------------------------------------------- building

    def append(self, key: Optional[bytes], valid: bool) -> int:
        """Account for a record added after the last slot; returns its slot."""
        slot = len(self.keys)
        self.keys.append(key)
        if key is not None:
            self._add(key, slot)
        if not valid:
            self.bad.add(slot)
        self._shown = None
        return slot

    def set_valid(self, slot: int) -> None:
        """The record in ``slot`` was rewritten as a valid one."""
        if slot in self.bad:
            self.bad.discard(slot)
            self._shown = None

    def _add(self, key: bytes, slot: int) -> None:
        first = self.first.get(key)
        if first is None:
            self.first[key] = slot
        elif slot < first:
            self.first[key] = slot
            bisect.insort(self._later.setdefault(key, []), first)
        else:
            bisect.insort(self._later.setdefault(key, []), slot)

    def _remove(self, key: bytes, slot: int) -> None:
        later = self._later.get(key)
        if self.first.get(key) == slot:
            if later:
                self.first[key] = later.pop(0)
            else:
                del self.first[key]
        elif later is not None:
            del later[bisect.bisect_left(later, slot)]
        if later is not None and not later:
            del self._later[key]

    def slots_of(self, key: bytes) -> List[int]:
        """Every slot holding ``key``, ascending."""
        first = self.first.get(key)
        return [] if first is None else [first, *self._later.get(key, ())]

    # ----------------------------------------------------------------- reading

    def shown(self, index: int) -> Optional[int]:
        """The slot of the index-th record a host can be shown (ENUMERATE), or None."""
        if not self.bad:
            return index if 0 <= index < len(self.keys) else None
        if self._shown is None:
            bad = self.bad
            self._shown = [s for s in range(len(self.keys)) if s not in bad]
        return self._shown[index] if 0 <= index < len(self._shown) else None

    # ----------------------------------------------------------------- deleting

    def plan_delete(self, slot: int) -> List[Move]:
        """The moves that fill ``slot`` so that the file can shrink by its last record.

        The last record moves into the freed slot, unless its key has other records after the
        freed slot: moving it in front of them would change which of them is found first (now
        or after later DELETEs). Then each of those records moves up into the previous one's
        place instead, the last one last: the order within every key stays as it was. Without
        duplicated keys that is one move (none when the freed slot is the last).
        """
        last = len(self.keys) - 1
        if slot == last:
            return []
        key = self.keys[last]
        between = [] if key is None else [s for s in self.slots_of(key) if slot < s < last]
        chain = [slot, *between]
        return list(zip([*between, last], chain))

    def apply_delete(self, slot: int, moves: List[Move]) -> None:
        """Account for a DELETE of ``slot`` made with ``plan_delete``'s moves."""
        last = len(self.keys) - 1
        gone = self.keys[slot]
        if gone is not None:
            self._remove(gone, slot)
        moved_bad = {dst for src, dst in moves if src in self.bad}
        self.bad.difference_update(dst for _src, dst in moves)
        self.bad.discard(slot)
        self.bad.discard(last)
        self.bad |= moved_bad
        if moves:
            key = self.keys[last]
            if key is not None:  # set-wise, the moved key leaves the last slot for the freed one
                self._remove(key, last)
                self._add(key, slot)
            for src, dst in moves:
                self.keys[dst] = self.keys[src]
        self.keys.pop()
        self._shown = None
