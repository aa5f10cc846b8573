"""Reading the small text files network stacks and resolvers leave on disk, leniently.

GET_IP_INFO looks at many such files (resolver state, DHCP leases, NetworkManager and networkd
profiles) that may be absent, unreadable or half-written; each reader treats all of that as "no
information" rather than a failure, and a runaway file is read only up to a bound.
"""

from __future__ import annotations

from typing import Optional

MAX_TEXT_BYTES = 1 << 20


def read_text(path: str, limit: int = MAX_TEXT_BYTES) -> Optional[str]:
    """Up to ``limit`` characters of ``path``, bad bytes replaced; None when it cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read(limit)
    except OSError:
        return None
