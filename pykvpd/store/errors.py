"""The store's exceptions: what went wrong with a pool file, a lock or a record."""

from __future__ import annotations


class PoolError(Exception):
    """A pool file could not be read, locked or written; the message names file and cause."""


class LockTimeout(PoolError):
    """Another process held the pool's lock for longer than we may wait."""


class RecordTooLarge(ValueError):
    """A key or value does not fit its field (with its NUL), or contains a NUL."""
