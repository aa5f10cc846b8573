"""Listening unix sockets at a path: the fake kernel's device and ``--serve``'s control socket.

A socket file left by an earlier run (killed before it could clean up) would make ``bind`` fail
with EADDRINUSE, so a stale one is replaced. The listener has a short accept timeout: the accept
loops poll it to notice that they should stop.
"""

from __future__ import annotations

import os
import socket


def listen_unix(path: str, kind: int, backlog: int, accept_timeout: float) -> socket.socket:
    """A unix socket of ``kind`` (SOCK_SEQPACKET, SOCK_STREAM) bound to ``path`` and listening."""
    if os.path.exists(path):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, kind)
    try:
        listener.bind(path)
        listener.listen(backlog)
    except OSError:
        listener.close()
        raise
    listener.settimeout(accept_timeout)
    return listener
