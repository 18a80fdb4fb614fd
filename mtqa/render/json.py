"""The JSON report (schema ``mtqa.report/1``): a stable contract, pinned by golden files."""

from __future__ import annotations

import json
from collections.abc import Mapping

from mtqa.types import (
    AlignmentLink,
    DocumentReport,
    JSONValue,
    Metric,
    ReferenceResult,
    Report,
    Span,
    Verdict,
)

__all__ = ["document_to_dict", "render_json", "render_jsonl_line", "report_to_dict"]


def _metric(m: Metric) -> dict[str, JSONValue]:
    return {"name": m.name, "score": round(m.score, 4), "signature": m.signature}


def _link(a: AlignmentLink) -> dict[str, JSONValue]:
    out: dict[str, JSONValue] = {"mt": a.mt, "ref": list(a.ref), "similarity": round(a.similarity, 4)}
    if a.metrics:
        out["metrics"] = {m.name: round(m.score, 4) for m in a.metrics}
    return out


def _reference(r: ReferenceResult | None) -> dict[str, JSONValue] | None:
    if r is None:
        return None
    return {
        "mode": r.mode,
        "metrics": [_metric(m) for m in r.metrics],
        "coverage": {
            "mt": None if r.mt_coverage is None else round(r.mt_coverage, 4),
            "ref": None if r.ref_coverage is None else round(r.ref_coverage, 4),
        },
        "sentences": [{"start": s.start, "end": s.end, "kind": s.kind.value} for s in r.sentences],
        "alignment": [_link(a) for a in r.alignment],
        "unsupported": list(r.unsupported),
        "missed": list(r.missed),
    }


def _span(s: Span) -> dict[str, JSONValue]:
    return {
        "start": s.start, "end": s.end, "text": s.text, "category": s.category,
        "severity": s.severity.value, "checker": s.checker, "message": s.message,
        "confidence": round(s.confidence, 4), "rule": s.rule, "suggestions": list(s.suggestions),
    }


def _verdict(v: Verdict) -> dict[str, JSONValue]:
    return {
        "passed": v.passed,
        "policy": v.policy,
        "reasons": [
            {"rule": r.rule, "value": r.value, "threshold": r.threshold, "message": r.message,
             "spans": list(r.spans), "blocking": r.blocking}
            for r in v.reasons
        ],
    }


def _plain(meta: Mapping[str, JSONValue]) -> dict[str, JSONValue]:
    return dict(meta)


def document_to_dict(d: DocumentReport) -> dict[str, JSONValue]:
    """One document of the report as plain data."""
    return {
        "id": d.id,
        "score": round(d.score, 2),
        "fluency": None if d.fluency is None else round(d.fluency, 2),
        "sentences": [
            {"start": s.start, "end": s.end, "kind": s.kind.value,
             "fluency": None if s.fluency is None else round(s.fluency, 2), "label": s.why}
            for s in d.sentences
        ],
        "spans": [_span(s) for s in d.spans],
        "reference": _reference(d.reference),
        "verdict": _verdict(d.verdict),
        "skipped": [{"checker": s.checker, "reason": s.reason} for s in d.skipped],
        "signature": d.signature,
        "meta": _plain(d.meta),
    }


def report_to_dict(report: Report) -> dict[str, JSONValue]:
    """The whole report as plain data."""
    return {"schema": report.schema, "documents": [document_to_dict(d) for d in report.documents]}


def render_json(report: Report) -> str:
    """The report as pretty, key-sorted JSON (UTF-8 text, not ASCII-escaped)."""
    return json.dumps(report_to_dict(report), ensure_ascii=False, sort_keys=True, indent=2) + "\n"


def render_jsonl_line(d: DocumentReport) -> str:
    """One document as a single JSONL line (the batch output format)."""
    data = document_to_dict(d)
    data["schema"] = "mtqa.report/1"
    return json.dumps(data, ensure_ascii=False, sort_keys=True) + "\n"
