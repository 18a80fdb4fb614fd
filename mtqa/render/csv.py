"""A batch's CSV summary: one row per input, in input order."""

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


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def render_csv(rows: Sequence[BatchRow]) -> str:
    """The rows as CSV with a header; ``passed`` is ``true``/``false``, empty for errors."""
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        passed = "" if r.passed is None else ("true" if r.passed else "false")
        writer.writerow([r.id or "", r.origin, _cell(r.score), _cell(r.fluency), passed,
                         *r.spans, "; ".join(_reason(x) for x in r.reasons), r.error or ""])
    return buf.getvalue()
