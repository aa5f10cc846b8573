"""Text from outside (host keys and values, config files) shown as one safe, printable line.

Host-supplied keys and values, and errors that quote them, reach terminals and line-reading
scripts through ``kvp list``/``watch``/``dump``, ``pykvpd status`` and ``pykvpd reload``. A TAB
or LF in them would forge fields or lines; an ESC, a C1 control (U+009B is CSI to an 8-bit
terminal), a bidi override or a line separator would change what the screen shows. So TAB, LF
and the backslash become ``\\t``, ``\\n`` and ``\\\\``, and everything else that is not
printable -- and every byte that is not UTF-8 -- becomes the ``\\xNN`` escapes of its bytes: the
line still tells exactly which bytes are stored.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Union

_NAMED = {"\\": "\\\\", "\n": "\\n", "\t": "\\t"}


def escape(data: Union[str, bytes]) -> str:
    """``data`` (bytes as stored, or text) as one printable line; printable text is kept."""
    text = data if isinstance(data, str) else data.decode("utf-8", "surrogateescape")
    if text.isprintable() and "\\" not in text:
        return text  # the everyday case, at C speed
    out = []
    for ch in text:
        if ch in _NAMED:
            out.append(_NAMED[ch])
        elif ch.isprintable():
            out.append(ch)
        else:
            try:  # an undecodable byte comes back as itself
                raw = ch.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:  # a lone surrogate in text
                raw = ch.encode("utf-8", "surrogatepass")
            out.append("".join(f"\\x{byte:02x}" for byte in raw))
    return "".join(out)
