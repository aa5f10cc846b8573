"""The words of a simulator command line: pools, typed values, KEY VALUE pairs, and the errors
a line that cannot run raises. Shared by scenario files, the serve console and the control
socket (pykvpd.simulator.scenario runs the commands)."""

from __future__ import annotations

import shlex
from typing import Dict, List, Sequence, Union

from pykvpd import protocol as p
from pykvpd.simulator.host import RegValue, Value

POOL_WORDS = {
    "external": p.POOL_EXTERNAL,
    "guest": p.POOL_GUEST,
    "auto": p.POOL_AUTO,
    "auto-external": p.POOL_AUTO_EXTERNAL,
    "auto-internal": p.POOL_AUTO_INTERNAL,
}

class CommandError(ValueError):
    """A command that cannot run as written (usage error)."""


class Quit(Exception):
    """The ``quit`` command."""


def parse_pool(word: str) -> int:
    if word.lower() in POOL_WORDS:
        return POOL_WORDS[word.lower()]
    try:
        number = int(word, 0)
    except ValueError:
        raise CommandError(f"not a pool: {word!r}") from None
    if not 0 <= number <= 255:
        raise CommandError(f"pool {number} is not a byte")
    return number


def parse_value(word: str) -> Value:
    """``u32:N``/``u64:N``/``type:T:N`` for typed values, ``str:...`` to quote, else a string."""
    kind, _, rest = word.partition(":")
    try:
        if kind == "u32":
            return RegValue(int(rest, 0), p.REG_U32)
        if kind == "u64":
            return RegValue(int(rest, 0), p.REG_U64)
        if kind == "type":
            type_text, _, raw = rest.partition(":")
            value: Union[str, int] = int(raw, 0) if raw.lstrip("-").isdigit() else raw
            return RegValue(value, int(type_text, 0))
    except ValueError:
        raise CommandError(f"bad typed value {word!r}") from None
    if kind == "str":
        return rest
    return word


def parse_pairs(words: Sequence[str]) -> Dict[str, Value]:
    if not words or len(words) % 2:
        raise CommandError("expected KEY VALUE pairs")
    return {words[i]: parse_value(words[i + 1]) for i in range(0, len(words), 2)}


def split_command(line: Union[str, Sequence[str]]) -> List[str]:
    if isinstance(line, str):
        return shlex.split(line, comments=True)
    return [str(w) for w in line]


def show_value(value: Value) -> str:
    if isinstance(value, RegValue):
        return f"{value.value} (type {value.value_type})"
    return str(value)
