"""``kvp`` input checks: keys and values from the command line against the pool limits."""

from __future__ import annotations

import argparse
import math
import os
from typing import Tuple

from ..pools import KEY_SIZE, VALUE_SIZE
from .errors import usage

SAFE_KEY_BYTES = 254  # what the host can read back after the kernel's UTF-16 conversion
SAFE_VALUE_BYTES = 1022
UNSAFE_KEY_BYTES = KEY_SIZE - 1
UNSAFE_VALUE_BYTES = VALUE_SIZE - 1
MAX_SECONDS = 366 * 86400  # a timeout beyond a year is a typo, and overflows time arithmetic
MAX_COUNT = 10**9


def seconds(text: str) -> float:
    """argparse type of every duration option: a finite, non-negative number up to a year."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if math.isnan(value) or math.isinf(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number of seconds")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative; give 0 or more seconds")
    if value > MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"{text} s is more than a year (at most {MAX_SECONDS})")
    return value


def count(text: str) -> int:
    """argparse type of a count option: a whole number from 1 to a billion."""
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= MAX_COUNT:
        raise argparse.ArgumentTypeError(f"{text} is out of range (1 to {MAX_COUNT})")
    return value


def byte_size(text: str) -> int:
    """argparse type of a size in bytes: a whole number (the command checks its range)."""
    try:
        return int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of bytes") from None


def checked(raw: bytes, what: str, limit: int, unsafe: bool) -> bytes:
    """``raw`` if it is a storable key/value; a usage error naming the limit and size if not."""
    nul = raw.find(b"\0")
    if nul >= 0:
        raise usage(f"{what} contains a NUL byte (at byte {nul})")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise usage(f"{what} is not valid UTF-8 (byte {exc.start})") from None
    if len(raw) > limit:
        hint = "" if unsafe else " (--unsafe allows more, but the host may not see it whole)"
        raise usage(f"{what} is {len(raw)} UTF-8 bytes; the limit is {limit}{hint}")
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
