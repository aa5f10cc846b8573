"""Waits for the KVP device node to appear (``--wait-device``) without spinning, and wakes for
signals while it waits.

The node is created by hv_utils, possibly after the daemon started (a restart racing the
device's re-creation, a late module load), and possibly with its directory still missing. The
wait sleeps on inotify watches of the nearest existing directory and on the signal wake-up pipe,
and falls back to polling the path only where inotify is unavailable.
"""

from __future__ import annotations

import logging
import math
import os
import select
import time
from typing import Dict, Optional

from pykvpd.inotify import (
    IN_CREATE,
    IN_DELETE_SELF,
    IN_IGNORED,
    IN_MOVE_SELF,
    IN_MOVED_TO,
    IN_ONLYDIR,
    Inotify,
)

log = logging.getLogger(__name__)

_DIR_EVENTS = IN_CREATE | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
_FALLBACK_POLL_INTERVAL = 0.5  # seconds, only when inotify itself is unavailable


def _deepest_existing_dir(path: str) -> str:
    """The nearest ancestor of ``path`` that exists (``/dev`` while ``/dev/vmbus`` is missing)."""
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.isdir(parent):
        parent = os.path.dirname(parent)
    return parent


def wait_for_device(
    path: str, timeout: Optional[float] = None, wake_fd: Optional[int] = None
) -> bool:
    """True as soon as ``path`` exists, False if ``timeout`` seconds (None: no limit) pass first.

    Sleeps on inotify watches of the nearest existing ancestor directory, moving down as the
    missing directories appear, so the wait costs no CPU. ``wake_fd`` is the signal wake-up pipe
    (``signal.set_wakeup_fd``): a signal that arrives just before the poll starts would not
    interrupt it, so the poll also sleeps on that pipe and Python then runs the handler, which
    may end the wait by raising.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    if os.path.exists(path):
        return True
    try:
        inotify = Inotify()
    except OSError as exc:
        log.debug(
            "inotify unavailable (%s); checking for %s every %s s",
            exc,
            path,
            _FALLBACK_POLL_INTERVAL,
        )
        return _wait_by_polling(path, deadline)
    with inotify:
        return _wait_with_inotify(inotify, path, deadline, wake_fd)


def _remaining(deadline: Optional[float]) -> Optional[float]:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _wait_with_inotify(
    inotify: Inotify, path: str, deadline: Optional[float], wake_fd: Optional[int]
) -> bool:
    watches: Dict[int, str] = {}  # wd -> directory
    poller = select.poll()  # not the request path: select.poll runs signal handlers on EINTR
    poller.register(inotify.fileno(), select.POLLIN)
    if wake_fd is not None:
        poller.register(wake_fd, select.POLLIN)
    while True:
        directory = _deepest_existing_dir(path)
        if directory not in watches.values():
            try:
                watches[inotify.add_watch(directory, _DIR_EVENTS)] = directory
            except OSError as exc:  # e.g. EACCES, or the watch limit (ENOSPC)
                log.debug("cannot watch %s (%s); polling for %s instead", directory, exc, path)
                return _wait_by_polling(path, deadline)
        if os.path.exists(path):  # checked after the watch is in place: no lost creation
            return True
        remaining = _remaining(deadline)
        if remaining == 0.0:
            return False
        poller.poll(None if remaining is None else math.ceil(remaining * 1000))
        if wake_fd is not None:
            drain_pipe(wake_fd)  # the handlers ran; their flags say what the signals asked for
        for event in inotify.read_events():
            if event.mask & IN_IGNORED:  # the directory went away; re-derive the watch
                watches.pop(event.wd, None)


def drain_pipe(fd: int) -> None:
    """Read a non-blocking pipe empty (the signal wake-up pipe: its bytes only wake a poll)."""
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def _wait_by_polling(path: str, deadline: Optional[float]) -> bool:
    while not os.path.exists(path):
        remaining = _remaining(deadline)
        if remaining == 0.0:
            return False
        time.sleep(
            _FALLBACK_POLL_INTERVAL
            if remaining is None
            else min(_FALLBACK_POLL_INTERVAL, remaining)
        )
    return True
