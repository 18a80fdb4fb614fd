"""Meta-evaluation against MQM human judgments: correlations, span F1, bootstrap intervals.

Data format (JSONL, one annotated translation per line; the format of ``shared/data``)::

    {"doc_id": str, "seg_id": int|str, "system": str, "source": str, "hypothesis": str,
     "reference": str, "mqm": float,                       # penalty: 0 perfect, higher worse
     "errors": [{"start": int, "end": int, "severity": "minor"|"major"|"critical",
                 "category": str, "side": "target"|"source"}, ...]}

``doc_seg_id`` and extra fields are optional. Offsets of ``side == "target"`` errors are
``[start, end)`` code points into ``hypothesis``.

Figures, as WMT computes them:

- Pearson and Kendall's tau-b between a metric and ``-mqm``, pooled over all lines;
- within-segment Kendall: tau over the systems of each ``seg_id``, averaged over segments;
- pairwise accuracy: over all pairs of systems on the same segment whose MQM differs, the share
  the metric orders the same way (a metric tie counts as half);
- character-level span precision/recall/F1 (WMT23 QE task 2): a predicted error character on a
  gold error character counts 1 when the severities agree and 0.5 when they do not; against
  every gold error, and against the errors English alone can show (``visible_without_reference``:
  fluency, style, non-translation), which is what a reference-free checker can find;
- span confidence calibration (``confidence_bins``): the spans binned by their confidence, with
  the share of their characters on gold error characters (the observed precision) beside the
  mean confidence, which a calibrated confidence matches;
- a 95% bootstrap interval for each, resampling segments (all systems of a segment together).
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
from numpy.typing import NDArray

from mtqa.config import Settings
from mtqa.errors import InputError
from mtqa.types import BadRecord, DocumentReport, JSONValue

__all__ = [
    "ALL_GOLD",
    "CONFIDENCE_EDGES",
    "VISIBLE_GOLD",
    "VISIBLE_TAG",
    "ConfidenceBin",
    "Evaluation",
    "GoldError",
    "MetricFigures",
    "MqmRecord",
    "Paragraph",
    "SpanFigures",
    "baselines",
    "confidence_bins",
    "correlations",
    "evaluate",
    "evaluate_reports",
    "evaluation_to_dict",
    "kendall",
    "load_mqm",
    "pairwise_accuracy",
    "pearson",
    "render_evaluation",
    "score_records",
    "span_scores",
    "visible_without_reference",
    "within_segment_kendall",
]

#: numbers a metric takes: a list or a numpy array
Floats = Union[Sequence[float], NDArray[np.float64]]

_SEVERITIES = {"minor": "minor", "major": "major", "critical": "critical",
               "neutral": "minor", "no-error": "minor"}


@dataclass(frozen=True, slots=True)
class GoldError:
    """One annotated error on the target side."""

    start: int
    end: int
    severity: str
    category: str


@dataclass(frozen=True, slots=True)
class MqmRecord:
    """One annotated translation."""

    doc_id: str
    seg_id: str
    system: str
    source: str
    hypothesis: str
    reference: str
    mqm: float
    errors: tuple[GoldError, ...]


def _mqm_error(path: str, what: str) -> InputError:
    return InputError(f"{path}: not an MQM record: {what}")


def _id_field(r: Mapping[str, object], key: str, where: str) -> str:
    v = r.get(key)
    if isinstance(v, bool) or not isinstance(v, (str, int)) or v == "":
        raise _mqm_error(where, f"field {key!r} must be a non-empty string or an integer, "
                                f"not {v!r}")
    return str(v)


def _text_field(r: Mapping[str, object], key: str, where: str, *, required: bool) -> str:
    v = r.get(key)
    if v is None and not required:
        return ""
    if not isinstance(v, str):
        raise _mqm_error(where, f"field {key!r} must be a string, not "
                                f"{'null' if v is None else type(v).__name__}")
    return v


def _gold_errors(r: Mapping[str, object], hypothesis: str, where: str) -> tuple[GoldError, ...]:
    raw = r.get("errors", [])
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise _mqm_error(where, f"field 'errors' must be a list, not {type(raw).__name__}")
    out: list[GoldError] = []
    for k, e in enumerate(raw):
        at = f"errors[{k}]"
        if not isinstance(e, dict):
            raise _mqm_error(where, f"{at} must be a JSON object, not {type(e).__name__}")
        side = e.get("side", "target")
        if side not in ("target", "source"):
            raise _mqm_error(where, f"{at}.side must be 'target' or 'source', not {side!r}")
        severity = e.get("severity", "minor")
        if not isinstance(severity, str):
            raise _mqm_error(where, f"{at}.severity must be a string, not {severity!r}")
        category = e.get("category", "")
        if not isinstance(category, (str, type(None))):
            raise _mqm_error(where, f"{at}.category must be a string, not {category!r}")
        start, end = e.get("start"), e.get("end")
        if start is None and end is None:
            continue  # NOTE: an error with no location (e.g. an omission) has no characters
        if (not isinstance(start, int) or not isinstance(end, int) or isinstance(start, bool)
                or isinstance(end, bool)):
            raise _mqm_error(where, f"{at}: start and end must be integers, not {start!r}, {end!r}")
        if side != "target":
            continue
        if not 0 <= start <= end <= len(hypothesis):
            raise _mqm_error(where, f"{at}: offsets {start}-{end} are outside the hypothesis "
                                    f"({len(hypothesis)} characters)")
        if end > start:
            out.append(GoldError(start, end, _SEVERITIES.get(severity.lower(), "minor"),
                                 category or ""))
    return tuple(out)


def _mqm_record(r: object, where: str) -> MqmRecord:
    if not isinstance(r, dict):
        raise _mqm_error(where, f"expected a JSON object, got {type(r).__name__}")
    hypothesis = _text_field(r, "hypothesis", where, required=True)
    mqm = r.get("mqm")
    if isinstance(mqm, bool) or not isinstance(mqm, (int, float)) or not math.isfinite(mqm):
        raise _mqm_error(where, f"field 'mqm' must be a finite number, not {mqm!r}")
    if mqm < 0:
        raise _mqm_error(where, f"field 'mqm' is {mqm}: an MQM penalty is 0 (perfect) or more")
    return MqmRecord(_id_field(r, "doc_id", where), _id_field(r, "seg_id", where),
                     _id_field(r, "system", where), _text_field(r, "source", where, required=False),
                     hypothesis, _text_field(r, "reference", where, required=False), float(mqm),
                     _gold_errors(r, hypothesis, where))


def load_mqm(path: Path, *, limit: int | None = None) -> list[MqmRecord]:
    """Read an MQM JSONL file; a malformed line is an InputError naming the file and line.

    The file must be a regular UTF-8 file (binary, Latin-1 and empty files are refused as for
    any input); each line's fields are checked for type and range: ``hypothesis`` a string,
    ``mqm`` a finite penalty >= 0, each target error's offsets inside the hypothesis.
    """
    from mtqa.io import iter_json_lines, read_text

    out: list[MqmRecord] = []
    for item in iter_json_lines(path, read_text(path)):
        if isinstance(item, BadRecord):
            why = item.message.removeprefix(f"{item.origin}: ")
            err = f"{item.origin}: not an MQM record: {why}"
            raise InputError(err)
        where, r = item
        out.append(_mqm_record(r, where))
        if limit is not None and len(out) >= limit:
            break
    return out


def pearson(x: Floats, y: Floats) -> float:
    """Pearson's r (nan when either side is constant)."""
    a, b = np.asarray(x, float), np.asarray(y, float)
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return math.nan
    return float(np.corrcoef(a, b)[0, 1])


