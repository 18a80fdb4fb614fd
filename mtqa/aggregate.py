"""Combine the checkers' results for one document into a DocumentReport.

Overlapping findings are merged into one span: the most severe finding gives the span its
offsets, category and severity; the others add their messages, and their agreement raises the
confidence (noisy-or over distinct checkers). A ``reference-mismatch`` finding is evidence: it
never decides a merged span's severity while another finding covers the same text.

With a calibration that holds a word model (``mtqa.calibrate.WordModel``) and the word evidence
it reads (the fluency checker's surprisals; with a parallel reference, the reference checker's
diff and LM reading), the word model's spans replace the fluency checker's own, and the diff
only corroborates spans: each word gets a probability of being part of an MQM error, and runs
of flagged words become ``mistranslation`` (with a reference) or ``unnatural-phrasing`` /
``garbled`` spans.

Scores come from the calibration (``mtqa.calibrate``): each body sentence's raw numbers give
the MQM penalty a professional rater is expected to assign it; the sentence score and the
document score (from the mean over body sentences) map that penalty to 0-100. Without a
calibration model for the checkers that ran, the score falls back to an uncalibrated MQM-style
penalty of the spans (minor 1, major 5, critical 25, weighted by confidence) per 100 words.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from types import MappingProxyType

from mtqa.calibrate import (
    EVIDENCE,
    SPAN_CHECKERS,
    Calibration,
    SpanModel,
    WordModel,
    penalty_to_score,
    unit_features,
    word_evidence_ready,
    word_inputs,
)
from mtqa.checkers.fluency import FluencyChecker
from mtqa.checkers.reference import ReferenceChecker
from mtqa.types import (
    CheckResult,
    DocumentReport,
    Finding,
    Kind,
    ReferenceResult,
    SegmentedDocument,
    SentenceReport,
    Severity,
    Skipped,
    Span,
    Verdict,
)
from mtqa.version import __version__

__all__ = [
    "MQM_WEIGHTS", "PENALTY_SCALE", "aggregate", "calibrate_findings", "count_words",
    "consistent_tokens", "merge_findings", "penalty_score", "scoring_units", "word_findings",
]

MQM_WEIGHTS = {Severity.MINOR: 1.0, Severity.MAJOR: 5.0, Severity.CRITICAL: 25.0}
#: penalty points per 100 words at which the score falls to 100/e (about 37)
PENALTY_SCALE = 10.0
#: weight of LM fluency in the provisional document score
FLUENCY_WEIGHT = 0.4


def _rank(f: Finding) -> tuple[int, int, float]:
    return (0 if f.category in EVIDENCE else 1, f.severity.rank, f.confidence)


def merge_findings(mt: str, findings: Sequence[Finding], *,
                   standalone_evidence: bool = True) -> list[Span]:
    """Merge overlapping findings into report spans, ``text == mt[start:end]``.

    Without ``standalone_evidence``, a cluster made of evidence alone (a diff against a
    comparable article, which is another text, not a translation) is not reported.
    """
    def cluster(items: Sequence[Finding]) -> list[list[Finding]]:
        out: list[list[Finding]] = []
        reach = 0  # the furthest end in the last cluster
        for f in sorted(items, key=lambda f: (f.start, f.end)):
            if out and f.start < reach:
                out[-1].append(f)
                reach = max(reach, f.end)
            else:
                out.append([f])
                reach = f.end
        return out

    valid = [f for f in findings if f.end > f.start]
    # NOTE: evidence never joins two findings into one span: long diff stretches would chain
    # neighbouring garbles together. It attaches to the spans it overlaps, or stands alone.
    clusters = cluster([f for f in valid if f.category not in EVIDENCE])
    # clusters are disjoint and in order: those a finding can overlap are found by bisection
    first = [c[0].start for c in clusters]
    reach = [max(g.end for g in c) for c in clusters]
    loose = []
    for f in (f for f in valid if f.category in EVIDENCE):
        i = bisect.bisect_left(first, f.end)
        near: list[list[Finding]] = []
        while i > 0 and reach[i - 1] > f.start:
            i -= 1
            near.append(clusters[i])
        hits = [c for c in reversed(near) if any(f.start < g.end and g.start < f.end for g in c)]
        for c in hits:
            c.append(f)
        if not hits:
            loose.append(f)
    if standalone_evidence:
        clusters += cluster(loose)
    spans: list[Span] = []
    for members in sorted(clusters, key=lambda c: min(g.start for g in c)):
        main = max(members, key=_rank)
        others = [g for g in members if g is not main]
        best: dict[str, float] = {}
        for g in members:
            best[g.checker] = max(best.get(g.checker, 0.0), g.confidence)
        confidence = 1.0 - math.prod(1.0 - c for c in best.values())
        message = main.message
        own = [g for g in members if g.category not in EVIDENCE] or members
        lo, hi = min(g.start for g in own), max(g.end for g in own)
        # NOTE: a diff stretch that reaches far beyond this span (a whole divergent sentence)
        # corroborates it, but what it says is about the sentence: said on every span it
        # touches, it would be boilerplate (issue 19)
        extra = [f"{g.checker}: {g.message}" for g in others if g.message != main.message
                 and (g.category not in EVIDENCE
                      or 2 * (min(g.end, hi) - max(g.start, lo)) >= g.end - g.start)]
        if extra:
            message += " (also " + "; ".join(dict.fromkeys(extra)) + ")"
        suggestions = tuple(dict.fromkeys(s for g in members for s in g.suggestions))
        spans.append(Span(
            start=main.start, end=main.end, text=mt[main.start : main.end],
            category=main.category, severity=main.severity,
            checker="+".join(dict.fromkeys([main.checker] + [g.checker for g in others])),
            message=message, confidence=round(confidence, 4), rule=main.rule,
            suggestions=suggestions,
        ))
    return spans


def count_words(mt: str, ranges: Iterable[tuple[int, int]]) -> int:
    """Whitespace-separated words of ``mt`` inside the ``[start, end)`` ranges."""
    return sum(len(mt[s:e].split()) for s, e in ranges)


def penalty_score(spans: Sequence[Span], words: int) -> float:
    """0-100 from MQM-weighted span penalties per 100 words."""
    penalty = sum(MQM_WEIGHTS[s.severity] * s.confidence for s in spans)
    per_100 = 100.0 * penalty / max(words, 1)
    return 100.0 * math.exp(-per_100 / PENALTY_SCALE)


def scoring_units(sd: SegmentedDocument, reference: ReferenceResult | None) -> list[list[int]]:
    """The body sentences scored together: each alone, except that with a parallel reference
    the sentences that share a reference sentence (a line translated as two sentences) form one
    unit, as the calibration's MQM lines do."""
    body = [i for i, s in enumerate(sd.sentences) if s.kind is Kind.BODY]
    if reference is None or reference.mode != "parallel":
        return [[i] for i in body]
    parent = {i: i for i in body}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[int, int] = {}
    for link in reference.alignment:
        if link.mt not in parent:
            continue
        for j in link.ref:
            if j in owner:
                parent[root(link.mt)] = root(owner[j])
            else:
                owner[j] = link.mt
    units: dict[int, list[int]] = {}
    for i in body:
        units.setdefault(root(i), []).append(i)
    return sorted(units.values())


