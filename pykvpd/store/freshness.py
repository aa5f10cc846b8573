"""Which files of a pool directory changed since we last read them, told by inotify."""

from __future__ import annotations

import select

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Dict, Optional


class DirWatch:
    """Tells, without reading them, which files of a directory changed since last asked.

    inotify queues an event before a writer's ``write()`` returns, so draining the queue before
    each request cannot miss a completed write (unlike size+mtime, which two same-size writes in
    one timestamp tick leave unchanged). Writes through ``mmap`` are the exception.
    """

    def __init__(self, directory: str) -> None:
        from .. import inotify

        self._ino = inotify
        self._inotify = inotify.Inotify()
        mask = (
            inotify.IN_MODIFY
            | inotify.IN_ATTRIB
            | inotify.IN_CLOSE_WRITE
            | inotify.IN_MOVED_FROM
            | inotify.IN_MOVED_TO
            | inotify.IN_CREATE
            | inotify.IN_DELETE
            | inotify.IN_DELETE_SELF
            | inotify.IN_MOVE_SELF
        )
        self._inotify.add_watch(directory, mask)
        self._poller = select.poll()  # poll(0) is cheaper than a read that fails with EAGAIN
        self._poller.register(self._inotify.fileno(), select.POLLIN)
        self._dirty: set = set()
        self._epoch = 1  # bumped when the queue overflowed: every file may have changed
        self._clean_at: Dict[str, int] = {}

    def fileno(self) -> int:
        return self._inotify.fileno()

    def _drain(self) -> None:
        if not self._poller.poll(0):
            return
        ino = self._ino
        for event in self._inotify.read_events():
            if event.mask & (ino.IN_Q_OVERFLOW | ino.IN_DELETE_SELF | ino.IN_MOVE_SELF):
                self._epoch += 1
            elif event.name:
                self._dirty.add(event.name)

    def changed(self, name: str, other: Optional[str] = None) -> bool:
        """True if ``name`` (or ``other``) may have changed since its last ``mark_clean``."""
        self._drain()
        dirty, epoch, clean_at = self._dirty, self._epoch, self._clean_at
        if name in dirty or clean_at.get(name) != epoch:
            return True
        return other is not None and (other in dirty or clean_at.get(other) != epoch)

    def mark_clean(self, *names: str) -> None:
        """Forget events for these names (with the lock held, after re-reading or writing)."""
        self._drain()
        for name in names:
            self._dirty.discard(name)
            self._clean_at[name] = self._epoch

    def close(self) -> None:
        self._inotify.close()