def kendall(x: Floats, y: Floats) -> float:
    """Kendall's tau-b (nan when either side is constant)."""
    from scipy.stats import kendalltau

    if len(x) < 2:
        return math.nan
    tau = kendalltau(x, y).statistic
    return float(tau) if tau == tau else math.nan


def _groups(seg_ids: Sequence[str]) -> list[np.ndarray]:
    index: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(seg_ids):
        index[s].append(i)
    return [np.asarray(v) for v in index.values()]


def _segment_stats(a: NDArray[np.float64], b: NDArray[np.float64],
                   groups: Sequence[NDArray[np.int64]]) -> tuple[NDArray[np.float64], ...]:
    """Per segment: Kendall tau (nan when undefined), agreeing and total pairs."""
    taus = np.array([kendall(a[g], b[g]) if len(g) > 1 else math.nan for g in groups])
    agree = np.zeros(len(groups))
    total = np.zeros(len(groups))
    for k, g in enumerate(groups):
        da = np.sign(a[g][:, None] - a[g][None, :])
        db = np.sign(b[g][:, None] - b[g][None, :])
        mask = np.triu(db != 0, k=1)
        total[k] = mask.sum()
        agree[k] = ((da == db) & mask).sum() + 0.5 * ((da == 0) & mask).sum()
    return taus, agree, total