def calibrate_findings(findings: Sequence[Finding], model: SpanModel,
                       expected_at: Sequence[tuple[int, int, float]]) -> list[Finding]:
    """Re-weigh the statistical findings (LM, grammar, reference) with the span model.

    ``expected_at`` holds ``(start, end, expected penalty)`` of each calibrated body sentence.
    A finding of a checker in ``SPAN_CHECKERS`` whose group the model knows gets the model's
    probability that its characters are an error as its confidence, is dropped below the
    model's ``keep`` threshold, and is major at or above its ``major`` threshold, else minor.
    Rule-based structure findings, findings of groups the model was not fitted on, and
    findings outside a calibrated sentence are returned unchanged.
    """
    out: list[Finding] = []
    starts = [s for s, _t, _e in expected_at]  # sentences: in order, disjoint
    for f in findings:
        key = f"{f.checker}:{f.category}"
        i = bisect.bisect_right(starts, f.start) - 1
        expected = expected_at[i][2] if i >= 0 and f.start < expected_at[i][1] else None
        if f.checker not in SPAN_CHECKERS or key not in model.groups or expected is None:
            out.append(f)
            continue
        was_major = f.severity in (Severity.MAJOR, Severity.CRITICAL)
        p_err, p_major = model.probabilities(f.checker, f.category, expected, f.confidence,
                                             was_major)
        if p_err < model.keep:
            continue
        severity = Severity.MAJOR if p_major >= model.major else Severity.MINOR
        if f.severity is Severity.CRITICAL:
            severity = Severity.CRITICAL
        out.append(dataclasses.replace(f, severity=severity, confidence=round(p_err, 4)))
    return out


