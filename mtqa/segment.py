"""Split a document into paragraphs and sentences, and label scraped page furniture.

Sentences come from syntok, chosen by measuring on the seed pair (see ``benchmarks/segmenters.py``):
it keeps ``supply". shortages`` in one sentence (the garble is a broken join, not two sentences),
splits parenthesised sentences off correctly, and is about six times faster than pysbd.
Boilerplate (photo captions and credits, bylines, site chrome) is labelled per line by
``label_boilerplate``, with rules that must match the whole line; a disclaimer ("This article was
automatically translated") labels only its own sentence. Boilerplate is excluded from every
checker's findings and from the scores downstream.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence

from syntok import segmenter as _syntok

from mtqa.normalize import normalize
from mtqa.types import Document, Kind, SegmentedDocument, Sentence

__all__ = ["CAPTION_MAX_WORDS", "CAPTION_WINDOW", "CHROME_MAX_WORDS", "DISCLAIMER_MAX_WORDS",
           "label_boilerplate", "paragraphs", "segment", "sentences"]

_LINE = re.compile(r"[^\n]+")
#: how many paragraphs before or after a photo caption its reworded repeat may stand
CAPTION_WINDOW = 5
#: the longest caption, navigation line and disclaimer sentence, in words: a longer line is
#: article text, whatever it starts with ("PICTURED:", "Read more") or says ("pictured")
CAPTION_MAX_WORDS = 80
CHROME_MAX_WORDS = 40
DISCLAIMER_MAX_WORDS = 80


def paragraphs(norm: str) -> list[tuple[int, int]]:
    """``[start, end)`` of each non-blank line, trailing and leading spaces trimmed.

    Scraped articles put one paragraph per line, and often no blank line between them.
    """
    out = []
    for m in _LINE.finditer(norm):
        line = m.group()
        stripped = line.strip()
        if not stripped:
            continue
        start = m.start() + (len(line) - len(line.lstrip()))
        out.append((start, start + len(stripped)))
    return out


def sentences(norm: str, start: int, end: int) -> list[tuple[int, int]]:
    """Sentence ``[start, end)`` pairs inside ``norm[start:end]`` (offsets into ``norm``)."""
    chunk = norm[start:end]
    out: list[tuple[int, int]] = []
    for para in _syntok.analyze(chunk):
        for sent in para:
            toks = list(sent)
            if not toks:
                continue
            s = toks[0].offset
            last = toks[-1]
            e = last.offset + len(last.value)
            # NOTE: syntok rewrites some token values (e.g. joins hyphenated line breaks); trust
            # offsets only, and clamp to the chunk.
            e = min(max(e, s + 1), len(chunk))
            out.append((start + s, start + e))
    # syntok may leave characters (trailing symbols) between sentences; extend each sentence
    # to the next one's start (whitespace trimmed) so that no text falls outside a sentence.
    fixed: list[tuple[int, int]] = []
    for i, (s, e) in enumerate(out):
        nxt = out[i + 1][0] if i + 1 < len(out) else end
        e = s + len(norm[s:nxt].rstrip())
        fixed.append((s, e))
    if fixed and fixed[0][0] > start:
        fixed[0] = (start, fixed[0][1])
    return fixed


# --- boilerplate ----------------------------------------------------------------------------

_MONTH = (r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|"
          r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)\.?")
_DATE_END = re.compile(rf"{_MONTH}\s+\d{{1,2}},?\s+\d{{4}}\.?\s*$")
_AGENCY = (r"(?:Getty Images|Reuters|AFP|AP|AP Photo|Associated Press|EPA|EPA-EFE|Shutterstock|"
           r"ZUMA(?: Press(?: Wire)?)?|Alamy|Bloomberg|SOPA Images|NurPhoto|Sipa|Xinhua|KCNA|"
           r"Anadolu|TASS|SPUTNIK|Pool|Handout|Courtesy)")
_CREDIT = re.compile(
    rf"^(?:(?:Photo|Image|Picture|Credit|Source)s?\s*(?:by|:)\s*.+"
    rf"|.*\bvia\s+{_AGENCY}.*"
    rf"|.*\b{_AGENCY}\s*/\s*\S.*"
    rf"|[^.!?]*/\s*{_AGENCY}\b.*"
    rf"|\(?(?:AP|AFP|Reuters|Getty Images|Shutterstock)\)?)$",
    re.IGNORECASE,
)
_PICTURED = re.compile(r"^\s*(?:PICTURED|PHOTO|IMAGE|ABOVE|BELOW|TOP|INSET|FILE PHOTO)\s*:", re.I)
_PHOTO_WORDS = re.compile(r"\b(?:(?:undated|file|handout|this) (?:photo|picture|image)|"
                          r"photo(?:graph)?ed|pictured|seen here|in this (?:photo|picture|image))\b",
                          re.I)
_BYLINE = re.compile(
    r"(?:\bcontributed(?: to)?(?: this)?(?: report(?:ing)?)?\.?\s*$"
    r"|^\s*(?:By|Written by|Reporting by|Edited by|Additional reporting by)\s+[A-Z][\w.'-]+"
    r"(?:\s+[A-Z][\w.'-]+){0,3}\s*(?:,|and|\||$))",
)
_CHROME = re.compile(
    r"^\s*(?:back to top(?: button)?|most (?:popular|read|viewed)|load more|see all\b.*|tags?\b.*"
    r"|advertisement|sponsored(?: content)?|related(?: articles?| stories| coverage)?\s*:?.*"
    r"|read more\b.*|share (?:this|on)\b.*|(?:sign up|subscribe)\b.*|follow us\b.*"
    r"|click here\b.*|copyright\b.*|©.*|all rights reserved.*|skip to (?:main )?content"
    r"|next article|previous article|comments?\s*\(?\d*\)?|print|email|share)\s*$",
    re.I,
)
_UPDATED = re.compile(r"^\s*(?:updated|published|posted|last updated|first published)\s*:?\s*"
                      r"[^.!?]{0,40}\d[^!?]{0,40}$", re.I)
_DISCLAIMER = re.compile(
    r"\b(?:point of view of the (?:site|website|publisher)|translated? (?:it )?(?:through|by|via) "
    r"(?:programmatic|automatic|machine)|not from a human editor|automatically (?:translated|"
    r"published|generated)|does not necessarily (?:reflect|represent)|views expressed (?:here|in)"
    r"|this (?:article|story|content) (?:was|has been) (?:automatically|machine)[- ]translated)\b",
    re.I,
)
_WORD = re.compile(r"[^\W\d_]+(?:['-][^\W\d_]+)*|\d+(?:[.,]\d+)*")
_END_PUNCT = re.compile(r"""[.!?:;…"')\]]\s*$""")
_SENT_END = re.compile(r"""[.!?…]["')\]]*\s*$""")


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def _jaccard(wa: frozenset[str], wb: frozenset[str]) -> float:
    """Jaccard overlap of two word sets."""
    if not wa or not wb:
        return 0.0
    return len(wa & wb) / len(wa | wb)


