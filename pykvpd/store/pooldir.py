"""A pool directory (``/var/lib/hyperv`` on a guest): its five pool files and one watch."""

from __future__ import annotations

import os
import stat

from ..lazylog import LazyLogger
from .errors import PoolError
from .files import DirHandle, lstat_in
from .poolfile import DEFAULT_MODE, PoolFile
from .records import POOL_COUNT, pool_filename, pool_number

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Dict, Optional, Union

    from .freshness import DirWatch

log = LazyLogger(__name__)

DEFAULT_POOL_DIR = "/var/lib/hyperv"


class PoolDir:
    """The five pool files of one directory.

    With ``root`` (a mounted disk image), ``directory`` is a path inside the image and every
    component of it is resolved inside the image, so nothing outside it is ever read or written;
    ``path()`` and every message then name the file as ``root/directory/...``. ``writable=None``
    opens each pool read-write where this user may, else read-only. Without ``root``
    the directory may itself be a symlink (an admin's choice on a live system). Files inside it
    are never followed through a symlink, and only regular files are opened.
    """

    def __init__(
        self,
        directory: str = DEFAULT_POOL_DIR,
        *,
        root: Optional[str] = None,
        create: bool = False,
        mode: int = DEFAULT_MODE,
        writable: Optional[bool] = True,
        watch: bool = False,
        lock_timeout: float = 20.0,
    ) -> None:
        self._handle = DirHandle(directory, root)
        self.directory = self._handle.shown
        self.root = root
        self._create = create
        self._mode = mode
        self._writable = writable
        self._lock_timeout = lock_timeout
        if create and root is None:
            _make_dir(directory)
        self._watch: Optional[DirWatch] = None
        if watch:  # the daemon's: a one-shot ``kvp get`` does not import freshness
            from .freshness import DirWatch

            try:
                target = directory if root is None else f"/proc/self/fd/{self._handle.fd()}"
                self._watch = DirWatch(target)
            except (OSError, ImportError) as exc:
                log.warning(
                    "no inotify on %s (%s): re-reading pools on every request", directory, exc
                )
        self._pools: Dict[int, PoolFile] = {}

    def path(self, pool: Union[int, str]) -> str:
        return self._handle.path(pool_filename(pool_number(pool)))

    def exists(self, pool: Union[int, str]) -> bool:
        """Whether the pool's file is there (as a regular file or not: opening it tells).

        Raises PoolDirMissing for a missing directory and PoolPermissionError for one this
        user cannot look into, rather than answering False.
        """
        name = pool_filename(pool_number(pool))
        return lstat_in(self._handle.fd(), name, self._handle.path(name)) is not None

    def pool(self, pool: Union[int, str]) -> PoolFile:
        known = self._pools.get(pool)  # type: ignore[arg-type]  # the daemon's per-request path
        if known is not None:
            return known
        number = pool_number(pool)
        if number not in self._pools:
            self._pools[number] = PoolFile(
                self.path(number),
                create=self._create,
                mode=self._mode,
                writable=self._writable,
                watch=self._watch,
                lock_timeout=self._lock_timeout,
                directory=self._handle,
            )
        return self._pools[number]

    def init_files(self) -> None:
        """Create missing pool files; existing ones keep their mode, mtime and bytes."""
        for number in range(POOL_COUNT):
            self.pool(number).ensure_exists()

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        if self._watch is not None:
            self._watch.close()
        self._handle.close()


def _make_dir(directory: str) -> None:
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
    except OSError as exc:
        raise PoolError(f"{directory}: cannot create the pool directory: {exc.strerror}") from None
    if not stat.S_ISDIR(os.stat(directory).st_mode):
        raise PoolError(f"{directory}: not a directory")
