"""The OS values of the Auto pool (OSName, versions, build, architecture) from uname and /etc.

Spec §5.2: os-release when it exists, else SuSE-release or redhat-release, read with the C
daemon's rules (its fgets() line chunks, its quote and backslash clean-up) so the host sees the
same strings as from ``hv_kvp_daemon``. Read once: these only change with a reboot.
"""

from __future__ import annotations

import logging
import os
from typing import List, NamedTuple, Optional, Protocol, Tuple

log = logging.getLogger(__name__)

# The C daemon reads its release files with fgets() into a 512-byte buffer: a longer line arrives
# as several chunks of at most 511 bytes, each parsed as a line of its own.
_FGETS_CHUNK = 511


class UnameResult(Protocol):
    """The three fields of ``os.uname()`` the Auto pool uses (what an injected uname returns)."""

    sysname: str
    release: str
    machine: str


class OsInfo(NamedTuple):
    """The OS values of the Auto pool, computed once (they only change with a reboot)."""

    name: str  # OSName
    major_version: str  # OSMajorVersion
    minor_version: str  # OSMinorVersion
    version: str  # OSVersion: release cut at the first '-'
    build_number: str  # OSBuildNumber: the full kernel release
    architecture: str  # ProcessorArchitecture


def fgets_lines(data: bytes) -> List[bytes]:
    """Split file contents the way repeated ``fgets(buf, 512, f)`` calls see them.

    Each chunk ends after a newline or after 511 bytes, and is then cut at its first NUL, as
    the C string functions that process it would.
    """
    chunks: List[bytes] = []
    pos = 0
    while pos < len(data):
        newline = data.find(b"\n", pos, pos + _FGETS_CHUNK)
        end = newline + 1 if newline >= 0 else min(pos + _FGETS_CHUNK, len(data))
        chunks.append(data[pos:end].split(b"\0", 1)[0])
        pos = end
    return chunks


def _unquote(value: bytes) -> bytes:
    """The C daemon's value clean-up: delete every quote and newline; backslash escapes one byte."""
    out = bytearray()
    i = 0
    while i < len(value):
        byte = value[i : i + 1]
        if byte == b"\\":
            if i + 1 >= len(value):
                break  # a trailing backslash ends the value
            out += value[i + 1 : i + 2]
            i += 2
            continue
        if byte not in (b'"', b"'", b"\n"):
            out += byte
        i += 1
    return bytes(out)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def parse_os_release(data: bytes) -> Tuple[Optional[str], Optional[str]]:
    """(NAME, VERSION_ID) from os-release contents with the C daemon's rules; None when absent.

    Lines starting with ``#`` or without ``=`` are skipped; the name is everything before the
    first ``=`` compared exactly (no trimming); later occurrences override earlier ones.
    """
    name: Optional[str] = None
    version_id: Optional[str] = None
    for line in fgets_lines(data):
        if line.startswith(b"#") or b"=" not in line:
            continue
        key, value = line.split(b"=", 1)
        if key == b"NAME":
            name = _text(_unquote(value))
        elif key == b"VERSION_ID":
            version_id = _text(_unquote(value))
    return name, version_id


def parse_release_file(data: bytes) -> List[str]:
    """The first three lines of a SuSE-release / redhat-release file, newline stripped."""
    return [_text(line.split(b"\n", 1)[0]) for line in fgets_lines(data)[:3]]


def _read_optional(path: str) -> Optional[bytes]:
    """File contents, or None when it cannot be opened (the C daemon's fopen() == NULL)."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("cannot read %s, ignoring it: %s", path, exc)
        return None


def compute_os_info(uname: UnameResult, os_release: str, etc_dir: str) -> OsInfo:
    """Spec §5.2: os-release if it exists (nothing else then), else SuSE- or redhat-release.

    Without any of them OSName is the uname sysname ("Linux") and the versions are empty.
    """
    name, major, minor = uname.sysname, "", ""
    data = _read_optional(os_release)
    if data is not None:
        os_name, version_id = parse_os_release(data)
        name = os_name if os_name is not None else name
        major = version_id if version_id is not None else major
    else:
        for release_file in ("SuSE-release", "redhat-release"):
            data = _read_optional(os.path.join(etc_dir, release_file))
            if data is not None:
                lines = parse_release_file(data) + ["", "", ""]
                # A line the file does not have keeps the previous value (C: fgets() == NULL).
                name = lines[0] if len(data) else name
                major, minor = lines[1], lines[2]
                break
    return OsInfo(
        name=name,
        major_version=major,
        minor_version=minor,
        version=uname.release.split("-", 1)[0],
        build_number=uname.release,
        architecture=uname.machine,
    )
