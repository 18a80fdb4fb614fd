"""The shared vocabulary: frozen dataclasses passed between every stage.

Offsets are always half-open ``[start, end)`` Python code-point indices into the original
string they refer to (``Document.mt`` unless a field says otherwise).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Union

__all__ = [
    "AlignmentLink",
    "BadRecord",
    "BatchRow",
    "BatchSummary",
    "CheckResult",
    "Document",
    "DocumentReport",
    "Finding",
    "JSONValue",
    "Kind",
    "Metric",
    "Reason",
    "ReferenceResult",
    "Report",
    "SCHEMA",
    "SegmentedDocument",
    "Sentence",
    "SentenceReport",
    "Severity",
    "Skipped",
    "Span",
    "Verdict",
    "WordEvidence",
]

SCHEMA = "mtqa.report/1"

JSONValue = Union[None, bool, int, float, str, list["JSONValue"], dict[str, "JSONValue"]]

_EMPTY: Mapping[str, JSONValue] = MappingProxyType({})


class Severity(str, enum.Enum):
    """How bad a finding is, in MQM's terms."""

    MINOR = "minor"
    MAJOR = "major"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        """0 for minor, 1 for major, 2 for critical."""
        return _SEVERITY_RANK[self]


_SEVERITY_RANK = {Severity.MINOR: 0, Severity.MAJOR: 1, Severity.CRITICAL: 2}


class Kind(str, enum.Enum):
    """Whether a sentence is article text or scraped page furniture."""

    BODY = "body"
    BOILERPLATE = "boilerplate"


@dataclass(frozen=True, slots=True)
class Document:
    """One text to check, as loaded: offsets in every report refer to ``mt`` exactly as given.

    ``ref`` holds zero or more references (a parallel translation or a comparable article).
    ``origin`` names where the document came from (``path`` or ``path:line``) for messages.
    """

    id: str
    mt: str
    ref: tuple[str, ...] = ()
    src: str | None = None
    meta: Mapping[str, JSONValue] = field(default_factory=lambda: _EMPTY)
    origin: str = ""


@dataclass(frozen=True, slots=True)
class BadRecord:
    """An input record that could not be loaded; a batch reports it and goes on."""

    origin: str  # "path" or "path:line"
    message: str


@dataclass(frozen=True, slots=True)
class Sentence:
    """A sentence (or caption/credit line) of a text, with its paragraph index."""

    start: int
    end: int
    paragraph: int
    kind: Kind = Kind.BODY
    why: str | None = None  # why it was labelled boilerplate


@dataclass(frozen=True, slots=True)
class SegmentedDocument:
    """A document split into paragraphs and sentences.

    ``norm`` is a same-length normalised copy of ``doc.mt`` (NBSP to space, curly quotes to straight
    ones, ...): index ``i`` of ``norm`` is index ``i`` of ``doc.mt``, so rules may match on ``norm``
    and report offsets into ``mt`` unchanged.
    """

    doc: Document
    norm: str
    paragraphs: tuple[tuple[int, int], ...]
    sentences: tuple[Sentence, ...]

    @property
    def body(self) -> tuple[Sentence, ...]:
        """The sentences labelled body."""
        return tuple(s for s in self.sentences if s.kind is Kind.BODY)

    def text(self, s: Sentence) -> str:
        """The original text of a sentence."""
        return self.doc.mt[s.start : s.end]


@dataclass(frozen=True, slots=True)
class Finding:
    """A problem a checker found at ``[start, end)`` of ``Document.mt``."""

    start: int
    end: int
    category: str
    severity: Severity
    checker: str
    message: str
    confidence: float = 1.0
    rule: str | None = None
    suggestions: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Metric:
    """One corpus- or sentence-level metric value with its reproducibility signature."""

    name: str
    score: float
    signature: str = ""


@dataclass(frozen=True, slots=True)
class AlignmentLink:
    """``mt`` indexes the document's sentences, each ``ref`` index the reference's sentences."""

    mt: int
    ref: tuple[int, ...]
    similarity: float
    metrics: tuple[Metric, ...] = ()


@dataclass(frozen=True, slots=True)
class ReferenceResult:
    """What the comparison with a reference found (the report's ``reference`` block)."""

    mode: str  # "parallel" | "comparable"
    metrics: tuple[Metric, ...]
    sentences: tuple[Sentence, ...]  # offsets into the (first) reference text
    alignment: tuple[AlignmentLink, ...]
    mt_coverage: float | None = None  # share of mt body sentences supported by the reference
    ref_coverage: float | None = None  # share of reference body sentences covered by mt
    unsupported: tuple[int, ...] = ()  # mt sentence indices with no counterpart
    missed: tuple[int, ...] = ()  # reference sentence indices with no counterpart