def within_segment_kendall(x: Floats, y: Floats, seg_ids: Sequence[str]) -> float:
    """Kendall's tau over the systems of each segment, averaged (segments with ties only skipped)."""
    taus = _segment_stats(np.asarray(x, float), np.asarray(y, float), _groups(seg_ids))[0]
    taus = taus[~np.isnan(taus)]
    return float(taus.mean()) if len(taus) else math.nan


def pairwise_accuracy(x: Floats, y: Floats, seg_ids: Sequence[str]) -> float:
    """Share of same-segment system pairs with different MQM that the metric orders alike."""
    _, agree, total = _segment_stats(np.asarray(x, float), np.asarray(y, float), _groups(seg_ids))
    return float(agree.sum() / total.sum()) if total.sum() else math.nan


@dataclass(frozen=True, slots=True)
class MetricFigures:
    """Segment-level agreement of one metric with ``-mqm``, with 95% bootstrap intervals."""

    name: str
    pearson: float
    kendall: float
    within_kendall: float
    pairwise_accuracy: float
    ci: dict[str, tuple[float, float]]


def correlations(name: str, metric: Sequence[float], human: Sequence[float],
                 seg_ids: Sequence[str], *, samples: int = 200, seed: int = 0) -> MetricFigures:
    """All segment-level figures of one metric against human scores (higher = better on both).

    The bootstrap resamples whole segments; a resampled segment's within-segment tau and pairs
    are its own (computed once), so a segment drawn twice counts twice.
    """
    a, b = np.asarray(metric, float), np.asarray(human, float)
    groups = _groups(seg_ids)
    taus, agree, total = _segment_stats(a, b, groups)

    def figures(pick: NDArray[np.int64] | None) -> dict[str, float]:
        if pick is None:
            x, y, t, ag, tot = a, b, taus, agree, total
        else:
            idx = np.concatenate([groups[i] for i in pick])
            x, y, t, ag, tot = a[idx], b[idx], taus[pick], agree[pick], total[pick]
        t = t[~np.isnan(t)]
        return {"pearson": pearson(x, y), "kendall": kendall(x, y),
                "within_kendall": float(t.mean()) if len(t) else math.nan,
                "pairwise_accuracy": float(ag.sum() / tot.sum()) if tot.sum() else math.nan}

    point = figures(None)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {k: [] for k in point}
    for _ in range(samples):
        for k, v in figures(rng.integers(0, len(groups), len(groups))).items():
            if v == v:
                draws[k].append(v)
    ci = {k: ((float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))) if v
              else (math.nan, math.nan)) for k, v in draws.items()}
    return MetricFigures(name, point["pearson"], point["kendall"], point["within_kendall"],
                         point["pairwise_accuracy"], ci)


@dataclass(frozen=True, slots=True)
class SpanFigures:
    """Character-level span agreement (severity mismatch counted half)."""

    precision: float
    recall: float
    f1: float
    major_precision: float
    predicted_chars: int
    gold_chars: int


_RANK = {"minor": 1, "major": 2, "critical": 2}  # critical counts as major


def _char_severity(length: int, spans: Iterable[tuple[int, int, str]]) -> NDArray[np.int8]:
    """Per character: 0 no span, 1 minor, 2 major (the most severe span covering it)."""
    out = np.zeros(length, dtype=np.int8)
    for s, e, sev in spans:
        s, e = max(s, 0), min(e, length)
        if e > s:
            np.maximum(out[s:e], _RANK[sev], out=out[s:e])
    return out