def word_findings(mt: str, results: Sequence[CheckResult], model: WordModel,
                  units: Sequence[tuple[int, int, float]],
                  excused: Sequence[tuple[int, int]] = ()) -> list[Finding] | None:
    """The word model's spans as findings, or None when the evidence it reads is missing (the
    fluency checker's word surprisals; with ``side == "ref"``, the reference's LM reading).

    ``units`` holds ``(start, end, expected penalty)`` of each calibrated scoring unit. Without
    a reference the spans are the fluency checker's (``garbled`` major, ``unnatural-phrasing``
    minor); with one they are the reference checker's ``mistranslation``. A word inside one of
    the ``excused`` ranges (``consistent_tokens``) is never flagged. Each message names the
    span's most likely wrong word and what the model read in it, nothing about the sentence; a
    span whose word nothing but its sentence's inputs raise is not reported.
    """
    fluency = next((r.words for r in results if r.checker == FluencyChecker.name), None)
    reference = next((r.words for r in results if r.checker == ReferenceChecker.name), None)
    if fluency is None or not word_evidence_ready(fluency, reference, model.side):
        return None
    expected_at = dict(zip(fluency.start, fluency.expected)) if fluency.expected else {}
    words, x = word_inputs(mt, units, fluency, reference, model.side)
    prob = model.probabilities(x)
    for j, (a, b) in enumerate(words):
        if any(s <= a and b <= e for s, e in excused):
            prob[j] = 0.0
    share = model.contributions(x)
    out = []
    for s, e, major, p in model.spans(mt, words, prob):
        inside = [j for j, (a, b) in enumerate(words) if s <= a and b <= e]
        best = max(inside, key=lambda j: prob[j])
        why = _word_reasons(model, x[best], share[best], mt[words[best][0]:words[best][1]],
                            expected_at.get(words[best][0], ()))
        if not why:
            # NOTE: only the sentence's inputs raise this word: that is the sentence's evidence
            continue
        severity = Severity.MAJOR if major else Severity.MINOR
        if model.side == "ref":
            out.append(Finding(start=s, end=e, category="mistranslation", severity=severity,
                               checker=ReferenceChecker.name, confidence=round(p, 4), rule="word-model",
                               message=f"likely mistranslation: {why} (error probability {p:.2f})"))
        else:
            out.append(Finding(start=s, end=e,
                               category="garbled" if major else "unnatural-phrasing",
                               severity=severity, checker=FluencyChecker.name, confidence=round(p, 4),
                               rule="word-model",
                               message=f"unlikely wording: {why} (error probability {p:.2f})"))
    return out


#: wordfreq Zipf frequency under which a word is called rare (about 1 use per million words;
#: 'sanctions' is 3.95, 'rostrum' 2.56)
RARE_ZIPF = 3.0

#: what a word model input says when it raises a word's error probability most; the inputs
#: that describe the sentence (its expected penalty, its chrF) are the sentence's, not the word's
_REASONS = {
    "lm": "the language model finds '{w}' surprising ({lm:.0f} nats){exp}",
    "lm_rel": "'{w}' is {rel:.0f} nats more surprising than the average word of its sentence"
              "{exp}",
    "lm_cond": "'{w}' is unlikely after the reference ({cond:.0f} nats)",
    "lm_cond_rel": "'{w}' is less predictable after the reference than its sentence",
    "lm_cond_expected": "'{w}' is unlikely after the reference ({cond:.0f} nats)",
    "lm_cond_neighbour": "the words around '{w}' are unlikely after the reference",
    "unmatched": "'{w}' is outside the wording shared with the reference",
    "unmatched_expected": "'{w}' is outside the wording shared with the reference",
    "unmatched_neighbours": "the words around '{w}' differ from the reference",
    "absent": "'{w}' is not in the reference",
    "zipf": "'{w}' is a rare word (wordfreq Zipf {z:.1f}, under {rare:.0f})",
}


