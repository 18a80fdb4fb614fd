"""A batch's CSV summary: one row per input, in input order.

Text cells that a spreadsheet would run as a formula (starting with ``=``, ``+``, ``-``, ``@``, tab
or carriage return, e.g. an id ``=HYPERLINK(...)``) get a leading ``'``, as OWASP's CSV
injection guidance says; numbers are written as they are.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

from mtqa.types import BatchRow, Reason

__all__ = ["CSV_COLUMNS", "render_csv"]

CSV_COLUMNS = ("id", "origin", "score", "fluency", "passed", "minor", "major", "critical",
               "reasons", "error")


def _reason(r: Reason) -> str:
    return f"{r.rule}={r.value} (threshold {r.threshold})"


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _text(value: str | None) -> str:
    """A text cell that a spreadsheet shows as text, never evaluates."""
    text = value or ""
    return "'" + text if text.startswith(_FORMULA_START) else text


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def render_csv(rows: Sequence[BatchRow]) -> str:
    """The rows as CSV with a header; ``passed`` is ``true``/``false``, empty for errors."""
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, lineterminator="\n")
    # NOTE: with "\n" line ends, csv quotes a field holding "\n" but not one holding a bare
    # "\r", which a reader then takes for a line break: such a row has every field quoted
    quoted = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_ALL)
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        passed = "" if r.passed is None else ("true" if r.passed else "false")
        cells = [_text(r.id), _text(r.origin), _cell(r.score), _cell(r.fluency), passed,
                 *map(str, r.spans), _text("; ".join(_reason(x) for x in r.reasons)), _text(r.error)]
        (quoted if any("\r" in c for c in cells) else writer).writerow(cells)
    return buf.getvalue()
