"""Same-length normalisation: a view of the text that rules can match on without moving offsets."""

from __future__ import annotations

import re

__all__ = ["WORD", "normalize"]

#: the words the calibrated word model reads (``mtqa.calibrate.WordModel``), on normalised text
WORD = re.compile(r"\w+(?:'\w+)*")

# NOTE: every replacement is one code point for one code point, so index i of the normalised
# text is index i of the original and spans found on it need no mapping back.
_TABLE = {
    # spaces scraped pages are full of (the Hill seed has 16 NBSPs)
    **{cp: " " for cp in (0x00A0, 0x2000, 0x2001, 0x2002, 0x2003, 0x2004, 0x2005, 0x2006,
                          0x2007, 0x2008, 0x2009, 0x200A, 0x202F, 0x205F, 0x3000, 0x0009,
                          0x000B, 0x000C)},
    0x000D: "\n",
    0x0085: "\n",
    0x2028: "\n",
    0x2029: "\n",
    # quotes
    0x2018: "'", 0x2019: "'", 0x201A: "'", 0x201B: "'", 0x2032: "'", 0x00B4: "'", 0x0060: "'",
    0x201C: '"', 0x201D: '"', 0x201E: '"', 0x201F: '"', 0x2033: '"', 0x00AB: '"', 0x00BB: '"',
    # dashes and hyphens
    0x2010: "-", 0x2011: "-", 0x2012: "-", 0x2013: "-", 0x2014: "-", 0x2015: "-", 0x2212: "-",
}


def normalize(text: str) -> str:
    """Return ``text`` with odd spaces, curly quotes and dashes made plain, at the same length."""
    out = text.translate(_TABLE)
    # str.translate maps one code point to one string; the table only holds 1-char strings
    assert len(out) == len(text)  # noqa: S101 - internal invariant, not input validation
    return out
