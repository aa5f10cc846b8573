"""``kvp is-stale``: exit 0 if a pool was not modified since boot (left from an earlier boot)."""

from __future__ import annotations

import argparse
import os
from typing import Optional

from ... import store
from ..access import one_pool, reading
from ..errors import EXIT_IO, EXIT_NOT_FOUND, EXIT_OK, CliError
from ..output import Output, pool_json

FORMATS = ("json",)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """No options of its own: the pool comes from the common ``--pool``."""


def run(args: argparse.Namespace, out: Output) -> int:
    number = one_pool(args)
    with reading(args) as pools:  # a missing or forbidden directory: exit 3
        path = pools.path(number)
        exists = pools.exists(number)
    boot = store.boot_time()
    mtime: Optional[float] = None
    if exists:
        try:
            mtime = os.lstat(path).st_mtime
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise CliError(f"{path}: {exc.strerror}", EXIT_IO) from None
    if boot is None:
        raise CliError("cannot tell the boot time (no /proc/stat btime or /proc/uptime)", EXIT_IO)
    stale = mtime is not None and mtime < boot
    if args.json:
        out.json(
            pool_json(
                number, path, exists=mtime is not None, stale=stale, mtime=mtime, boot_time=boot
            )
        )
    elif not args.quiet:
        state = "missing" if mtime is None else ("stale" if stale else "fresh")
        out.line(f"{path}: {state}")
    return EXIT_OK if stale else EXIT_NOT_FOUND
