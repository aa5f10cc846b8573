"""``kvp``: read, write, watch and check the KVP pool files from the shell.

A thin layer of argument parsing (``quickargs`` for the everyday get/set lines, ``parser`` for
everything else), messages (``console``), output formatting (``output``) and exit codes
(``errors``) over ``store`` (format, locking, crash safety, chunks, fsck) and ``watch`` (inotify
events and hooks); one module per command in ``commands/``, imported only when that command
runs. A ``kvp get`` imports neither argparse nor logging (benchmarks/bench_cli.py). Exit
codes: 0 ok, 1 not found / timeout / not stale / problems left, 2 usage or validation, 3 I/O or
lock. See docs/kvp.md for the synopsis and the ``--json`` schema.
"""

from __future__ import annotations

import os
import sys

from ..store.errors import LockTimeout, PoolError, RecordTooLarge
from . import commands, quickargs
from .commands import COMMANDS
from .console import log
from .errors import EXIT_IO, EXIT_OK, EXIT_USAGE, CliError
from .output import SCHEMA_VERSION, Output, json_line

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import List, Optional, Sequence

__all__ = ["COMMANDS", "main"]


def _permission_hint(message: str) -> str:
    if "Permission denied" in message and os.geteuid() != 0:
        return message + " (pools are root's: try sudo)"
    return message


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``kvp``; returns the exit status (never raises except KeyboardInterrupt handling)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    as_json = _asks_json(argv)
    try:
        parsed = quickargs.parse(argv, commands.load)
        if parsed is None:
            from .parser import parse_args

            parsed = parse_args(argv)
        args, command = parsed
        as_json = args.json
        log.configure(args.verbose, args.quiet, store_quiet=args.command in ("dump", "fsck"))
        return command.run(args, Output())
    except CliError as exc:
        return _fail(str(exc), exc.code, as_json)
    except SystemExit as exc:  # --help, --version from argparse; SIGTERM in watch
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
        import contextlib  # here, not at the top: kvp's start-up is measured (bench_cli.py)

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
