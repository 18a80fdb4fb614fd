"""The JSON report (schema ``mtqa.report/1``): a stable contract, pinned by golden files.

``document_from_dict`` reads a document back (the batch store and ``mtqa gate`` do): the JSON
holds no article text, so the caller passes ``mt`` (and ``ref``) when it has them. It checks the
type of every field it reads: ``"passed": "false"`` is an error, not a verdict.

``to_json`` writes JSON that every consumer reads (a browser's ``JSON.parse``, a line splitter):
no bare ``NaN``/``Infinity`` (a non-finite number, e.g. in a record's extra field, becomes
``null``), and U+2028, U+2029, U+0085 and lone surrogates escaped as ``\\uXXXX``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from types import MappingProxyType

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
    "to_json",
]

#: characters JSON allows raw in strings that break line splitters or JavaScript, or UTF-8
_UNSAFE = re.compile("[\u0085\u2028\u2029\ud800-\udfff]")


def _finite(value: object) -> object:
    """``value`` with every non-finite float replaced by None (JSON has no NaN or Infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def to_json(data: object, *, indent: int | None = None) -> str:
    """Key-sorted UTF-8 JSON (not ASCII-escaped) that strict parsers and line splitters read."""
    try:
        text = json.dumps(data, ensure_ascii=False, sort_keys=True, indent=indent, allow_nan=False)
    except ValueError:  # NOTE: a NaN or Infinity somewhere (rare): sanitise, then write
        text = json.dumps(_finite(data), ensure_ascii=False, sort_keys=True, indent=indent,
                          allow_nan=False)
    # NOTE: these only ever occur inside JSON strings, where an escape means the same character
    return _UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


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
    return to_json(report_to_dict(report), indent=2) + "\n"


def render_jsonl_line(d: DocumentReport) -> str:
    """One document as a single JSONL line (the batch output format)."""
    data = document_to_dict(d)
    data["schema"] = SCHEMA
    return to_json(data) + "\n"


def render_error_line(row: BatchRow) -> str:
    """An input that could not be checked, as a JSONL line of the batch output."""
    data: dict[str, JSONValue] = {"id": row.id, "origin": row.origin, "error": row.error,
                                  "schema": SCHEMA}
    return to_json(data) + "\n"


class _Bad(Exception):
    """A field of the wrong type or value (turned into an InputError naming the field)."""


_MISSING = object()


def _kind(v: object) -> str:
    return "null" if v is None else type(v).__name__


def _field(d: object, key: str, path: str, default: object = _MISSING) -> object:
    if not isinstance(d, Mapping):
        raise _Bad(f"{path or 'the document'} must be a JSON object, not {_kind(d)}")
    name = f"{path}.{key}" if path else key
    if key not in d:
        if default is _MISSING:
            raise _Bad(f"missing field {name!r}")
        return default
    return d[key]


def _name(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _str(d: object, key: str, path: str, default: object = _MISSING) -> str:
    v = _field(d, key, path, default)
    if not isinstance(v, str):
        raise _Bad(f"field {_name(path, key)!r} must be a string, not {_kind(v)}")
    return v


def _opt_str(d: object, key: str, path: str) -> str | None:
    v = _field(d, key, path, None)
    return None if v is None else _str(d, key, path)


def _int(d: object, key: str, path: str) -> int:
    v = _field(d, key, path)
    if isinstance(v, bool) or not isinstance(v, int):
        raise _Bad(f"field {_name(path, key)!r} must be an integer, not {_kind(v)}")
    return v


def _number(v: object, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise _Bad(f"field {name!r} must be a finite number, not {_kind(v)} {v!r}")
    return float(v)


def _num(d: object, key: str, path: str) -> float:
    return _number(_field(d, key, path), _name(path, key))


def _opt_num(d: object, key: str, path: str) -> float | None:
    v = _field(d, key, path, None)
    return None if v is None else _number(v, _name(path, key))


def _bool(d: object, key: str, path: str, default: object = _MISSING) -> bool:
    v = _field(d, key, path, default)
    if not isinstance(v, bool):
        raise _Bad(f"field {_name(path, key)!r} must be true or false, not {_kind(v)} {v!r}")
    return v


def _list(d: object, key: str, path: str, default: object = _MISSING) -> list[object]:
    v = _field(d, key, path, default)
    if not isinstance(v, list):
        raise _Bad(f"field {_name(path, key)!r} must be a list, not {_kind(v)}")
    return v


def _ints(d: object, key: str, path: str) -> tuple[int, ...]:
    items = _list(d, key, path, [])
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in items):
        raise _Bad(f"field {_name(path, key)!r} must be a list of integers")
    return tuple(items)  # type: ignore[arg-type]


def _enum(d: object, key: str, path: str, cls: type[Kind] | type[Severity],
          default: object = _MISSING) -> str:
    v = _str(d, key, path, default)
    allowed = [e.value for e in cls]
    if v not in allowed:
        raise _Bad(f"field {_name(path, key)!r} must be one of {', '.join(allowed)}, not {v!r}")
    return v


def _value(d: object, key: str, path: str) -> float | str:
    v = _field(d, key, path)
    if isinstance(v, str):
        return v
    _number(v, _name(path, key))
    return v  # type: ignore[return-value]  # NOTE: an int stays an int, as the gate wrote it


def _metrics_from(items: Sequence[object], path: str) -> tuple[Metric, ...]:
    return tuple(Metric(_str(m, "name", f"{path}[{k}]"), _num(m, "score", f"{path}[{k}]"),
                        _str(m, "signature", f"{path}[{k}]", ""))
                 for k, m in enumerate(items))


def _reference_from(r: object) -> ReferenceResult | None:
    if r is None:
        return None
    p = "reference"
    coverage = _field(r, "coverage", p, None) or {}
    links = []
    for k, a in enumerate(_list(r, "alignment", p, [])):
        q = f"{p}.alignment[{k}]"
        extra = _field(a, "metrics", q, None) or {}
        if not isinstance(extra, Mapping):
            raise _Bad(f"field {q + '.metrics'!r} must be a JSON object, not {_kind(extra)}")
        links.append(AlignmentLink(
            _int(a, "mt", q), _ints(a, "ref", q), _num(a, "similarity", q),
            tuple(Metric(str(name), _number(v, f"{q}.metrics.{name}"))
                  for name, v in sorted(extra.items()))))
    return ReferenceResult(
        mode=_str(r, "mode", p),
        metrics=_metrics_from(_list(r, "metrics", p, []), f"{p}.metrics"),
        # NOTE: the JSON does not keep paragraph indices of reference sentences
        sentences=tuple(
            Sentence(_int(s, "start", f"{p}.sentences[{k}]"), _int(s, "end", f"{p}.sentences[{k}]"),
                     0, Kind(_enum(s, "kind", f"{p}.sentences[{k}]", Kind, "body")))
            for k, s in enumerate(_list(r, "sentences", p, []))),
        alignment=tuple(links),
        mt_coverage=_opt_num(coverage, "mt", f"{p}.coverage"),
        ref_coverage=_opt_num(coverage, "ref", f"{p}.coverage"),
        unsupported=_ints(r, "unsupported", p),
        missed=_ints(r, "missed", p),
    )


def _verdict_from(v: object) -> Verdict:
    p = "verdict"
    reasons = tuple(
        Reason(rule=_str(r, "rule", f"{p}.reasons[{k}]"), value=_value(r, "value", f"{p}.reasons[{k}]"),
               threshold=_value(r, "threshold", f"{p}.reasons[{k}]"),
               message=_str(r, "message", f"{p}.reasons[{k}]"),
               spans=_ints(r, "spans", f"{p}.reasons[{k}]"),
               blocking=_bool(r, "blocking", f"{p}.reasons[{k}]", True))
        for k, r in enumerate(_list(v, "reasons", p, [])))
    passed = _bool(v, "passed", p)
    if passed and any(r.blocking for r in reasons):
        # NOTE: fail closed: a verdict that contradicts itself is not a pass
        raise _Bad("field 'verdict.passed' is true but the verdict lists blocking reasons")
    return Verdict(passed=passed, reasons=reasons, policy=_str(v, "policy", p, ""))


def _span_from(s: object, k: int) -> Span:
    p = f"spans[{k}]"
    suggestions = _list(s, "suggestions", p, [])
    if not all(isinstance(x, str) for x in suggestions):
        raise _Bad(f"field {p + '.suggestions'!r} must be a list of strings")
    start, end = _int(s, "start", p), _int(s, "end", p)
    if not 0 <= start <= end:
        raise _Bad(f"{p}: offsets {start}-{end} are not a span (0 <= start <= end)")
    return Span(start=start, end=end, text=_str(s, "text", p), category=_str(s, "category", p),
                severity=Severity(_enum(s, "severity", p, Severity)), checker=_str(s, "checker", p),
                message=_str(s, "message", p), confidence=_num(s, "confidence", p),
                rule=_opt_str(s, "rule", p), suggestions=tuple(suggestions))  # type: ignore[arg-type]


def _sentence_from(s: object, k: int) -> SentenceReport:
    p = f"sentences[{k}]"
    return SentenceReport(_int(s, "start", p), _int(s, "end", p), Kind(_enum(s, "kind", p, Kind)),
                          _opt_num(s, "fluency", p), _opt_str(s, "label", p),
                          score=_opt_num(s, "score", p),
                          expected_penalty=_opt_num(s, "expected_penalty", p))


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
        InputError: the data is not a report document (a field is missing or of the wrong
            type, e.g. ``"passed": "false"``), or a span does not match ``mt``.
    """
    try:
        spans = tuple(_span_from(s, k) for k, s in enumerate(_list(data, "spans", "")))
        sentences = tuple(_sentence_from(s, k) for k, s in enumerate(_list(data, "sentences", "")))
        penalty = _opt_num(data, "expected_penalty", "")
        features = {} if penalty is None else {"calibrated.expected_penalty": penalty}
        raw_meta = _field(data, "meta", "", None) or {}
        if not isinstance(raw_meta, Mapping):
            raise _Bad(f"field 'meta' must be a JSON object, not {_kind(raw_meta)}")
        raw_id = _field(data, "id", "")
        if id is None and (isinstance(raw_id, bool) or not isinstance(raw_id, (str, int))):
            raise _Bad(f"field 'id' must be a string, not {_kind(raw_id)}")
        skipped = tuple(Skipped(_str(s, "checker", f"skipped[{k}]"), _str(s, "reason", f"skipped[{k}]"))
                        for k, s in enumerate(_list(data, "skipped", "", [])))
        report = DocumentReport(
            id=str(raw_id) if id is None else id,
            mt=mt or "",
            score=_num(data, "score", ""),
            fluency=_opt_num(data, "fluency", ""),
            sentences=sentences,
            spans=spans,
            reference=_reference_from(_field(data, "reference", "", None)),
            verdict=_verdict_from(_field(data, "verdict", "")),
            skipped=skipped,
            signature=_str(data, "signature", "", ""),
            meta=MappingProxyType(dict(raw_meta) if meta is None else dict(meta)),
            ref=ref, features=MappingProxyType(features),
        )
    except _Bad as exc:
        err = f"not an {SCHEMA} document: {exc}"
        raise InputError(err) from None
    if mt is not None:
        for s in spans:
            if mt[s.start : s.end] != s.text:
                err = (f"document {report.id!r}: span {s.start}-{s.end} {s.text!r} does not match "
                       f"the text ({mt[s.start : s.end]!r}); the result belongs to another text")
                raise InputError(err)
    return report
