"""Renderers: pure functions from a Report to text (terminal, JSON, HTML)."""

from __future__ import annotations

from mtqa.types import DocumentReport

__all__: list[str] = ["MIN_CONFIDENCE", "hidden_spans"]

#: the confidence under which ``mtqa check`` hides a span in terminal and HTML output (JSON keeps
#: every span): the lowest tenth at which, on the seed ABC copy with and without the reference,
#: at least 80% of the shown major and of the shown minor spans overlap a hand-annotated garble
#: (benchmarks/seeds_annotation.py --min-confidence; issue 19)
MIN_CONFIDENCE = 0.4


def hidden_spans(d: DocumentReport, min_confidence: float) -> frozenset[int]:
    """Indices of ``d.spans`` under ``min_confidence``, except spans a gate reason names."""
    named = {i for r in d.verdict.reasons for i in r.spans}
    return frozenset(i for i, s in enumerate(d.spans)
                     if s.confidence < min_confidence and i not in named)