def _word_reasons(model: WordModel, x: Sequence[float], share: Sequence[float], word: str,
                  expected: Sequence[str] = ()) -> str:
    """The two word-level inputs that raise a word's error probability most, in words ("" when
    none does: the word is flagged for its sentence). "Rare" is said only under ``RARE_ZIPF``;
    the language model's surprise names what it ``expected`` there instead (its likeliest
    tokens), once."""
    value = dict(zip(model.inputs, x))
    zipf, rel = value.get("zipf", 0.0), 10.0 * value.get("lm_rel", 0.0)
    values: dict[str, object] = {
        "w": word, "lm": 10.0 * value.get("lm", 0.0), "rel": rel,
        "cond": 10.0 * value.get("lm_cond", 0.0), "z": zipf, "rare": RARE_ZIPF,
        "exp": _expected_clause(word, expected)}

    def true(n: str) -> bool:
        return ((n != "zipf" or zipf < RARE_ZIPF) and (n != "lm_rel" or rel >= 1.0)
                and (n not in ("unmatched", "unmatched_expected", "absent") or value[n] > 0))

    ranked = sorted((c, n) for n, c in zip(model.inputs, share)
                    if n in _REASONS and c > 0 and true(n))
    said: list[str] = []
    for _c, n in reversed(ranked):
        text = _REASONS[n].format(**values)
        if n in ("lm", "lm_rel"):
            values["exp"] = ""  # said once, with the first LM reason
        if text not in said:
            said.append(text)
    return "; ".join(said[:2])


def _expected_clause(word: str, expected: Sequence[str]) -> str:
    """", where it expected 'a', 'b' or 'c'" from the model's likeliest tokens, leaving out
    those the word itself starts with."""
    low = word.lower()
    tokens = [t for t in dict.fromkeys(expected) if t and not low.startswith(t.lower())]
    if not tokens:
        return ""
    quoted = [f"'{t}'" for t in tokens]
    alternatives = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]
    return f", where it expected {alternatives}"


#: quoted stretches (straight or curly double quotes, within one paragraph)
_QUOTE = re.compile(r"[\"\u201c][^\"\u201c\u201d\n]{1,400}[\"\u201d]")
_TOKEN = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)*")


