"""The kernel's string and value conversions between the host's UTF-16 and the daemon's UTF-8.

The hv_utils driver converts every key, value and IP string on the way to the daemon (spec §4.1,
§6.1) and back to the host (§2.2), each with its own caps and quirks (a skipped character, a
dropped surrogate, a failure on invalid UTF-8); the host sees exactly what these functions give.
"""

from __future__ import annotations

import struct
from typing import List, Optional, Sequence, Union

from pykvpd import protocol as p

# UTF-8 byte caps of the host -> daemon conversion (§4.1, §6.1).
KEY_BYTES = p.MAX_KEY_SIZE - 1  # 511
VALUE_BYTES = p.MAX_VALUE_SIZE - 1  # 2047
IP_ADAPTER_ID_BYTES = 128
IP_ADDR_BYTES = 1024  # ip_addr, sub_net, dns_addr
IP_GATEWAY_BYTES = 512

# UTF-16 unit caps of the daemon -> host conversion (§2.2).
HOST_KEY_UNITS = p.MAX_KEY_SIZE // 2 - 2  # 254
HOST_VALUE_UNITS = p.MAX_VALUE_SIZE // 2 - 2  # 1022
HOST_IP_ADAPTER_ID_UNITS = 128
HOST_IP_ADDR_UNITS = 1024
HOST_IP_GATEWAY_UNITS = 512

# Capacity of the host's own UTF-16 fields (units): key/value need room for their NUL.
HOST_KEY_FIELD_UNITS = p.MAX_KEY_SIZE // 2  # 256
HOST_VALUE_FIELD_UNITS = p.MAX_VALUE_SIZE // 2  # 1024

_U16 = struct.Struct("<H")

HostValue = Union[str, int, None]


class ConversionError(ValueError):
    """The daemon's reply holds bytes the kernel cannot convert (invalid UTF-8)."""


def utf16_units(text: str) -> List[int]:
    """A host string as UTF-16 code units; lone surrogates in ``text`` stay lone units."""
    raw = text.encode("utf-16-le", "surrogatepass")
    return [u for (u,) in _U16.iter_unpack(raw)]


def units_text(units: Sequence[int]) -> str:
    """UTF-16 code units back to a Python string (what the host displays)."""
    raw = b"".join(_U16.pack(u) for u in units)
    return raw.decode("utf-16-le", "surrogatepass")


def host_to_utf8(units: Sequence[int], max_bytes: int) -> bytes:
    """The kernel's UTF-16 -> UTF-8 conversion with a byte budget (spec §4.1).

    Stops at the first NUL unit. Unpaired surrogates are dropped. A character whose encoding does
    not fit in what is left of the budget is skipped, but later, shorter characters are still
    emitted, so the result is not simply a prefix of the input.
    """
    out = bytearray()
    i = 0
    while i < len(units) and len(out) < max_bytes:
        unit = units[i]
        if unit == 0:
            break
        i += 1
        if 0xD800 <= unit <= 0xDFFF:
            low = units[i] if i < len(units) else 0
            if unit > 0xDBFF or not 0xDC00 <= low <= 0xDFFF:
                continue  # unpaired surrogate: dropped
            i += 1
            code = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)
        else:
            code = unit
        encoded = chr(code).encode("utf-8")
        if len(out) + len(encoded) <= max_bytes:
            out += encoded
    return bytes(out)


def _utf8_sequence_length(lead: int) -> int:
    if lead < 0x80:
        return 1
    if 0xC0 <= lead < 0xE0:
        return 2
    if 0xE0 <= lead < 0xF0:
        return 3
    if 0xF0 <= lead < 0xF8:
        return 4
    return 0  # continuation byte or a lead byte no valid UTF-8 has


def utf8_to_host(data: bytes, max_units: int) -> List[int]:
    """The kernel's UTF-8 -> UTF-16 conversion of a reply string with a unit budget (spec §2.2).

    ``data`` is the string as the kernel's strlen sees it (cut at the NUL). Conversion stops when
    the budget is used up (a character needing a surrogate pair stops it when only one unit is
    left); bytes past that point are never looked at. Invalid UTF-8 met before that point raises
    ConversionError, which the kernel reports to the host as HV_E_FAIL.
    """
    units: List[int] = []
    i = 0
    while i < len(data) and len(units) < max_units:
        size = _utf8_sequence_length(data[i])
        chunk = data[i : i + size] if size else data[i : i + 1]
        try:
            code = ord(chunk.decode("utf-8"))
        except UnicodeDecodeError:
            raise ConversionError(f"invalid UTF-8 at byte {i}: {chunk.hex()}") from None
        i += size
        if code >= 0x10000:
            if max_units - len(units) < 2:
                break
            code -= 0x10000
            units += [0xD800 | (code >> 10), 0xDC00 | (code & 0x3FF)]
        else:
            units.append(code)
    return units


def render_value(value: HostValue, value_type: int) -> Optional[bytes]:
    """The UTF-8 value bytes the kernel puts in a SET, or None for ``value_size`` 0 (§4.1)."""
    if value_type == p.REG_SZ:
        text = "" if value is None else value
        if not isinstance(text, str):
            raise TypeError(f"REG_SZ value must be a str, not {type(text).__name__}")
        return host_to_utf8(utf16_units(text), VALUE_BYTES)
    if value_type in (p.REG_U32, p.REG_U64):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"REG_U32/REG_U64 value must be an int, not {type(value).__name__}")
        bits = 32 if value_type == p.REG_U32 else 64
        return str(value & ((1 << bits) - 1)).encode("ascii")  # unsigned decimal
    return None  # REG_EXPAND_SZ, REG_QWORD(11), ...: the kernel sends the value empty