def span_scores(texts: Sequence[str], predicted: Sequence[Iterable[tuple[int, int, str]]],
                gold: Sequence[Iterable[tuple[int, int, str]]], *,
                ignore_severity: bool = False) -> SpanFigures:
    """Micro-averaged character P/R/F1 over a corpus; ``critical`` counts as ``major``.

    With ``ignore_severity`` every overlapping character counts 1 (the "flag everything" floor
    of the data README is computed that way).
    """
    credit = pred_n = gold_n = major_pred = major_hit = 0.0
    for text, p, g in zip(texts, predicted, gold):
        pc = _char_severity(len(text), p)
        gc = _char_severity(len(text), g)
        hit = (pc > 0) & (gc > 0)
        pred_n += float(np.count_nonzero(pc))
        gold_n += float(np.count_nonzero(gc))
        major_pred += float(np.count_nonzero(pc == 2))
        major_hit += float(np.count_nonzero((pc == 2) & (gc > 0)))
        same = float(np.count_nonzero(hit & (pc == gc)))
        other = float(np.count_nonzero(hit)) - same
        credit += same + other * (1.0 if ignore_severity else 0.5)
    precision = credit / pred_n if pred_n else 0.0
    recall = credit / gold_n if gold_n else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return SpanFigures(precision, recall, f1, major_hit / major_pred if major_pred else math.nan,
                       int(pred_n), int(gold_n))


#: MQM category families an English reader can see without the source or a reference (issue
#: 19); accuracy, terminology and locale errors need one
_VISIBLE_FAMILIES = ("fluency/", "style/")
_VISIBLE_CATEGORIES = frozenset({"non-translation", "accuracy/untranslated"})


def visible_without_reference(category: str) -> bool:
    """Whether an MQM error of ``category`` shows in the translation alone: the reference-free
    span target. ``Fluency/*``, ``Style/*`` and non-translation (WMT writes ``Non_translation``;
    untranslated words are the same error at word scale); case, ``_``/``-`` and a trailing
    ``!`` are not told apart. Mistranslations, additions, terminology and locale errors are not:
    English alone cannot show them."""
    c = category.strip().lower().replace("_", "-").rstrip("!")
    return c.startswith(_VISIBLE_FAMILIES) or c in _VISIBLE_CATEGORIES


#: bin edges of ``confidence_bins``
CONFIDENCE_EDGES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


@dataclass(frozen=True, slots=True)
class ConfidenceBin:
    """The spans whose confidence is in ``[low, high)`` (the last bin holds 1.0 too).

    ``precision`` is the share of their characters on gold error characters (severity
    ignored), ``confidence`` their mean confidence weighted by characters: for calibrated
    confidences the two agree. ``overlap`` is the share of spans touching a gold error.
    ``shown_*`` describe every span at or above ``low``: what ``--min-confidence low`` shows.
    """

    low: float
    high: float
    spans: int
    chars: int
    confidence: float
    precision: float
    overlap: float
    shown_spans: int
    shown_precision: float


def confidence_bins(texts: Sequence[str],
                    predicted: Sequence[Iterable[tuple[int, int, float]]],
                    gold: Sequence[Iterable[tuple[int, int, str]]],
                    edges: Sequence[float] = CONFIDENCE_EDGES) -> tuple[ConfidenceBin, ...]:
    """Predicted confidence against observed precision, over ``(start, end, confidence)`` spans."""
    n = len(edges) - 1
    spans = np.zeros(n)
    chars = np.zeros(n)
    conf = np.zeros(n)
    on_gold = np.zeros(n)
    touching = np.zeros(n)
    for text, p, g in zip(texts, predicted, gold):
        gc = _char_severity(len(text), g) > 0
        for s, e, c in p:
            s, e = max(s, 0), min(e, len(text))
            if e <= s:
                continue
            k = min(max(int(np.searchsorted(edges, c, side="right")) - 1, 0), n - 1)
            hit = float(np.count_nonzero(gc[s:e]))
            spans[k] += 1
            chars[k] += e - s
            conf[k] += c * (e - s)
            on_gold[k] += hit
            touching[k] += hit > 0

    def share(a: float, b: float) -> float:
        return a / b if b else math.nan

    out = []
    for k in range(n):
        shown = slice(k, n)
        out.append(ConfidenceBin(
            float(edges[k]), float(edges[k + 1]), int(spans[k]), int(chars[k]),
            share(conf[k], chars[k]), share(on_gold[k], chars[k]), share(touching[k], spans[k]),
            int(spans[shown].sum()), share(float(on_gold[shown].sum()), float(chars[shown].sum()))))
    return tuple(out)


