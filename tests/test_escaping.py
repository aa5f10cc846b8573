"""escaping.escape: what reaches a terminal or a line-reading script is one printable line that
still says which bytes are stored."""

from __future__ import annotations

import pytest

from pykvpd.escaping import escape


@pytest.mark.parametrize(
    "given, shown",
    [
        (b"plain text, \xc3\xa4\xc3\xb6 \xe2\x82\xac", "plain text, äö €"),  # printable UTF-8 kept
        ("plain text, äö €", "plain text, äö €"),  # text as well as bytes
        (b"a\tb\nc\\d", "a\\tb\\nc\\\\d"),  # field and line separators, the escape itself
        (b"\x00\x1b[2J\x7f", "\\x00\\x1b[2J\\x7f"),  # C0 controls and DEL
        (b"\xff\xfe", "\\xff\\xfe"),  # not UTF-8: the bytes
        ("\x9b31m", "\\xc2\\x9b31m"),  # a C1 control (8-bit CSI), as its UTF-8 bytes
        ("abc\u202edef", "abc\\xe2\\x80\\xaedef"),  # a bidi override
        ("one\u2028two", "one\\xe2\\x80\\xa8two"),  # a line separator
        ("\udc80", "\\x80"),  # an undecodable byte kept by surrogateescape
        ("\ud800", "\\xed\\xa0\\x80"),  # a lone surrogate in text
        (b"", ""),
    ],
)
def test_escape(given, shown):
    assert escape(given) == shown


def test_escaped_output_is_one_printable_line_for_every_byte():
    every = bytes(range(256)) + "\u0085\u200e\u2029\ufeffé".encode()
    shown = escape(every)
    assert shown.isprintable() and "\n" not in shown and "\t" not in shown
    assert shown.endswith("\\xef\\xbb\\xbfé")  # printable non-ASCII is kept, not escaped