def consistent_tokens(sd: SegmentedDocument, refs: Sequence[str] = ()) -> list[tuple[int, int]]:
    """``[start, end)`` of the names, numbers and quoted words of ``sd.doc.mt`` that the text
    uses consistently: ones it uses at least twice (names: capitalised away from a sentence's
    start; a name never written in lower case counts its uses at a sentence's start too) or
    that a reference text holds, and quoted words the reference quotes. Two further kinds are
    names on their face: a run of two or more capitalised words ("Karine Jean-Pierre") and a
    designation, a capitalised word hyphened to a word or number ("Mohajer-6", both parts of
    "Shahed-series"). The word model never flags them, nor grammar their spelling (issue 19)."""
    mt = sd.doc.mt
    starts = sorted(s.start for s in sd.sentences)
    quoted = [(m.start(), m.end()) for m in _QUOTE.finditer(mt)]
    ref_words = {m.group() for r in refs for m in _TOKEN.finditer(r)}
    ref_grams: set[str] = set()
    for r in refs:
        low = [m.group().lower() for m in _TOKEN.finditer(r)]
        ref_grams.update(" ".join(low[i:i + 3]) for i in range(len(low) - 2))
    toks = list(_TOKEN.finditer(mt))

    def initial(m: re.Match[str]) -> bool:
        k = bisect.bisect_right(starts, m.start()) - 1
        line = mt.rfind("\n", 0, m.start()) + 1
        begin = max(starts[k] if k >= 0 else 0, line)
        return not mt[begin:m.start()].strip(" \t\"\u201c'(")

    def name(m: re.Match[str]) -> bool:
        return m.group()[:1].isupper() and not initial(m)

    def joined(u: re.Match[str], v: re.Match[str]) -> bool:
        # NOTE: the normalised copy: "according to\u00a0Biden administration" is a plain space
        return sd.norm[u.end():v.start()] in (" ", "-") and u.group()[:1].isupper() \
            and v.group()[:1].isupper()

    mid_names = Counter(m.group() for m in toks if name(m))
    uses = Counter(m.group() for m in toks)
    lower = {m.group() for m in toks if m.group()[:1].islower()}
    numbers = Counter(m.group() for m in toks if any(c.isdigit() for c in m.group()))
    out: list[tuple[int, int]] = []
    for k, m in enumerate(toks):
        w, a, b = m.group(), m.start(), m.end()
        cap = w[:1].isupper()
        digit = any(c.isdigit() for c in w)
        in_quote = any(s <= a and b <= e for s, e in quoted)
        ok = False
        if digit:
            ok = numbers[w] >= 2 or w in ref_words
        elif cap and (mid_names[w] >= 2 or w in ref_words) and (not initial(m) or mid_names[w]):
            ok = True
        elif cap and mid_names[w] and uses[w] >= 2 and w.lower() not in lower:
            # NOTE: a word written capitalised mid-sentence and never in lower case is a name;
            # its uses at a sentence's start count too ("according to Biden administration
            # officials" ... "Biden administration officials said")
            ok = True
        elif in_quote and any(" ".join(t.group().lower() for t in toks[i:i + 3]) in ref_grams
                              for i in range(max(k - 2, 0), k + 1)):
            ok = True
        if cap and not digit and not ok:
            # a run of capitalised words (its first word away from a sentence's start), or a
            # designation: a capitalised word hyphened to a word or number ("Mohajer-6",
            # "Shahed-series", "Soviet-era")
            ok = (k + 1 < len(toks) and joined(m, toks[k + 1]) and not initial(m)) or (
                k > 0 and joined(toks[k - 1], m) and not initial(toks[k - 1])) or (
                k + 1 < len(toks) and toks[k + 1].start() == b + 1 and sd.norm[b] == "-")
        if not ok and k > 0 and sd.norm[a - 1:a] == "-" and toks[k - 1].end() == a - 1 \
                and toks[k - 1].group()[:1].isupper() and not initial(toks[k - 1]):
            # the second part of such a designation ("series" of "Shahed-series")
            ok = True
        if ok:
            out.append((a, b))
    return out


class _UnitFindings:
    """Each result with only the findings that start inside a unit's range.

    NOTE: ``unit_features`` reads every finding of every result for each unit; handing it the
    findings of the unit's range (found by bisection) keeps aggregation linear (issue 15).
    """

    def __init__(self, results: Sequence[CheckResult]) -> None:
        self._results = results
        self._sorted = [sorted(r.findings, key=lambda f: f.start) for r in results]
        self._starts = [[f.start for f in fs] for fs in self._sorted]

    def within(self, sd: SegmentedDocument, unit: Sequence[int]) -> list[CheckResult]:
        lo = min(sd.sentences[i].start for i in unit)
        hi = max(sd.sentences[i].end for i in unit)
        out = []
        for r, fs, starts in zip(self._results, self._sorted, self._starts):
            part = fs[bisect.bisect_left(starts, lo):bisect.bisect_left(starts, hi)]
            out.append(r if len(part) == len(fs) else dataclasses.replace(r, findings=tuple(part)))
        return out