#: names of the two golds spans are scored against, and the tag of span figures against the second
ALL_GOLD = "all errors"
VISIBLE_GOLD = "fluency, style, non-translation"
VISIBLE_TAG = "[visible]"


@dataclass(frozen=True, slots=True)
class Evaluation:
    """Every figure of one ``mtqa evaluate`` run."""

    data: str
    lines: int
    segments: int
    with_reference: bool
    metrics: tuple[MetricFigures, ...]
    spans: dict[str, SpanFigures]
    seconds: float
    signature: str
    #: which lines: "all", or the calibration's "train" / "held-out" documents
    split: str = "all"
    #: what one document is: "sentence" (an MQM line) or "paragraph" (``paragraph_units``)
    units: str = "sentence"
    #: confidence calibration of the reported spans, against each gold (ALL_GOLD, VISIBLE_GOLD)
    bins: Mapping[str, tuple[ConfidenceBin, ...]] = dataclasses.field(default_factory=dict)


def baselines(records: Sequence[MqmRecord], *, with_reference: bool) -> dict[str, list[float]]:
    """Scores of the standard baselines, computed in the same run: length, and sacreBLEU metrics."""
    out: dict[str, list[float]] = {"-length": [-float(len(r.hypothesis)) for r in records]}
    if with_reference:
        import sacrebleu

        out["sentence BLEU"] = [sacrebleu.sentence_bleu(r.hypothesis, [r.reference]).score
                                for r in records]
        out["chrF"] = [sacrebleu.sentence_chrf(r.hypothesis, [r.reference]).score for r in records]
        # NOTE: sacreBLEU's numbers (tests/test_evaluate.py), from the reference checker's batched
        # shift search: sacrebleu.sentence_ter takes a minute on the 8,450-line file
        from mtqa.ter import sentence_ter

        out["-TER"] = [-t for t in sentence_ter([r.hypothesis for r in records],
                                                [r.reference for r in records])]
    return out


def evaluate(
    records: Sequence[MqmRecord],
    scores: Mapping[str, Sequence[float]],
    spans: Mapping[str, Sequence[Iterable[tuple[int, int, str]]]],
    *,
    data: str,
    with_reference: bool,
    seconds: float,
    signature: str,
    samples: int = 200,
    confidences: Sequence[Iterable[tuple[int, int, float]]] | None = None,
) -> Evaluation:
    """Figures for each named score (and the baselines) and each named span prediction.

    Spans are scored against every gold error and, under names ending ``VISIBLE_TAG``,
    against the errors English alone shows; ``confidences`` (each line's
    ``(start, end, confidence)`` spans) adds the confidence calibration against both.
    """
    if not records:
        err = (f"{data}: no lines to evaluate (a file of human translations only, systems "
               f"ref-*, needs --include-human)")
        raise InputError(err)
    human = [-r.mqm for r in records]
    seg_ids = [r.seg_id for r in records]
    all_scores = {**scores, **baselines(records, with_reference=with_reference)}
    metrics = tuple(correlations(name, values, human, seg_ids, samples=samples)
                    for name, values in all_scores.items())
    texts = [r.hypothesis for r in records]
    gold = [[(e.start, e.end, e.severity) for e in r.errors] for r in records]
    visible = [[(e.start, e.end, e.severity) for e in r.errors
                if visible_without_reference(e.category)] for r in records]
    flag_all = [[(0, len(t), "minor")] for t in texts]
    span_figs: dict[str, SpanFigures] = {}
    for name, pred in spans.items():
        pred = [list(p) for p in pred]
        span_figs[name] = span_scores(texts, pred, gold)
        span_figs[f"{name} {VISIBLE_TAG}"] = span_scores(texts, pred, visible)
    span_figs["flag everything (severity ignored)"] = span_scores(texts, flag_all, gold,
                                                                   ignore_severity=True)
    span_figs[f"flag everything {VISIBLE_TAG}"] = span_scores(texts, flag_all, visible,
                                                               ignore_severity=True)
    bins: dict[str, tuple[ConfidenceBin, ...]] = {}
    if confidences is not None:
        conf = [list(c) for c in confidences]
        bins = {ALL_GOLD: confidence_bins(texts, conf, gold),
                VISIBLE_GOLD: confidence_bins(texts, conf, visible)}
    return Evaluation(data, len(records), len(set(seg_ids)), with_reference, metrics, span_figs,
                      seconds, signature, bins=bins)