@dataclass(frozen=True, slots=True)
class WordEvidence:
    """Raw numbers a checker measured for each word it read, for the calibrated word model
    (``mtqa.calibrate.WordModel``): word ``k`` is ``Document.mt[start[k]:end[k]]`` and has
    ``values[name][k]`` for each named number (NaN where the checker has none). A language
    model checker may add ``expected[k]``: the tokens it found likeliest where word ``k``
    starts, likeliest first (empty: none read)."""

    start: tuple[int, ...]
    end: tuple[int, ...]
    values: Mapping[str, tuple[float, ...]] = field(default_factory=lambda: MappingProxyType({}))
    expected: tuple[tuple[str, ...], ...] = ()


@dataclass(frozen=True, slots=True)
class CheckResult:
    """What one checker found in one document.

    ``sentence_scores`` has one entry per sentence of the segmented document (``None`` where the
    checker gives no score, e.g. boilerplate); ``features`` are raw numbers for calibration, and
    ``sentence_features`` the same per sentence (empty, or one mapping per sentence), ``words``
    the same per word where the checker reads words.
    """

    checker: str
    doc_id: str
    signature: str
    findings: tuple[Finding, ...] = ()
    sentence_scores: tuple[float | None, ...] = ()
    doc_score: float | None = None
    features: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    reference: ReferenceResult | None = None
    sentence_features: tuple[Mapping[str, float], ...] = ()
    words: WordEvidence | None = None


@dataclass(frozen=True, slots=True)
class Skipped:
    """A checker that did not run, and why."""

    checker: str
    reason: str


@dataclass(frozen=True, slots=True)
class Span:
    """A finding as reported: ``text == mt[start:end]``."""

    start: int
    end: int
    text: str
    category: str
    severity: Severity
    checker: str
    message: str
    confidence: float
    rule: str | None = None
    suggestions: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SentenceReport:
    """A sentence in the report: its fluency and calibrated score (0-100, None when not scored).

    ``expected_penalty`` is the MQM penalty the calibration expects a professional rater to give
    this sentence (see ``mtqa.calibrate``); ``score`` is its 0-100 mapping.
    """

    start: int
    end: int
    kind: Kind
    fluency: float | None
    why: str | None = None
    score: float | None = None
    expected_penalty: float | None = None


@dataclass(frozen=True, slots=True)
class Reason:
    """One rule of the gate policy that a document broke (or, when ``blocking`` is false, warned)."""

    rule: str
    value: float | str
    threshold: float | str
    message: str
    spans: tuple[int, ...] = ()  # indices into DocumentReport.spans
    blocking: bool = True


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a document may be published, with every reason."""

    passed: bool
    reasons: tuple[Reason, ...] = ()
    policy: str = ""


@dataclass(frozen=True, slots=True)
class DocumentReport:
    """Everything mtqa says about one document."""

    id: str
    mt: str
    score: float
    fluency: float | None
    sentences: tuple[SentenceReport, ...]
    spans: tuple[Span, ...]
    reference: ReferenceResult | None
    verdict: Verdict
    skipped: tuple[Skipped, ...]
    signature: str
    meta: Mapping[str, JSONValue] = field(default_factory=lambda: _EMPTY)
    features: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    ref: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Report:
    """The result of a run: one DocumentReport per input document, in input order."""

    documents: tuple[DocumentReport, ...]
    schema: str = SCHEMA


@dataclass(frozen=True, slots=True)
class BatchRow:
    """One input of a batch, as summarised: a scored document, or an error with its origin.

    ``spans`` counts the report's spans by severity (minor, major, critical); ``reasons`` holds
    the verdict's reasons; ``page`` is the document's HTML page, relative to the index.
    """

    origin: str
    id: str | None
    score: float | None = None
    fluency: float | None = None
    passed: bool | None = None
    spans: tuple[int, int, int] = (0, 0, 0)
    reasons: tuple[Reason, ...] = ()
    error: str | None = None
    page: str | None = None


@dataclass(frozen=True, slots=True)
class BatchSummary:
    """What a batch run did: one row per input, in input order, and where the outputs went."""

    rows: tuple[BatchRow, ...]
    scored: int  # documents checked in this run
    reused: int  # documents whose results came from the store
    seconds: float
    outputs: tuple[str, ...] = ()
    policy: str = ""

    @property
    def passed(self) -> int:
        """Documents that passed the gate."""
        return sum(1 for r in self.rows if r.passed is True)

    @property
    def failed(self) -> int:
        """Documents that failed the gate."""
        return sum(1 for r in self.rows if r.passed is False)

    @property
    def errors(self) -> tuple[BatchRow, ...]:
        """Inputs that could not be loaded or checked."""
        return tuple(r for r in self.rows if r.error is not None)
