"""Turn pool-file changes into key events (inotify, no polling) and run commands on them.

Semantics follow ``xenstore-watch``: a watch reports the current state once when it starts, then
one event per key that was added, modified or deleted between two successive reads of a pool.
Every read is taken under the pool's shared lock after inotify said the file changed, so it sees
a whole state of the file, never half a write. Changes faster than a read coalesce per key (two
quick SETs of one key are one ``modify`` with the last value), as xenstore watches do; a change
that is undone before the read is not reported. Nothing is reported when nothing changed, with
one exception the daemon makes possible: a host SET that stores the value a key already has is a
``modify`` (old value = new value), read from the daemon's host-write log (``hostwrites``), so a
host trigger such as ``PatchNow=1`` fires each time it is sent. ``rewrites=False`` turns that off.

The directory is watched rather than the files, so a pool file created, deleted or replaced by
rename (Ignition rewrites the pools) is followed; a missing directory is waited for.

The directory is opened once through the store (``PoolDir``: with ``root`` resolved inside the
image, never outside it), and inotify watches that open directory by its ``/proc/self/fd`` path,
so the watch, the pool reads and the host-write log all see the very directory the store
resolved; joining the path again would follow a symlinked component (``IMG/var -> /var``) out
of the image. A pool file that is a symlink, FIFO or other non-regular file is refused with the
store's message naming it (a PoolError, which ``kvp`` reports with exit 3), not retried.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
import select
import stat
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from . import inotify
from .hostwrites import LOG_NAME, HostWrite, read_log
from .store import POOL_LABELS, PoolDir, PoolDirMissing, PoolError, PoolFile, pool_filename

log = logging.getLogger(__name__)

OPS = ("initial", "add", "modify", "delete")

_DIR_MASK = (
    inotify.IN_MODIFY
    | inotify.IN_CLOSE_WRITE
    | inotify.IN_CREATE
    | inotify.IN_DELETE
    | inotify.IN_MOVED_FROM
    | inotify.IN_MOVED_TO
    | inotify.IN_DELETE_SELF
    | inotify.IN_MOVE_SELF
    | inotify.IN_ONLYDIR
)
_PARENT_MASK = inotify.IN_CREATE | inotify.IN_MOVED_TO | inotify.IN_ONLYDIR
_GONE = inotify.IN_IGNORED | inotify.IN_DELETE_SELF | inotify.IN_MOVE_SELF | inotify.IN_UNMOUNT
_RETRY_SECONDS = 1.0  # after a lock timeout or read error: try that pool again this much later

KeyFilter = Callable[[str], bool]


@dataclass(frozen=True)
class Change:
    """One event: ``value`` is None for ``delete``; ``old_value`` is None for initial/add.

    An ``initial`` event for a watched key that is absent has no pool and no value. A host
    re-writing a key with its current value is a ``modify`` whose ``old_value`` equals ``value``.
    """

    op: str
    pool: Optional[int]
    key: str
    value: Optional[str]
    old_value: Optional[str] = None

    @property
    def pool_name(self) -> str:
        return "" if self.pool is None else POOL_LABELS[self.pool]


def pool_state(pool: PoolFile) -> Dict[str, str]:
    """Key -> value of a pool's valid records, first occurrence of a key (as GET sees it)."""
    state: Dict[str, str] = {}
    for rec in pool.valid_records():
        state.setdefault(rec.text_key, rec.text_value)
    return state


def matches(key: str, pattern: str) -> bool:
    """A KEY argument of ``kvp watch``: the key itself, or a glob if it has ``*?[``."""
    if key == pattern:
        return True
    return any(c in pattern for c in "*?[") and fnmatch.fnmatchcase(key, pattern)


def key_filter(patterns: Sequence[str]) -> Optional[KeyFilter]:
    """A filter for PoolWatcher from KEY arguments; None (every key) without any."""
    if not patterns:
        return None
    wanted = list(patterns)
    return lambda key: any(matches(key, p) for p in wanted)


def absent_initial(patterns: Sequence[str], initial: Sequence[Change]) -> List[Change]:
    """One pool-less, value-less ``initial`` event per KEY argument that no present key matches.

    xenstore-watch fires once at start whatever the state; a hook told "PatchNow is absent" at
    start can act on that (e.g. clean up after a trigger removed while nobody watched). Without
    KEY arguments the pattern is ``*``, so an empty set of pools also fires once.
    """
    return [
        Change("initial", None, pattern, None)
        for pattern in (list(patterns) or ["*"])
        if not any(matches(c.key, pattern) for c in initial)
    ]


def diff(pool: int, old: Dict[str, str], new: Dict[str, str]) -> List[Change]:
    """Deletes (in old file order), then adds and modifies (in new file order)."""
    changes = [Change("delete", pool, k, None, v) for k, v in old.items() if k not in new]
    for key, value in new.items():
        if key not in old:
            changes.append(Change("add", pool, key, value))
        elif old[key] != value:
            changes.append(Change("modify", pool, key, value, old[key]))
    return changes


