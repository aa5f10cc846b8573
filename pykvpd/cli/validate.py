"""``kvp`` input checks: keys and values against the pool limits, durations and counts."""

from __future__ import annotations

import math
import os

from ..store import (
    KEY_SIZE,
    SAFE_KEY_BYTES,
    SAFE_VALUE_BYTES,
    VALUE_SIZE,
    InvalidRecord,
    check_field,
)
from .errors import usage

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Tuple

UNSAFE_KEY_BYTES = KEY_SIZE - 1
UNSAFE_VALUE_BYTES = VALUE_SIZE - 1
_MAX_SECONDS = 366 * 24 * 3600.0  # a longer limit is a typo, not a plan


def checked(raw: bytes, what: str, limit: int, unsafe: bool) -> bytes:
    """``raw`` if it is a storable key/value; a usage error naming the limit and size if not."""
    hint = "" if unsafe else " (--unsafe allows more, but the host may not see it whole)"
    try:
        check_field(raw, what, limit, hint)
    except InvalidRecord as exc:
        raise usage(str(exc)) from None
    return raw


def limits(args: argparse.Namespace) -> Tuple[int, int]:
    """(key, value) byte limits: what the host reads whole, or the format's with --unsafe."""
    if args.unsafe:
        return UNSAFE_KEY_BYTES, UNSAFE_VALUE_BYTES
    return SAFE_KEY_BYTES, SAFE_VALUE_BYTES


def arg_bytes(text: str) -> bytes:
    """Command-line text back to its bytes (undoes Python's surrogateescape for non-UTF-8)."""
    return os.fsencode(text)


def check_key(args: argparse.Namespace, key: str) -> bytes:
    """A command-line key as bytes, refused (exit 2) if empty, not UTF-8, with NUL or too long."""
    raw = arg_bytes(key)
    if not raw:
        raise usage("key is empty")
    return checked(raw, "key", limits(args)[0], args.unsafe)


def _refused(message: str) -> Exception:
    """The error a value check raises: argparse prints its message as the option's error.
    argparse is imported only here, for a refused value (kvp get/set never import it)."""
    import argparse

    return argparse.ArgumentTypeError(message)


def seconds(text: str) -> float:
    """A duration: a finite, non-negative number of seconds, at most a year."""
    try:
        value = float(text)
    except ValueError:
        raise _refused(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value):
        raise _refused(f"{text!r} is not a finite number of seconds")
    if value < 0:
        raise _refused(f"{text} is negative")
    if value > _MAX_SECONDS:
        raise _refused(f"{text} s is more than a year")
    return value


def run_limit(text: str) -> float:
    """A per-run limit: a duration above zero (0 would stop every run at once)."""
    value = seconds(text)
    if value == 0:
        raise _refused("0 would stop every run at once")
    return value


def count(text: str) -> int:
    """-n: a whole number of events, at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise _refused(f"{text!r} is not a whole number") from None
    if not 1 <= value <= 10**9:
        raise _refused(f"{text} is not between 1 and 1000000000")
    return value


def byte_size(text: str) -> int:
    """A size in bytes: a whole number (the command checks its range)."""
    try:
        return int(text, 10)
    except ValueError:
        raise _refused(f"{text!r} is not a whole number of bytes") from None