def aggregate(
    sd: SegmentedDocument,
    results: Sequence[CheckResult],
    skipped: Sequence[Skipped] = (),
    calibration: Calibration | None = None,
) -> DocumentReport:
    """One DocumentReport from every checker's result for a document (verdict left empty)."""
    mt = sd.doc.mt
    body = [(s.start, s.end) for s in sd.sentences if s.kind is Kind.BODY]
    body_starts = [s for s, _ in body]

    def in_body(f: Finding) -> bool:
        # NOTE: bisect, not a scan of every sentence per finding (quadratic on long texts)
        i = bisect.bisect_right(body_starts, f.start) - 1
        return i >= 0 and f.start < body[i][1]

    findings = [f for r in results for f in r.findings if in_body(f)]
    reference = next((r.reference for r in results if r.reference is not None), None)
    expected: list[float | None] = [None] * len(sd.sentences)
    unit_expected: list[float | None] = [None] * len(sd.sentences)
    unit_ranges: list[tuple[int, int, float]] = []
    word_spans = False
    variants: set[str] = set()
    if calibration is not None:
        local = _UnitFindings(results)
        for unit in scoring_units(sd, reference):
            raw = unit_features(sd, local.within(sd, unit), unit)
            model = calibration.model_for(raw)
            if model is None:
                continue
            e = model.expected_penalty(raw)
            variants.add(calibration.variant(raw))
            # a unit's penalty is shared by its sentences in proportion to their length
            chars = [max(sd.sentences[i].end - sd.sentences[i].start, 1) for i in unit]
            for i, c in zip(unit, chars):
                expected[i] = e * c / sum(chars)
                unit_expected[i] = e
            unit_ranges.append((min(sd.sentences[i].start for i in unit),
                                max(sd.sentences[i].end for i in unit), e))
        side = "ref" if reference is not None and reference.mode == "parallel" else "free"
        span_model = calibration.spans.get(side)
        if span_model is not None and variants:
            findings = calibrate_findings(
                findings, span_model,
                [(s.start, s.end, e) for s, e in zip(sd.sentences, unit_expected) if e is not None])
            variants.add(f"spans-{side}")
        word_model = calibration.words.get(side)
        if word_model is not None and unit_ranges:
            excused = consistent_tokens(sd, sd.doc.ref)
            found = word_findings(mt, results, word_model, unit_ranges, excused)
            if found is not None:
                # NOTE: a spelling finding on a name the text uses consistently is no error
                findings = [f for f in findings if not (
                    f.checker == "grammar" and f.category == "spelling"
                    and any(s <= f.start and f.end <= e for s, e in excused))]
                # NOTE: the word model reads the LM surprisals the fluency checker's own spans
                # come from (and, with a reference, the diff): its spans replace those
                findings = [f for f in findings if f.checker != FluencyChecker.name] + found
                word_spans = True
                variants.add(f"words-{side}")
    # NOTE: a comparable article words the same facts differently; its diff only corroborates
    # a span another checker found (issue 5), while a parallel reference's diff is evidence itself.
    spans = merge_findings(mt, findings,
                           standalone_evidence=not word_spans and (
                               reference is None or reference.mode == "parallel"))
    words = count_words(mt, body)
    fluency_result = next((r for r in results if r.checker == FluencyChecker.name), None)
    fluency = fluency_result.doc_score if fluency_result is not None else None
    sentence_fluency: Sequence[float | None] = (
        fluency_result.sentence_scores if fluency_result is not None
        and len(fluency_result.sentence_scores) == len(sd.sentences)
        else [None] * len(sd.sentences)
    )
    sentences = tuple(
        SentenceReport(s.start, s.end, s.kind, None if s.kind is Kind.BOILERPLATE else fl, s.why,
                       score=None if e is None else round(penalty_to_score(e), 2),
                       expected_penalty=None if e is None else round(e, 3))
        for s, fl, e in zip(sd.sentences, sentence_fluency, expected)
    )
    scored = [e for e in expected if e is not None]
    features = {f"{r.checker}.{k}": float(v) for r in results for k, v in r.features.items()}
    features["body_words"] = float(words)
    if scored:
        mean_penalty = sum(scored) / len(scored)
        score = penalty_to_score(mean_penalty)
        features["calibrated.expected_penalty"] = mean_penalty
    else:
        # NOTE: no body sentence, or no calibration model for these checkers: uncalibrated
        score = penalty_score(spans, words)
        if fluency is not None:
            score = (1.0 - FLUENCY_WEIGHT) * score + FLUENCY_WEIGHT * fluency
    parts = [f"mtqa:{__version__}"] + [r.signature for r in results]
    if variants:
        parts.append(f"calibration:{calibration.version if calibration else ''}"
                     f"|{','.join(sorted(variants))}")
    signature = " + ".join(parts)
    return DocumentReport(
        id=sd.doc.id, mt=mt, score=round(score, 2),
        fluency=None if fluency is None else round(fluency, 2),
        sentences=sentences, spans=tuple(spans), reference=reference,
        verdict=Verdict(passed=True), skipped=tuple(skipped), signature=signature,
        meta=sd.doc.meta, features=MappingProxyType(features), ref=sd.doc.ref,
    )
