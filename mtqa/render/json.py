"""The JSON report (schema ``mtqa.report/1``): a stable contract, pinned by golden files.

``document_from_dict`` reads a document back (the batch store and ``mtqa gate`` do): the JSON
holds no article text, so the caller passes ``mt`` (and ``ref``) when it has them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from mtqa.errors import InputError
from mtqa.types import (
    SCHEMA,
    AlignmentLink,
    BatchRow,
    DocumentReport,
    JSONValue,
    Kind,
    Metric,
    Reason,
    ReferenceResult,
    Report,
    Sentence,
    SentenceReport,
    Severity,
    Skipped,
    Span,
    Verdict,
)

__all__ = [
    "document_from_dict",
    "document_to_dict",
    "render_error_line",
    "render_json",
    "render_jsonl_line",
    "report_to_dict",
]


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


def _round(x: float | None, digits: int) -> float | None:
    return None if x is None else round(x, digits)


def _opt_float(x: object) -> float | None:
    return None if x is None else float(x)  # type: ignore[arg-type]


def document_to_dict(d: DocumentReport) -> dict[str, JSONValue]:
    """One document of the report as plain data."""
    return {
        "id": d.id,
        "score": round(d.score, 2),
        "fluency": _round(d.fluency, 2),
        "expected_penalty": _round(d.features.get("calibrated.expected_penalty"), 3),
        "sentences": [
            {"start": s.start, "end": s.end, "kind": s.kind.value,
             "fluency": _round(s.fluency, 2), "label": s.why,
             "score": _round(s.score, 2), "expected_penalty": _round(s.expected_penalty, 3)}
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
    data["schema"] = SCHEMA
    return json.dumps(data, ensure_ascii=False, sort_keys=True) + "\n"


def render_error_line(row: BatchRow) -> str:
    """An input that could not be checked, as a JSONL line of the batch output."""
    data: dict[str, JSONValue] = {"id": row.id, "origin": row.origin, "error": row.error,
                                  "schema": SCHEMA}
    return json.dumps(data, ensure_ascii=False, sort_keys=True) + "\n"


def _metrics_from(items: Sequence[Any]) -> tuple[Metric, ...]:
    return tuple(Metric(str(m["name"]), float(m["score"]), str(m.get("signature", "")))
                 for m in items)


def _reference_from(r: Mapping[str, Any] | None) -> ReferenceResult | None:
    if r is None:
        return None
    coverage = r.get("coverage") or {}
    return ReferenceResult(
        mode=str(r["mode"]),
        metrics=_metrics_from(r.get("metrics", [])),
        # NOTE: the JSON does not keep paragraph indices of reference sentences
        sentences=tuple(Sentence(int(s["start"]), int(s["end"]), 0, Kind(s.get("kind", "body")))
                        for s in r.get("sentences", [])),
        alignment=tuple(
            AlignmentLink(int(a["mt"]), tuple(int(j) for j in a["ref"]), float(a["similarity"]),
                          tuple(Metric(str(k), float(v)) for k, v in
                                sorted((a.get("metrics") or {}).items())))
            for a in r.get("alignment", [])),
        mt_coverage=coverage.get("mt"),
        ref_coverage=coverage.get("ref"),
        unsupported=tuple(int(i) for i in r.get("unsupported", [])),
        missed=tuple(int(i) for i in r.get("missed", [])),
    )


def _verdict_from(v: Mapping[str, Any]) -> Verdict:
    reasons = tuple(
        Reason(rule=str(r["rule"]), value=r["value"], threshold=r["threshold"],
               message=str(r["message"]), spans=tuple(int(i) for i in r.get("spans", [])),
               blocking=bool(r.get("blocking", True)))
        for r in v.get("reasons", []))
    return Verdict(passed=bool(v["passed"]), reasons=reasons, policy=str(v.get("policy", "")))


def document_from_dict(
    data: Mapping[str, object],
    *,
    mt: str | None = None,
    ref: tuple[str, ...] = (),
    id: str | None = None,
    meta: Mapping[str, JSONValue] | None = None,
) -> DocumentReport:
    """A DocumentReport from its JSON form (the inverse of ``document_to_dict``).

    Without ``mt`` the report's ``mt`` is empty and only each span's own ``text`` is known.
    ``id`` and ``meta`` replace the stored ones (the batch store is keyed by content, not id).

    Raises:
        InputError: the data is not a report document, or a span does not match ``mt``.
    """
    d: Any = data  # NOTE: parsed JSON; every field is checked by the conversions below
    try:
        spans = tuple(
            Span(start=int(s["start"]), end=int(s["end"]), text=str(s["text"]),
                 category=str(s["category"]), severity=Severity(s["severity"]),
                 checker=str(s["checker"]), message=str(s["message"]),
                 confidence=float(s["confidence"]), rule=s.get("rule"),
                 suggestions=tuple(s.get("suggestions", ())))
            for s in d["spans"])
        sentences = tuple(
            SentenceReport(int(s["start"]), int(s["end"]), Kind(s["kind"]),
                           _opt_float(s.get("fluency")),
                           s.get("label"), score=_opt_float(s.get("score")),
                           expected_penalty=_opt_float(s.get("expected_penalty")))
            for s in d["sentences"])
        features = ({} if d.get("expected_penalty") is None
                    else {"calibrated.expected_penalty": float(d["expected_penalty"])})
        report = DocumentReport(
            id=str(d["id"]) if id is None else id,
            mt=mt or "",
            score=float(d["score"]),
            fluency=_opt_float(d.get("fluency")),
            sentences=sentences,
            spans=spans,
            reference=_reference_from(d.get("reference")),
            verdict=_verdict_from(d["verdict"]),
            skipped=tuple(Skipped(str(s["checker"]), str(s["reason"]))
                          for s in d.get("skipped", [])),
            signature=str(d.get("signature", "")),
            meta=MappingProxyType(dict(d.get("meta") or {}) if meta is None else dict(meta)),
            ref=ref, features=MappingProxyType(features),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        err = f"not an {SCHEMA} document: {type(exc).__name__}: {exc}"
        raise InputError(err) from exc
    if mt is not None:
        for s in spans:
            if mt[s.start : s.end] != s.text:
                err = (f"document {report.id!r}: span {s.start}-{s.end} {s.text!r} does not match "
                       f"the text ({mt[s.start : s.end]!r}); the result belongs to another text")
                raise InputError(err)
    return report
