"""Which pool files a ``kvp`` command works on, and opening them through the store.

Every pool is reached through ``store.PoolDir``, so with ``--root`` every path is resolved inside
the image and no pool file is ever followed through a symlink. The CLI only turns the store's
errors into messages that say what to do (exit 3).
"""

from __future__ import annotations

import os

from ..store import (
    DEFAULT_POOL_DIR,
    POOL_COUNT,
    POOL_LABELS,
    POOL_NAMES,
    PoolDir,
    PoolDirMissing,
    PoolFile,
    PoolImage,
)
from .console import log
from .errors import EXIT_IO, CliError, usage

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from types import TracebackType
    from typing import Any, Dict, Iterator, Optional, Tuple, Type

GET_ORDER = (0, 3, 1, 2, 4)  # host data first: external, auto-external, guest, auto, auto-internal
ALL_POOLS = tuple(range(POOL_COUNT))
GUEST = POOL_NAMES["guest"]
HOST_WRITTEN = (POOL_NAMES["external"], POOL_NAMES["auto-external"])


def one_pool(args: argparse.Namespace, default: int = GUEST) -> int:
    """The single pool a writing command works on (usage error if several were given)."""
    if len(args.pools) > 1:
        raise usage(f"'{args.command}' works on one pool; got {len(args.pools)}")
    return args.pools[0] if args.pools else default


def open_dir(args: argparse.Namespace, create: bool = False, writable: bool = False) -> PoolDir:
    """The pool directory the options name (inside the image with --root), not yet opened."""
    directory = DEFAULT_POOL_DIR if args.dir is None else args.dir
    return PoolDir(
        directory,
        root=args.root,
        create=create,
        writable=writable or create,
        lock_timeout=args.lock_timeout,
    )


class reading:
    """``with reading(args) as pools``: the pool directory (read-only unless ``writable``),
    closed after; exit 3 if it is missing or this user may not enter it.

    This and ``writing`` are classes rather than ``@contextmanager`` functions so that
    ``kvp get`` does not import contextlib (its start-up is measured: bench_cli.py).
    """

    def __init__(self, args: argparse.Namespace, writable: bool = False) -> None:
        self.pools = open_dir(args, writable=writable)

    def __enter__(self) -> PoolDir:
        try:
            self.pools.exists(GUEST)  # the store raises for a missing or forbidden directory
        except PoolDirMissing:
            self.pools.close()
            raise CliError(f"{self.pools.directory}: no such pool directory", EXIT_IO) from None
        except BaseException:
            self.pools.close()
            raise
        return self.pools

    def __exit__(self, *exc_info: object) -> None:
        self.pools.close()


class writing:
    """``with writing(args, number) as pool``: pool ``number`` opened for writing (created if
    missing), or exit 3 saying what it needs; an OSError without a file name gets the pool's.

    The directory must exist: ``kvp`` never creates ``/var/lib/hyperv`` (a typo in --dir
    would otherwise make a new directory). A write to a pool the host writes is allowed but
    warned about: the host replaces that pool's contents.
    """

    def __init__(self, args: argparse.Namespace, number: int) -> None:
        with reading(args):
            pass
        if number in HOST_WRITTEN:
            log.warning(
                "pool %d (%s) is written by the host, which may overwrite or remove this change",
                number,
                POOL_LABELS[number],
            )
        self.pools = open_dir(args, create=True)
        self.number = number
        self.path = self.pools.path(number)

    def __enter__(self) -> PoolFile:
        try:
            pool = self.pools.pool(self.number)
            try:
                pool.ensure_exists()  # also completes a change a killed writer left in the journal
            except PermissionError:
                who = "write access" if os.geteuid() == 0 else "root"
                raise CliError(
                    f"{pool.path}: permission denied; writing a pool needs {who} (try sudo)",
                    EXIT_IO,
                ) from None
        except BaseException as exc:
            self.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return pool

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        if isinstance(exc, OSError) and not exc.filename:
            exc.filename = self.path  # e.g. ENOSPC from a write: say which file
        self.pools.close()


def read_image(pools: PoolDir, number: int) -> Optional[PoolImage]:
    """A pool's records under its shared lock, or None if the file does not exist."""
    if not pools.exists(number):
        return None
    return pools.pool(number).image()


def valid_records(image: Optional[PoolImage]) -> Iterator[Tuple[int, Any]]:
    """(index, record) of each valid record; nothing for a missing pool."""
    if image is None:
        return
    for index, rec in enumerate(image.records):
        if rec.valid:
            yield index, rec


def first_values(image: Optional[PoolImage]) -> Dict[str, bytes]:
    """key -> value of the first record of each key (first match wins, as the daemon reads)."""
    values: Dict[str, bytes] = {}
    for _index, rec in valid_records(image):
        values.setdefault(rec.text_key, rec.value)
    return values
