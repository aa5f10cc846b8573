"""What the guest's pool files hold, decoded read-only for transcripts and checks.

Deliberately independent of ``pykvpd.store`` (no locks, no journal): the simulator shows the
bytes on disk as any other reader of ``.kvp_pool_N`` would see them, so a bug in the pool store
cannot hide itself in the simulator's own view.
"""

from __future__ import annotations

import os
from typing import List, Tuple

from pykvpd import protocol as p

RECORD_SIZE = p.MAX_KEY_SIZE + p.MAX_VALUE_SIZE  # 2560


def pool_path(pool_dir: str, pool: int) -> str:
    return os.path.join(pool_dir, f".kvp_pool_{pool}")


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "backslashreplace")


def decode_records(data: bytes) -> List[Tuple[str, str]]:
    """(key, value) of every whole 2560-byte record, each cut at its first NUL."""
    records = []
    for offset in range(0, len(data) - len(data) % RECORD_SIZE, RECORD_SIZE):
        key = data[offset : offset + p.MAX_KEY_SIZE]
        value = data[offset + p.MAX_KEY_SIZE : offset + RECORD_SIZE]
        records.append((_text(key), _text(value)))
    return records


def read_pool(pool_dir: str, pool: int) -> List[Tuple[str, str]]:
    """The records of ``.kvp_pool_<pool>``; an absent file reads as empty."""
    try:
        with open(pool_path(pool_dir, pool), "rb") as handle:
            return decode_records(handle.read())
    except FileNotFoundError:
        return []
