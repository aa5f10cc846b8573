"""Helpers shared by the kvp tests (no tests here): run ``kvp`` in-process or as a process."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
from typing import List, Optional, Tuple
from unittest import mock

from pykvpd import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORD = struct.Struct("512s2048s")


def rec(key: bytes, value: bytes) -> bytes:
    """A record packed independently of pykvpd (as cloud-init and the C daemon do)."""
    return RECORD.pack(key, value)


def records_of(data: bytes) -> List[Tuple[bytes, bytes]]:
    """(key, value) of each whole record, split at the first NUL."""
    out = []
    for off in range(0, len(data) - len(data) % 2560, 2560):
        k, v = RECORD.unpack_from(data, off)
        out.append((k.split(b"\0", 1)[0], v.split(b"\0", 1)[0]))
    return out


def kvp(*argv: str, stdin: bytes = b"") -> Tuple[int, bytes, str]:
    """Run ``kvp argv`` in this process; (exit code, stdout bytes, stderr text)."""
    out, err = io.BytesIO(), io.StringIO()
    fake_out = io.TextIOWrapper(out, encoding="utf-8", write_through=True)
    fake_in = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")
    with (
        mock.patch.object(sys, "stdout", fake_out),
        mock.patch.object(sys, "stdin", fake_in),
        mock.patch.object(sys, "stderr", err),
    ):
        code = cli.main(list(argv))
        fake_out.flush()
    return code, out.getvalue(), err.getvalue()


def kvp_process(
    *argv: str,
    stdin: bytes = b"",
    timeout: float = 30,
    preexec_fn=None,  # noqa: ANN001
    env: Optional[dict] = None,
    python: str = sys.executable,
) -> subprocess.CompletedProcess:
    """Run ``python -m pykvpd.cli argv`` as a separate process."""
    full_env = dict(os.environ, PYTHONPATH=ROOT)
    if env:
        full_env.update(env)
    return subprocess.run(
        [python, "-m", "pykvpd.cli", *argv],
        input=stdin,
        capture_output=True,
        timeout=timeout,
        preexec_fn=preexec_fn,
        env=full_env,
        cwd=ROOT,
    )


def kvp_argv() -> List[str]:
    return [sys.executable, "-m", "pykvpd.cli"]


def write_pool(directory: str, number: int, data: bytes) -> str:
    path = os.path.join(directory, f".kvp_pool_{number}")
    with open(path, "wb") as f:
        f.write(data)
    return path


def read_pool(directory: str, number: int) -> bytes:
    with open(os.path.join(directory, f".kvp_pool_{number}"), "rb") as f:
        return f.read()