def _paragraph_label(text: str, index: int, words: int) -> str | None:
    """Why a whole paragraph (line) is boilerplate, or None.

    Every rule here matches the whole line; a disclaimer is decided per sentence (``segment``).
    """
    if _PICTURED.match(text) and words <= CAPTION_MAX_WORDS:
        return "photo caption"
    # NOTE: chrome items are labels, not sentences: "Tags were found on the birds." is body
    if (_CHROME.match(text) and not _SENT_END.search(text) and words <= CHROME_MAX_WORDS
            ) or _UPDATED.match(text):
        return "site chrome"
    if words <= 16 and not _END_PUNCT.search(text) and _CREDIT.match(text):
        return "photo credit"
    if words <= 16 and _BYLINE.search(text):
        return "byline"
    # NOTE: a short line without closing punctuation after the headline is a label or
    # navigation item ("ABC News", "Most Popular"); the headline itself is paragraph 0.
    if index > 0 and words <= 5 and not _END_PUNCT.search(text):
        return "site chrome"
    return None


def label_boilerplate(norm: str, paras: Sequence[tuple[int, int]]) -> list[str | None]:
    """Label each paragraph with the reason it is boilerplate, or None for article body.

    Linear in the number of paragraphs: each paragraph is tokenised once, and a caption is
    compared only with the paragraphs within ``CAPTION_WINDOW`` of it.
    """
    texts = [norm[s:e] for s, e in paras]
    word_sets = [frozenset(_words(t)) for t in texts]
    counts = [len(_WORD.findall(t)) for t in texts]
    labels: list[str | None] = [_paragraph_label(t, i, counts[i]) for i, t in enumerate(texts)]
    captions = [i for i, lab in enumerate(labels) if lab == "photo caption"]
    for i, text in enumerate(texts):
        if labels[i] is not None:
            continue
        # a caption repeated below its PICTURED: line, reworded by the translation round trip
        lo = bisect.bisect_left(captions, i - CAPTION_WINDOW)
        hi = bisect.bisect_right(captions, i + CAPTION_WINDOW)
        if any(_jaccard(word_sets[i], word_sets[c]) >= 0.45 for c in captions[lo:hi]):
            labels[i] = "duplicate caption"
            continue
        # a one-sentence paragraph beside a photo credit that ends on a date, or says "photo"
        near_credit = any(
            0 <= j < len(labels) and labels[j] in ("photo credit", "photo caption")
            for j in (i - 1, i + 1)
        )
        if (near_credit and counts[i] <= CAPTION_MAX_WORDS
                and (_DATE_END.search(text) or _PHOTO_WORDS.search(text))):
            labels[i] = "photo caption"
        elif _PHOTO_WORDS.search(text) and _DATE_END.search(text) and counts[i] <= 60:
            labels[i] = "photo caption"
    return labels


def segment(doc: Document) -> SegmentedDocument:
    """Split ``doc.mt`` into paragraphs and labelled sentences."""
    norm = normalize(doc.mt)
    paras = paragraphs(norm)
    labels = label_boilerplate(norm, paras)
    sents: list[Sentence] = []
    for p, ((ps, pe), label) in enumerate(zip(paras, labels)):
        for s, e in sentences(norm, ps, pe):
            if label is not None:
                sents.append(Sentence(s, e, p, Kind.BOILERPLATE, label))
            elif _DISCLAIMER.search(norm[s:e]) and (
                    len(_WORD.findall(norm[s:e])) <= DISCLAIMER_MAX_WORDS):
                # NOTE: per sentence, never per paragraph: a one-line article ending on "This
                # article was automatically translated." keeps its other sentences as body
                sents.append(Sentence(s, e, p, Kind.BOILERPLATE, "disclaimer"))
            elif p == 0 and not _SENT_END.search(norm[s:e]):
                sents.append(Sentence(s, e, p, Kind.BODY, "headline"))
            else:
                sents.append(Sentence(s, e, p, Kind.BODY))
    return SegmentedDocument(doc=doc, norm=norm, paragraphs=tuple(paras), sentences=tuple(sents))