def score_records(
    records: Sequence[MqmRecord],
    settings: Settings,
    *,
    with_reference: bool,
    chunk: int = 256,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[DocumentReport], str]:
    """Run mtqa on every hypothesis (with its reference when asked); reports in input order.

    A hypothesis several systems produced word for word (with the same reference) is checked
    once and its report copied under each record's id (15% of the WMT21 zh-en lines).
    """
    from mtqa.pipeline import Checker
    from mtqa.types import Document

    if not records:  # NOTE: evaluate() says why, naming the file; no models to load for that
        return [], ""
    if with_reference and settings.ref_mode == "auto":
        # NOTE: an MQM reference translates the same source line: parallel, never comparable
        settings = dataclasses.replace(settings, ref_mode="parallel")

    def ref_of(r: MqmRecord) -> tuple[str, ...]:
        return (r.reference,) if with_reference and r.reference else ()

    first: dict[tuple[str, tuple[str, ...]], int] = {}
    copies: dict[int, int] = {}
    for i, r in enumerate(records):
        k = first.setdefault((r.hypothesis, ref_of(r)), i)
        copies[k] = copies.get(k, 0) + 1
    unique = sorted(first.values())
    done: dict[int, DocumentReport] = {}
    with Checker(settings) as checker:
        for start in range(0, len(unique), chunk):
            part = [records[i] for i in unique[start : start + chunk]]
            docs = [Document(id=f"{r.seg_id}:{r.system}", mt=r.hypothesis, ref=ref_of(r))
                    for r in part]
            done.update(zip(unique[start : start + chunk], checker.check_many(docs).documents))
            if progress is not None:
                progress(sum(copies[i] for i in unique[start : start + chunk]))
    reports = []
    for i, r in enumerate(records):
        k = first[(r.hypothesis, ref_of(r))]
        reports.append(done[k] if k == i else
                       dataclasses.replace(done[k], id=f"{r.seg_id}:{r.system}"))
    signature = reports[0].signature if reports else ""
    return reports, signature


#: sentences per paragraph unit (``paragraph_units``, issue 22)
PARAGRAPH_SIZES = (2, 8)
_FINAL = (".", "!", "?", '"', "'", "\u201d", "\u2019", ")", ":", ";")


@dataclass(frozen=True, slots=True)
class Paragraph:
    """Consecutive segments of one document and system joined as one MQM record.

    ``record`` is the joined record (``seg_id`` names the run of segments, the same for every
    system, so within-segment figures compare systems on the same paragraph; ``mqm`` is the
    sum; gold spans are shifted); ``lines`` are the indices of the joined records, ``ranges``
    each line's characters in the joined hypothesis.
    """

    record: MqmRecord
    lines: tuple[int, ...]
    ranges: tuple[tuple[int, int], ...]


