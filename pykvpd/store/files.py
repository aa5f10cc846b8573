"""Whole reads and writes of one open file in a pool directory, with errors that name it."""

from __future__ import annotations

import os

from .errors import PoolError


def read_all(fd: int, path: str) -> bytes:
    """Every byte of the file behind ``fd`` (however it grows while we read)."""
    try:
        size = os.fstat(fd).st_size
        chunks, offset = [], 0
        while True:
            chunk = os.pread(fd, max(size - offset, 65536), offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise PoolError(f"{path}: read failed: {exc.strerror}") from None


def pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        done = os.pwrite(fd, view, offset)
        view, offset = view[done:], offset + done
