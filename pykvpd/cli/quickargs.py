"""The everyday ``kvp get`` and ``kvp set`` command lines, read without importing argparse.

Scripts call ``kvp get KEY`` and ``kvp set KEY VALUE`` in loops, and importing argparse (with
re, enum, gettext and locale behind it) is a quarter of such a run (benchmarks/bench_cli.py).
This parser takes those two commands with the common options and the commands' own options
in their plain spellings: ``--dir D``, ``--dir=D``, ``-p P``, ``--json``, ``-v``, ``--join``, ...
before or after the command. Anything else -- another command, ``-h``, ``--version``, an
abbreviation, ``-vv``, ``-p0``, ``--``, an argument that starts with ``-`` (but ``-`` itself), a
value its check refuses, options that exclude each other, too few or too many arguments --
makes it return None, and ``parser`` reads the whole line: help and every error message come
from one place. tests/test_cli_quickargs.py checks that both read the same from every line
this one takes.
"""

from __future__ import annotations

from types import SimpleNamespace

from .options import APPEND, COMMON, COUNT, FLAG, VALUE, finish
from .validate import byte_size

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

    Spec = Tuple[str, str, Optional[Callable[[str], Any]]]  # dest, kind, check

# Per command: its positional arguments, and its own options as flag -> (dest, kind, check).
_COMMANDS: Dict[str, Tuple[Tuple[str, ...], Dict[str, Spec]]] = {
    "get": (("key",), {"--join": ("join", FLAG, None)}),
    "set": (
        ("key", "value"),
        {"--chunk": ("chunk", FLAG, None), "--chunk-size": ("chunk_size", VALUE, byte_size)},
    ),
}
_OWN_DEFAULTS = {"join": False, "chunk": False, "chunk_size": None}

_COMMON: Dict[str, Spec] = {}
_GROUP: Dict[str, str] = {}
for _option in COMMON:
    for _flag in _option.flags:
        _COMMON[_flag] = (_option.dest, _option.kind, _option.type)
    if _option.group is not None:
        _GROUP[_option.dest] = _option.group


class _NotQuick(Exception):
    """This line is one for the full parser."""


def _positional(word: str) -> bool:
    """Whether argparse reads ``word`` as an argument rather than an option (as far as the
    words this parser takes go: ``-`` alone is an argument, so is anything without a dash)."""
    return not word.startswith("-") or word == "-"


def _apply(words: List[str], i: int, options: Dict[str, Spec], into: Dict[str, Any]) -> int:
    """Apply the option ``words[i]`` (and its value) to ``into``; the index after them."""
    flag, eq, inline = words[i].partition("=")
    i += 1
    if flag not in options or (eq and not flag.startswith("--")):
        raise _NotQuick
    dest, kind, check = options[flag]
    if kind in (VALUE, APPEND):
        if eq:
            value: Any = inline
        elif i < len(words) and _positional(words[i]):
            value = words[i]
            i += 1
        else:
            raise _NotQuick
        if check is not None:
            try:
                value = check(value)
            except Exception:
                raise _NotQuick from None  # the full parser words the refusal
        into[dest] = [*into.get(dest, []), value] if kind == APPEND else value
    elif eq:
        raise _NotQuick  # argparse: "ignored explicit argument"
    else:
        into[dest] = into.get(dest, 0) + 1 if kind == COUNT else True
    return i


def _excludes(given: Dict[str, Any]) -> bool:
    """Whether ``given`` (one side of the command) has two options of one group."""
    groups = [_GROUP[dest] for dest in given if dest in _GROUP]
    return len(groups) != len(set(groups))


def parse(
    argv: Sequence[str], load: Callable[[str], ModuleType]
) -> Optional[Tuple[SimpleNamespace, ModuleType]]:
    """(options, command module) as ``parser.parse_args`` would give them, or None when the
    line is not one of the everyday ``get``/``set`` forms."""
    words = list(argv)
    before: Dict[str, Any] = {}
    after: Dict[str, Any] = {}
    name: Optional[str] = None
    options = _COMMON
    values: List[str] = []
    i = 0
    try:
        while i < len(words):
            word = words[i]
            if not _positional(word):
                i = _apply(words, i, options, after if name else before)
                continue
            i += 1
            if name is not None:
                values.append(word)
            elif word in _COMMANDS:
                name = word
                options = {**_COMMON, **_COMMANDS[name][1]}
            else:
                return None
    except _NotQuick:
        return None
    if name is None:
        return None
    positionals, own = _COMMANDS[name]
    if len(values) != len(positionals) or _excludes(before) or _excludes(after):
        return None
    args = SimpleNamespace(command=name, **before)
    for dest, _kind, _check in own.values():
        setattr(args, dest, _OWN_DEFAULTS[dest])
    for dest, value in [*after.items(), *zip(positionals, values)]:
        setattr(args, dest, value)
    module = load(name)
    finish(args, name, module)
    return args, module