def _join(texts: Sequence[str], seps: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    parts: list[str] = []
    ranges: list[tuple[int, int]] = []
    pos = 0
    for k, t in enumerate(texts):
        if k:
            parts.append(seps[k])
            pos += len(seps[k])
        ranges.append((pos, pos + len(t)))
        parts.append(t)
        pos += len(t)
    return "".join(parts), ranges


def paragraph_units(records: Sequence[MqmRecord], *, seed: int = 22) -> list[Paragraph]:
    """Paragraphs of 2-8 consecutive segments from line-level MQM records.

    Each document's segments (in file order) are cut into runs of ``PARAGRAPH_SIZES`` (sizes
    drawn from a generator seeded by the document id, so every system's paragraphs cover the
    same segments; a last run of one segment joins the one before, or takes its last segment
    when that one is full). Lines are joined by a
    space after a sentence end and by a new line otherwise (a headline stays its own line),
    the same in the hypothesis and the reference, so a parallel reference still pairs line
    with line. A run a system lacks a segment of is left out for that system.
    """
    import random

    by_doc: dict[str, dict[str, dict[str, int]]] = {}
    order: dict[str, list[str]] = {}
    for i, r in enumerate(records):
        by_doc.setdefault(r.doc_id, {}).setdefault(r.system, {})[r.seg_id] = i
        segs = order.setdefault(r.doc_id, [])
        if r.seg_id not in segs:
            segs.append(r.seg_id)
    out: list[Paragraph] = []
    for doc, segs in order.items():
        rng = random.Random(f"{seed}:{doc}")
        runs: list[list[str]] = []
        k = 0
        while k < len(segs):
            n = rng.randint(*PARAGRAPH_SIZES)
            runs.append(segs[k : k + n])
            k += n
        if len(runs) > 1 and len(runs[-1]) == 1:
            if len(runs[-2]) < PARAGRAPH_SIZES[1]:
                runs[-2].extend(runs.pop())
            else:
                runs[-1].insert(0, runs[-2].pop())
        for system, lines in sorted(by_doc[doc].items()):
            for run in runs:
                if not all(seg in lines for seg in run):
                    continue
                idx = tuple(lines[seg] for seg in run)
                rs = [records[i] for i in idx]
                seps = [""] + [" " if a.hypothesis.rstrip().endswith(_FINAL)
                               and a.reference.rstrip().endswith(_FINAL) else "\n"
                               for a in rs[:-1]]
                mt, ranges = _join([r.hypothesis for r in rs], seps)
                ref, _ = _join([r.reference for r in rs], seps)
                source, _ = _join([r.source for r in rs], seps)
                errors = tuple(dataclasses.replace(e, start=a + e.start, end=a + e.end)
                               for r, (a, _b) in zip(rs, ranges) for e in r.errors)
                joined = MqmRecord(doc_id=doc, seg_id=f"{doc}:{run[0]}-{run[-1]}",
                                   system=system, source=source, hypothesis=mt, reference=ref,
                                   mqm=float(sum(r.mqm for r in rs)), errors=errors)
                out.append(Paragraph(joined, idx, tuple(ranges)))
    return out


def split_records(records: Sequence[MqmRecord], held_out_docs: Sequence[str], split: str
                  ) -> list[MqmRecord]:
    """The records of one side of a document split: ``all``, ``train`` or ``held-out``."""
    if split == "all":
        return list(records)
    held = set(held_out_docs)
    if split == "held-out":
        return [r for r in records if r.doc_id in held]
    if split == "train":
        return [r for r in records if r.doc_id not in held]
    raise ValueError(f"unknown split {split!r}")


def evaluate_reports(records: Sequence[MqmRecord], reports: Sequence[DocumentReport], *,
                     data: str, with_reference: bool, seconds: float,
                     samples: int = 200) -> Evaluation:
    """Figures of mtqa's scores and spans (and the baselines) against the MQM annotation."""
    scores: dict[str, list[float]] = {"mtqa score": [d.score for d in reports]}
    if any(s.expected_penalty is not None for d in reports for s in d.sentences):
        # NOTE: an MQM score is per segment, and a segment may hold several sentences: the
        # segment's expected penalty is the sum over its sentences (the score uses their mean)
        scores["-mtqa expected penalty"] = [
            -sum(s.expected_penalty or 0.0 for s in d.sentences) for d in reports]
    if all(d.fluency is not None for d in reports):
        scores["mtqa fluency"] = [float(d.fluency or 0.0) for d in reports]
    spans = {
        "mtqa spans": [[(s.start, s.end, s.severity.value) for s in d.spans] for d in reports],
        "mtqa major spans": [[(s.start, s.end, s.severity.value) for s in d.spans
                              if s.severity.value != "minor"] for d in reports],
    }
    confidences = [[(s.start, s.end, s.confidence) for s in d.spans] for d in reports]
    signature = reports[0].signature if reports else ""
    return evaluate(records, scores, spans, data=data, with_reference=with_reference,
                    seconds=seconds, signature=signature, samples=samples,
                    confidences=confidences)


def evaluation_to_dict(e: Evaluation) -> dict[str, JSONValue]:
    """Plain data for ``--format json``."""
    def r(x: float) -> float | None:
        return None if x != x else round(x, 4)

    return {
        "schema": "mtqa.evaluation/1",
        "data": e.data, "lines": e.lines, "segments": e.segments,
        "with_reference": e.with_reference, "seconds": round(e.seconds, 1),
        "signature": e.signature, "split": e.split, "units": e.units,
        "metrics": [
            {"name": m.name, "pearson": r(m.pearson), "kendall": r(m.kendall),
             "within_kendall": r(m.within_kendall), "pairwise_accuracy": r(m.pairwise_accuracy),
             "ci95": {k: [r(lo), r(hi)] for k, (lo, hi) in m.ci.items()}}
            for m in e.metrics
        ],
        "spans": {
            name: {"precision": r(f.precision), "recall": r(f.recall), "f1": r(f.f1),
                   "major_precision": r(f.major_precision), "predicted_chars": f.predicted_chars,
                   "gold_chars": f.gold_chars}
            for name, f in e.spans.items()
        },
        "confidence_bins": {
            gold: [{"low": b.low, "high": b.high, "spans": b.spans, "chars": b.chars,
                    "confidence": r(b.confidence), "precision": r(b.precision),
                    "overlap": r(b.overlap), "shown_spans": b.shown_spans,
                    "shown_precision": r(b.shown_precision)} for b in bins]
            for gold, bins in e.bins.items()
        },
    }


def render_evaluation(e: Evaluation) -> str:
    """A plain-text table of the figures, mtqa beside the baselines."""
    def ci(m: MetricFigures, key: str) -> str:
        lo, hi = m.ci[key]
        return f"[{lo:+.3f},{hi:+.3f}]"

    lines = [
        f"mtqa evaluate: {e.data}{'' if e.split == 'all' else f' ({e.split} documents)'}  "
        f"{e.lines} {'lines' if e.units == 'sentence' else 'paragraphs'}, {e.segments} segments, "
        f"{'with' if e.with_reference else 'without'} reference, {e.seconds:.0f} s",
        f"  {e.signature}",
        "",
        f"  {'metric vs -MQM':22s} {'pearson':>8s} {'kendall':>8s} {'95% CI':>17s} "
        f"{'within':>8s} {'95% CI':>17s} {'pairacc':>8s}",
    ]
    for m in e.metrics:
        lines.append(
            f"  {m.name:22s} {m.pearson:8.3f} {m.kendall:8.3f} {ci(m, 'kendall'):>17s} "
            f"{m.within_kendall:8.3f} {ci(m, 'within_kendall'):>17s} {m.pairwise_accuracy:8.3f}")
    lines += ["", f"  {'spans (character level)':36s} {'P':>6s} {'R':>6s} {'F1':>6s} {'P major':>8s}"]
    for name, f in e.spans.items():
        lines.append(f"  {name:36s} {f.precision:6.3f} {f.recall:6.3f} {f.f1:6.3f} "
                     f"{f.major_precision:8.3f}")
    if any(name.endswith(VISIBLE_TAG) for name in e.spans):
        lines.append(f"  {VISIBLE_TAG}: against the {VISIBLE_GOLD} errors only (what English "
                     "alone shows: the reference-free target)")
    target = ALL_GOLD if e.with_reference else VISIBLE_GOLD
    for gold, bins in e.bins.items():
        lines += ["", f"  span confidence vs precision, gold: {gold}"
                  f"{' (the span model target of this run)' if gold == target else ''}",
                  f"  {'confidence':12s} {'spans':>6s} {'mean':>6s} {'P chars':>8s} "
                  f"{'overlap':>8s} {'shown >= low':>13s} {'P shown':>8s}"]
        lines += [f"  {b.low:.1f}-{b.high:.1f}{'':5s} {b.spans:6d} {b.confidence:6.3f} "
                  f"{b.precision:8.3f} {b.overlap:8.3f} {b.shown_spans:13d} "
                  f"{b.shown_precision:8.3f}" for b in bins]
    return "\n".join(lines) + "\n"
