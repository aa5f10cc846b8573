"""Which pool files a ``kvp`` command works on, and opening them for reading or writing."""

from __future__ import annotations

import argparse
import os
from typing import Any, Dict, Iterator, Optional, Tuple

from ..store import (
    DEFAULT_POOL_DIR,
    POOL_COUNT,
    POOL_NAMES,
    PoolError,
    PoolFile,
    PoolImage,
    pool_filename,
)
from .errors import EXIT_IO, CliError, usage

GET_ORDER = (0, 3, 1, 2, 4)  # host data first: external, auto-external, guest, auto, auto-internal
ALL_POOLS = tuple(range(POOL_COUNT))
GUEST = POOL_NAMES["guest"]


def pool_directory(args: argparse.Namespace) -> str:
    """--dir, ROOT/var/lib/hyperv for --root, or the default directory."""
    if args.root is not None:
        return os.path.join(args.root, DEFAULT_POOL_DIR.lstrip("/"))
    return args.dir if args.dir is not None else DEFAULT_POOL_DIR


def pool_path(args: argparse.Namespace, number: int) -> str:
    """The file of pool ``number`` in the chosen directory."""
    return os.path.join(pool_directory(args), pool_filename(number))


def one_pool(args: argparse.Namespace, default: int = GUEST) -> int:
    """The single pool a writing command works on (usage error if several were given)."""
    if len(args.pools) > 1:
        raise usage(f"'{args.command}' works on one pool; got {len(args.pools)}")
    return args.pools[0] if args.pools else default


def open_pool(args: argparse.Namespace, number: int, writable: bool = False) -> PoolFile:
    """Pool ``number``, created and opened read-write only when the command writes."""
    return PoolFile(
        pool_path(args, number), create=writable, writable=writable, lock_timeout=args.lock_timeout
    )


def require_dir(args: argparse.Namespace) -> str:
    """The pool directory, or an I/O error (exit 3) if it does not exist."""
    directory = pool_directory(args)
    if not os.path.isdir(directory):
        raise CliError(f"{directory}: no such pool directory", EXIT_IO)
    return directory


def read_image(args: argparse.Namespace, number: int) -> Optional[PoolImage]:
    """A pool's records under its shared lock, or None if the file does not exist."""
    pool = open_pool(args, number)
    try:
        return pool.image()
    except PoolError:
        if not os.path.exists(pool.path):
            return None
        raise
    finally:
        pool.close()


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


def writable_pool(args: argparse.Namespace, number: int) -> PoolFile:
    """A pool opened for writing, or a permission error naming it and what writing needs."""
    directory = require_dir(args)
    pool = open_pool(args, number, writable=True)
    target = pool.path if os.path.exists(pool.path) else directory
    if not os.access(target, os.W_OK) or not os.access(directory, os.W_OK | os.X_OK):
        who = "root" if os.geteuid() != 0 else "write access"
        raise CliError(
            f"{pool.path}: permission denied; writing a pool needs {who} (try sudo)", EXIT_IO
        )
    return pool
