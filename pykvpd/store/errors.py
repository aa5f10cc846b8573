"""The store's exceptions: what went wrong with a pool file, a lock or a record."""

from __future__ import annotations


class PoolError(Exception):
    """A pool file could not be read, locked or written; the message names file and cause."""


class LockTimeout(PoolError):
    """Another process held the pool's lock for longer than we may wait."""


class InvalidRecord(ValueError):
    """A key or value that must not be stored: empty key, NUL, not UTF-8, or too long."""


class RecordTooLarge(InvalidRecord):
    """A key or value does not fit its field (with its NUL), or contains a NUL."""


class _PathError(PoolError, OSError):
    """A PoolError that is also an OSError with an errno and the path as ``filename``."""

    def __str__(self) -> str:
        return str(self.strerror)  # the message already names the path


class PoolPermissionError(_PathError, PermissionError):
    """The pool directory or a file in it may not be read or written by this user.

    Also a PermissionError, so that a caller can tell "not allowed" from "absent" or "damaged"
    (``kvp`` exits 3 for it); ``filename`` is the path.
    """


class PoolDirMissing(_PathError, FileNotFoundError):
    """The pool directory does not exist (``filename`` is its path)."""