class PoolWatcher:
    """Follows the chosen pools of one directory and reports changes of the matching keys."""

    def __init__(
        self,
        directory: str,
        pools: Iterable[int],
        match: Optional[KeyFilter] = None,
        lock_timeout: float = 20.0,
        rewrites: bool = True,
        root: Optional[str] = None,
    ) -> None:
        """``rewrites``: also report host SETs that stored the value a key already had (from
        the daemon's host-write log); False reports changes of value only. ``root``: a disk
        image; ``directory`` is then a path inside it and nothing outside it is watched or read
        (``self.directory`` names it as ``root/directory`` in messages)."""
        self.pools = list(pools)
        self._root = root
        self._rel = directory
        self._dir = PoolDir(directory, root=root, writable=False, lock_timeout=lock_timeout)
        self.directory = self._dir.directory
        self._match = match or (lambda key: True)
        self._names = {pool_filename(n): n for n in self.pools}
        self._files: Dict[int, PoolFile] = {n: self._dir.pool(n) for n in self.pools}
        # The store's handle of the open directory, shared by every pool file of it.
        self._opened = self._dir.pool(self.pools[0] if self.pools else 0).directory
        self._ino = inotify.Inotify()
        self._wd: Optional[int] = None
        self._parent_wd: Optional[int] = None
        self._state: Dict[int, Dict[str, str]] = {n: {} for n in self.pools}
        self._dirty: Set[int] = set(self.pools)
        self._retry_at: Optional[float] = None
        self._unreadable: Dict[int, str] = {}  # pool -> why it cannot be read (said once)
        self._rewrites = rewrites
        self._log_dirty = False
        self._log_seen = 0
        self._rewritten: Dict[int, Dict[str, None]] = {n: {} for n in self.pools}  # ordered set
        self._arm()  # watch first, read second: no change between the two is missed
        if rewrites:
            logged = self._logged()
            self._log_seen = logged[-1].seq if logged else 0  # only writes from now on count

    # ----------------------------------------------------------------- inotify plumbing

    def fileno(self) -> int:
        return self._ino.fileno()

    def _arm(self) -> None:
        """Watch the directory, or its parent until the directory appears.

        Both are opened through the store (inside the image with ``root``) and watched by
        their descriptor's ``/proc/self/fd`` path: inotify then holds the inode the store
        resolved, and a symlink on the way is never followed by a second lookup.
        """
        self._opened.close()  # (re)open: the directory may have been replaced or created
        try:
            self._wd = self._ino.add_watch(f"/proc/self/fd/{self._opened.fd()}", _DIR_MASK)
        except PoolDirMissing:
            self._wd = None
        except OSError as exc:  # the store's PoolErrors (not allowed, not a directory) pass
            if isinstance(exc, PoolError):
                raise
            raise PoolError(f"{self.directory}: cannot watch: {exc.strerror}") from None
        if self._wd is not None:
            if self._parent_wd is not None:
                self._forget(self._parent_wd)
                self._parent_wd = None
            return
        self._parent_wd = self._watch_parent()
        log.info("%s does not exist yet; waiting for it", self.directory)
        # It may have appeared between the two watches.
        try:
            self._opened.fd()
        except PoolDirMissing:
            return
        self._arm()

    def _watch_parent(self) -> int:
        """A watch on the missing directory's parent (resolved as the directory would be)."""
        rel = os.path.normpath(self._rel)
        parent_rel = os.path.dirname(rel if self._root is not None else os.path.abspath(rel))
        parent = PoolDir(parent_rel or "/", root=self._root, writable=False)
        try:
            fd = parent.pool(0).directory.fd()
            return self._ino.add_watch(f"/proc/self/fd/{fd}", _PARENT_MASK)
        except OSError as exc:
            why = str(exc) if isinstance(exc, PoolError) else f"{parent.directory}: {exc.strerror}"
            inside = "" if self._root is None else " (symlinks are resolved inside the image)"
            raise PoolError(
                f"{self.directory}: no such directory, and cannot watch its parent: {why}{inside}"
            ) from None
        finally:
            parent.close()  # the watch holds the inode; the descriptor is not needed

    def _forget(self, wd: int) -> None:
        with contextlib.suppress(OSError):  # already gone (removed with the directory)
            self._ino.rm_watch(wd)

    def _handle(self, events: Sequence[inotify.Event]) -> None:
        base = os.path.basename(os.path.normpath(self.directory))
        for event in events:
            if event.mask & inotify.IN_Q_OVERFLOW:
                self._dirty.update(self.pools)
            elif event.wd == self._wd and self._wd is not None:
                if event.mask & _GONE:
                    if not event.mask & inotify.IN_IGNORED:
                        self._forget(self._wd)
                    self._wd = None
                    self._dirty.update(self.pools)
                    self._log_dirty = self._rewrites
                    self._arm()
                elif event.name in self._names:
                    self._dirty.add(self._names[event.name])
                elif event.name == LOG_NAME:
                    self._log_dirty = self._rewrites
            elif event.wd == self._parent_wd and event.name == base:
                self._arm()
                self._dirty.update(self.pools)
                self._log_dirty = self._rewrites

    # ----------------------------------------------------------------- state

    def state(self, pool: int) -> Dict[str, str]:
        """The last state read of a pool (matching keys only)."""
        return self._state[pool]

    def _read(self, pool: int, starting: bool = False) -> Optional[Dict[str, str]]:
        """The pool's matching keys now, {} if the file is missing, None if unreadable now.

        A pool this user may not read raises when ``starting``: the initial events would
        report its keys as absent (``kvp`` exits 3, as ``get`` does). Later, a pool that cannot
        be read is tried again; why is logged once, and again when it can be read again.
        """
        try:
            full = pool_state(self._files[pool])
        except PoolError as exc:
            mode = self._mode(pool)
            if mode is None:
                self._files[pool].close()
                return {}
            if not stat.S_ISREG(mode):
                raise  # a symlink, FIFO or device: the store refused it, by name; so do we
            if starting and isinstance(exc, PermissionError):
                raise
            if self._unreadable.get(pool) != str(exc):
                log.warning("%s (will retry)", exc)
                self._unreadable[pool] = str(exc)
            return None
        if self._unreadable.pop(pool, None) is not None:
            log.warning("%s can be read again", self._files[pool].path)
        return {k: v for k, v in full.items() if self._match(k)}

    def _mode(self, pool: int) -> Optional[int]:
        """The pool file's own type and mode (a symlink is not followed), None if it or the
        directory is gone; a regular file's mode when it cannot be told (try again later)."""
        try:
            found = os.stat(pool_filename(pool), dir_fd=self._opened.fd(), follow_symlinks=False)
        except (FileNotFoundError, PoolDirMissing):
            return None
        except PoolError:
            raise  # e.g. the directory may no longer be entered
        except OSError:
            return stat.S_IFREG
        return found.st_mode

    def _logged(self) -> List[HostWrite]:
        """The host-write log, read beside the pools (through the open directory)."""
        try:
            dir_fd = self._opened.fd()
        except PoolDirMissing:
            return []
        return read_log(self.directory, dir_fd)

    def _read_log(self) -> None:
        """Note the host writes logged since the last look (read before the pools they hit)."""
        self._log_dirty = False
        logged = self._logged()
        if logged and logged[-1].seq < self._log_seen:
            self._log_seen = 0  # the log was recreated: its entries are all new
        for entry in logged:
            if entry.seq <= self._log_seen or entry.pool not in self._rewritten:
                continue
            key = entry.key.decode("utf-8", "replace")  # as Record.text_key
            if self._match(key):
                self._rewritten[entry.pool][key] = None
                self._dirty.add(entry.pool)
        if logged:
            self._log_seen = max(self._log_seen, logged[-1].seq)

    def _refresh(self, starting: bool = False) -> List[Change]:
        if self._log_dirty:
            self._read_log()
        changes: List[Change] = []
        for pool in self.pools:
            if pool not in self._dirty:
                continue
            new = self._read(pool, starting)
            if new is None:
                self._retry_at = time.monotonic() + _RETRY_SECONDS
                continue
            self._dirty.discard(pool)
            found = diff(pool, self._state[pool], new)
            reported = {c.key for c in found}
            for key in self._rewritten[pool]:
                if key in new and key not in reported:
                    found.append(Change("modify", pool, key, new[key], new[key]))
            self._rewritten[pool].clear()
            changes.extend(found)
            self._state[pool] = new
        return changes

    def initial(self) -> List[Change]:
        """Read every pool; one ``initial`` event per matching key present now (PoolError
        for a pool this user may not read)."""
        self._handle(self._ino.read_events())
        changes = self._refresh(starting=True)
        return [Change("initial", c.pool, c.key, c.value) for c in changes if c.op == "add"]

    def changes(self, timeout: Optional[float] = None) -> List[Change]:
        """Block until some matching key changed; [] when ``timeout`` seconds passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._handle(self._ino.read_events())
            now = time.monotonic()
            if (self._dirty or self._log_dirty) and (
                self._retry_at is None or now >= self._retry_at
            ):
                self._retry_at = None
                found = self._refresh()
                if found:
                    return found
            waits = [t - now for t in (deadline, self._retry_at) if t is not None]
            wait = max(0.0, min(waits)) if waits else None
            if deadline is not None and now >= deadline:
                return []
            select.select([self._ino.fileno()], [], [], wait)

    def close(self) -> None:
        self._dir.close()  # its pool files and the directory's descriptor
        self._ino.close()

    def __enter__(self) -> PoolWatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_for(
    watcher: PoolWatcher,
    key: str,
    value: Optional[str] = None,
    timeout: Optional[float] = None,
) -> Optional[Tuple[int, str]]:
    """(pool, value) once ``key`` is present (with ``value`` if given) in the first pool of the
    watcher's order that has it; None after ``timeout`` seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout

    def found() -> Optional[Tuple[int, str]]:
        for pool in watcher.pools:
            have = watcher.state(pool).get(key)
            if have is not None and (value is None or have == value):
                return pool, have
        return None

    watcher.initial()
    while True:
        hit = found()
        if hit is not None:
            return hit
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return None
        watcher.changes(left)
