"""Whether a pool was written during this boot: the boot time, and clearing a stale pool.

A pool file that no one wrote since the machine booted holds what a previous boot (or the image
it was made from) left there.
"""

from __future__ import annotations

import os
import time
from typing import NamedTuple, Optional

from .poolfile import PoolFile
from .records import RECORD_SIZE


def boot_time(proc: str = "/proc") -> Optional[float]:
    """Boot time in epoch seconds: ``btime`` of /proc/stat, else now minus /proc/uptime.

    ``btime`` is rounded down, so a file written during this boot is never older than it.
    """
    try:
        with open(os.path.join(proc, "stat"), "rb") as f:
            for line in f:
                if line.startswith(b"btime "):
                    return float(int(line.split()[1]))
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open(os.path.join(proc, "uptime"), "rb") as f:
            return time.time() - float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class Cleared(NamedTuple):
    """What ``clear`` did: whether it emptied the pool, how many records it held, and (with a
    boot time) whether it was stale."""

    cleared: bool
    records: int
    stale: Optional[bool]


def clear(pool: PoolFile, if_stale_since: Optional[float] = None) -> Cleared:
    """Remove every record of ``pool`` in one change; with ``if_stale_since`` (a boot time) only
    if the file was last modified before it. Decided under the pool's write lock."""
    result = {"cleared": False, "records": 0, "stale": None}

    def edit(data: bytes, st: os.stat_result) -> Optional[bytes]:
        result["records"] = len(data) // RECORD_SIZE
        if if_stale_since is not None:
            result["stale"] = st.st_mtime < if_stale_since
            if not result["stale"]:
                return None
        result["cleared"] = True
        return b""

    pool.transaction(edit)
    return Cleared(bool(result["cleared"]), int(result["records"] or 0), result["stale"])  # type: ignore[arg-type]
