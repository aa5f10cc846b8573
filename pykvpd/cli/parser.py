"""``kvp`` argument parsing with argparse: every form of every command, --help, the errors.

The first stage reads the options given before the command and the command's name; only then
is the command's module imported to add its own options (pip's ``commands/`` model), so
``kvp get`` never imports what ``kvp watch`` needs. Common options are accepted before and
after the command (``kvp --pool 0 get K`` or ``kvp get K -p 0``); those after it win. The
everyday ``get``/``set`` lines are read by ``quickargs`` instead, which does not need argparse.
"""

from __future__ import annotations

import argparse
import os
import sys
from types import ModuleType
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .. import __version__
from . import commands
from .errors import usage
from .options import COMMON, finish

_ACTIONS = {"value": "store", "flag": "store_true", "append": "append", "count": "count"}

DESCRIPTION = "Read, write, watch and check Hyper-V KVP pools (/var/lib/hyperv)."
EPILOG = "Exit status: 0 ok, 1 not found/timeout, 2 usage or validation, 3 I/O or lock."


def _columns() -> int:
    """The terminal's width for --help (what argparse would ask shutil, without importing it)."""
    try:
        return int(os.environ.get("COLUMNS", "")) - 2
    except ValueError:
        pass
    try:
        return os.get_terminal_size(sys.stdout.fileno()).columns - 2
    except (OSError, ValueError, AttributeError):
        return 78


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """argparse's formatter without its ``import shutil`` (a few ms of every kvp run, since
    argparse builds a formatter for each option it adds)."""

    def __init__(self, prog: str, **kwargs: Any) -> None:
        kwargs.setdefault("width", _columns())
        super().__init__(prog, **kwargs)


class _Parser(argparse.ArgumentParser):
    """Usage errors become ``CliError`` (exit 2) instead of argparse's own exit."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise usage(f"{message} (see 'kvp --help')")


def _common() -> argparse.ArgumentParser:
    """Options accepted before and after the command; absent ones stay unset (SUPPRESS)."""
    p = argparse.ArgumentParser(
        add_help=False, argument_default=argparse.SUPPRESS, formatter_class=_Formatter
    )
    groups: Dict[str, Any] = {}
    for option in COMMON:
        target: Any = p
        if option.group is not None:
            if option.group not in groups:
                groups[option.group] = p.add_mutually_exclusive_group()
            target = groups[option.group]
        extra: Dict[str, Any] = {"metavar": option.metavar} if option.metavar else {}
        if option.type is not None:
            extra["type"] = option.type
        target.add_argument(
            *option.flags,
            dest=option.dest,
            action=_ACTIONS[option.kind],
            help=option.help,
            **extra,
        )
    return p


def _top_parser(common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Stage one: common options, the command's name, and everything after it left unparsed."""
    listing = "\n".join(
        f"  {name:<10} {summary}" for name, (_module, summary) in commands.COMMANDS.items()
    )
    parser = _Parser(
        prog="kvp",
        parents=[common],
        description=DESCRIPTION,
        epilog=f"commands:\n{listing}\n\n{EPILOG}\n'kvp COMMAND --help' shows a command's options.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"kvp {__version__}")
    parser.add_argument("command", metavar="COMMAND", choices=list(commands.COMMANDS))
    rest = parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    rest.required = False  # `kvp` alone names only COMMAND as missing
    return parser


def _after_command(argv: Sequence[str], rest: List[str]) -> List[str]:
    """The arguments after the command as given: argparse may drop a ``--`` right after it."""
    start = len(argv) - len(rest)
    if start > 0 and argv[start - 1] == "--":
        return list(argv[start - 1 :])
    return list(rest)


def command_parser(
    name: str, module: ModuleType, common: Optional[argparse.ArgumentParser] = None
) -> argparse.ArgumentParser:
    """Stage two: the parser of one command, its own options added by its module."""
    summary = commands.COMMANDS[name][1]
    parser = _Parser(
        prog=f"kvp {name}",
        parents=[common or _common()],
        description=summary,
        formatter_class=_Formatter,
    )
    module.add_arguments(parser)
    return parser


def parse_args(argv: Optional[Sequence[str]]) -> Tuple[argparse.Namespace, ModuleType]:
    """The parsed options (common defaults filled in, ``pools`` resolved) and the command."""
    argv = sys.argv[1:] if argv is None else list(argv)
    common = _common()
    top = _top_parser(common).parse_args(argv)
    module = commands.load(top.command)
    parser = command_parser(top.command, module, common)
    own = parser.parse_args(_after_command(argv, top.rest))
    for action in parser._actions:  # argparse turns a lone "--" value into []
        value = getattr(own, action.dest, None)
        if not action.option_strings and action.nargs is None and isinstance(value, list):
            raise usage(f"{action.dest}: '--' cannot be a {action.dest} (see 'kvp --help')")
    args = argparse.Namespace(**{k: v for k, v in vars(top).items() if k != "rest"})
    for name, value in vars(own).items():
        setattr(args, name, value)
    finish(args, top.command, module)
    return args, module
