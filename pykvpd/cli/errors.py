"""``kvp`` exit codes, and the error a command raises to print ``kvp: message`` and exit."""

from __future__ import annotations

EXIT_OK = 0
EXIT_NOT_FOUND = 1  # also: timeout, not stale, problems left
EXIT_USAGE = 2  # usage or validation
EXIT_IO = 3  # I/O or lock


class CliError(Exception):
    """An error to print as ``kvp: message`` and exit with ``code``."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def usage(message: str) -> CliError:
    """A usage or validation error (exit status 2)."""
    return CliError(message, EXIT_USAGE)
