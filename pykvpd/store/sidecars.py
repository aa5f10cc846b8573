"""Files the store keeps beside a pool so that no byte is lost: saved partial records, backups.

A partial trailing record that does not decode even when zero-padded is moved out of the pool
into ``.pykvpd-partial-kvp_pool_<N>-<time>`` before a new record takes its place; ``kvp fsck``
lists those files until someone removes them. ``kvp fsck --repair`` saves the pool's bytes as
``.pykvpd-fsck-kvp_pool_<N>-<time>`` first. No name matches a ``.kvp_pool_*`` glob; every one is
created with ``O_EXCL | O_NOFOLLOW`` in the pool directory (mode 0600, fsynced).
"""

from __future__ import annotations

import os

from ..lazylog import LazyLogger
from .errors import PoolError
from .files import DirHandle, open_file, read_all, save_aside

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import List, Tuple

log = LazyLogger(__name__)


def _prefix(kind: str, pool_name: str) -> str:
    return f".pykvpd-{kind}-{pool_name.lstrip('.')}"


def keep_partial(directory: DirHandle, pool_path: str, partial: bytes, decodes: bool) -> bool:
    """Before a record is appended over a partial one: a partial record that ``decodes`` as a
    record once zero-padded is to be padded and kept in place (True); one that does not is
    saved beside the pool (shown by fsck) and may then be overwritten (False). Logged."""
    if decodes:
        log.warning(
            "%s: keeping a partial record of %d bytes by padding it to a whole record",
            pool_path,
            len(partial),
        )
        return True
    save_partial(directory, pool_path, partial)
    return False


def save_partial(directory: DirHandle, pool_path: str, data: bytes) -> str:
    """Keep a partial record's bytes beside its pool (logged); returns the file's path."""
    saved = save_aside(
        directory.fd(), directory.shown, _prefix("partial", os.path.basename(pool_path)), data
    )
    log.warning(
        "%s: a partial record of %d bytes that is no record even when padded was saved as %s",
        pool_path,
        len(data),
        saved,
    )
    return saved


def save_backup(directory: DirHandle, pool_path: str, data: bytes) -> str:
    """Save a pool's bytes before fsck repairs it; returns the backup's path."""
    return save_aside(
        directory.fd(), directory.shown, _prefix("fsck", os.path.basename(pool_path)), data
    )


def saved_partials(directory: DirHandle, pool_path: str) -> List[Tuple[str, bytes]]:
    """(path, bytes) of every partial record saved beside this pool, oldest first."""
    prefix = _prefix("partial", os.path.basename(pool_path)) + "-"
    try:
        names = sorted(n for n in os.listdir(directory.fd()) if n.startswith(prefix))
    except OSError as exc:
        raise PoolError(f"{directory.shown}: cannot list: {exc.strerror}") from None
    found = []
    for name in names:
        path = directory.path(name)
        try:
            fd = open_file(directory.fd(), name, os.O_RDONLY, path)
        except FileNotFoundError:
            continue
        try:
            found.append((path, read_all(fd, path)))
        finally:
            os.close(fd)
    return found
