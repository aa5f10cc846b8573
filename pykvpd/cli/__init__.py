"""``kvp``: read, write, watch and check the KVP pool files from the shell.

A thin layer of argument parsing (``parser``), output formatting (``output``) and exit codes
(``errors``) over ``pools`` (format, locking, crash safety), ``events`` (split events, chunks,
fsck, batch writes) and ``watch`` (inotify events and hooks); one module per command in
``commands/``, imported only when that command runs. Exit codes: 0 ok, 1 not found / timeout /
not stale / problems left, 2 usage or validation, 3 I/O or lock. See docs/kvp.md for the
synopsis and the ``--json`` schema.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from typing import List, Optional, Sequence

from ..store import LockTimeout, PoolError, RecordTooLarge
from .commands import COMMANDS
from .errors import EXIT_IO, EXIT_OK, EXIT_USAGE, CliError
from .output import SCHEMA_VERSION, Output, json_line
from .parser import parse_args
from .signals import sigterm_exits

__all__ = ["COMMANDS", "main"]

log = logging.getLogger("kvp")


def _setup_logging(args: Optional[argparse.Namespace]) -> None:
    level = logging.WARNING
    if args is not None:
        level = logging.ERROR if args.quiet else (logging.INFO if args.verbose else level)
        if args.verbose and args.verbose > 1:
            level = logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("kvp: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    if args is not None and args.command in ("dump", "fsck"):
        logging.getLogger("pykvpd.store").setLevel(logging.ERROR)  # we report damage ourselves


def _permission_hint(message: str) -> str:
    if "Permission denied" in message and os.geteuid() != 0:
        return message + " (pools are root's: try sudo)"
    return message


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``kvp``; returns the exit status (never raises except KeyboardInterrupt handling)."""
    _setup_logging(None)
    argv = sys.argv[1:] if argv is None else list(argv)
    as_json = _asks_json(argv)
    try:
        args, command = parse_args(argv)
        as_json = args.json
        _setup_logging(args)
        with sigterm_exits():
            return command.run(args, Output())
    except CliError as exc:
        return _fail(str(exc), exc.code, as_json)
    except SystemExit as exc:  # --help, --version from argparse; SIGTERM
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    except RecordTooLarge as exc:
        return _fail(str(exc), EXIT_USAGE, as_json)
    except LockTimeout as exc:
        return _fail(str(exc), EXIT_IO, as_json)
    except PoolError as exc:
        message = str(exc)
        name = getattr(exc, "filename", None)
        if name and str(name) not in message:
            message = f"{name}: {message}"
        return _fail(_permission_hint(message), EXIT_IO, as_json)
    except BrokenPipeError:
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        return _fail(_permission_hint(f"{where}{exc.strerror or exc}"), EXIT_IO, as_json)


def _asks_json(argv: List[str]) -> bool:
    """Whether --json was given, for errors before the options are parsed (not after ``--``
    or in a ``watch --exec`` command line)."""
    for word in argv:
        if word in ("--", "--exec"):
            return False
        if word == "--json":
            return True
    return False


def _fail(message: str, code: int, as_json: bool) -> int:
    """Report an error once: ``kvp: message`` on stderr, or with --json a JSON line there."""
    if as_json:
        error = {"version": SCHEMA_VERSION, "error": {"code": code, "message": message}}
        sys.stderr.write(json_line(error) + "\n")
        sys.stderr.flush()
    else:
        log.error("%s", message)
    return code
