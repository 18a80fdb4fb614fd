"""Facts stated in English news text, and the ones a reference states differently.

Pure text functions (no model): ``find_facts`` finds the numbers (with their scale word and
unit noun), years, dates, weekdays, names and quotations stated in a stretch of text;
``compare_facts`` keeps the candidate's facts that a reference states with a rival value of the
same kind. ``NameIndex`` tells a changed name from another name by the names each side mentions
anywhere. The reference checker turns the mismatches into ``fact-mismatch`` findings.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mtqa.align import STOPWORDS

__all__ = ["FACT_KINDS", "FACT_LABELS", "Fact", "NameAnswers", "NameIndex", "compare_facts",
           "find_facts"]

#: the kinds of fact, as ``Fact.kind`` and in the reference checker's ``fact-KIND`` rules
FACT_KINDS: tuple[str, ...] = ("number", "year", "date", "weekday", "name", "quote")


@dataclass(frozen=True, slots=True)
class Fact:
    """A fact stated at ``[start, end)`` of a text, with its normalised value (kind-specific)."""

    kind: str  # one of FACT_KINDS
    start: int
    end: int
    text: str
    value: tuple[str, ...]


NameAnswers = dict[tuple[str, tuple[str, ...], tuple[str, ...]], bool]  # (test, name, name)

FACT_LABELS = {"number": "number differs", "year": "year differs", "date": "date differs",
               "weekday": "weekday differs", "name": "name differs", "quote": "quoted words differ"}

_MONTHS = {m: k + 1 for k, m in enumerate(
    ("january", "february", "march", "april", "may", "june", "july", "august", "september",
     "october", "november", "december"))}
_MONTHS.update({"jan": 1, "feb": 2, "mar": 3, "apr": 4, "jun": 6, "jul": 7, "aug": 8, "sep": 9,
                "sept": 9, "oct": 10, "nov": 11, "dec": 12})
_MONTH = (r"(?:January|February|March|April|May|June|July|August|September|October|November|"
          r"December|Jan\.?|Feb\.?|Mar\.?|Apr\.?|Jun\.?|Jul\.?|Aug\.?|Sept?\.?|Oct\.?|Nov\.?|Dec\.?)")
_FULL_MONTH = (r"(?:January|February|March|April|May|June|July|August|September|October|"
               r"November|December)")
_YEAR = r"(?:19|20)\d\d"
_DATE = re.compile(
    rf"\b(?P<m1>{_MONTH})\s+(?P<d1>\d{{1,2}})(?:st|nd|rd|th)?\b(?:,?\s+(?P<y1>{_YEAR})\b)?"
    rf"|(?<![:\d])\b(?P<d2>\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?(?P<m2>{_MONTH})(?:,?\s+(?P<y2>{_YEAR})\b)?"
    rf"|\b(?P<m3>{_FULL_MONTH})\b(?:,?\s+(?P<y3>{_YEAR})\b)?"
)
# NOTE: a bare "May" is a modal verb more often than a month; take it only after these words
_MONTH_CUE = re.compile(r"\b(?:in|on|since|until|till|by|early|late|mid|last|next|this|of|from|"
                        r"through|during|before|after)\s+$", re.I)
_WEEKDAY = re.compile(r"\b(Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)s?\b")
_YEAR_RE = re.compile(rf"(?<![\w.,$€£-]){_YEAR}(?![\w%]|,\d)")
_UNITS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
          "nine": 9}
_TEENS = {"ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
          "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19}
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70,
         "eighty": 80, "ninety": 90}
_SCALES = {"hundred": 1e2, "thousand": 1e3, "million": 1e6, "billion": 1e9, "trillion": 1e12}
_WORDNUM = (rf"(?:(?:{'|'.join(_TENS)})(?:[- ](?:{'|'.join(_UNITS)})\b)?|{'|'.join(_TEENS)}|"
            # NOTE: "one" is left out: "one of", "no one", "the one who" outnumber the number
            rf"{'|'.join(k for k in _UNITS if k != 'one')})")
_NUMBER = re.compile(
    r"(?<![\w.,:$€£¥-])(?:(?P<cur>[$€£¥])\s?)?"
    r"(?:(?P<time>\d{1,2}:\d\d)(?!\d)"
    r"|(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)(?![\w,.]\d|[^\W\d_])"
    rf"|(?P<word>\b{_WORDNUM})\b(?!-))",
    re.I,
)
_AFTER_NUMBER = re.compile(
    r"\s*(?:(?P<scale>hundred|thousand|million|billion|trillion)s?\b\s*)?"
    r"(?P<pct>%|percent\b|per cent\b)?\s*(?P<unit>[^\W\d_]+)?", re.I)
_RANGE_BEFORE = re.compile(r"\b(?:or|to)\s+$|[-–]\s*$")
_RANGE_AFTER = re.compile(r"\s*(?:(?:or|to)\b|[-–]\s*\d)")
_QUOTE = re.compile(r'"([^"\n]{2,})"')
_SINGLE_QUOTE = re.compile(r"‘([^‘’\n]{2,})’(?![^\W\d_])")
_CAPS = re.compile(r"[A-Z][\w'.-]*(?:[ \t]+(?:(?:of|the|de|da|del|von|van|der|bin|al)[ \t]+)?[A-Z][\w'.-]*)*")
_TITLES = frozenset(
    """president vice minister prime secretary general gen brig brigadier colonel col lt
    lieutenant major maj captain capt admiral adm sergeant sgt mr mrs ms dr prof sen senator rep
    representative gov governor mayor chief spokesman spokesperson spokeswoman deputy leader king
    queen prince princess pope sir lord judge justice chairman chairwoman ceo director ambassador
    press""".split())
_PARTICLES = frozenset("of the de da del von van der bin al and for".split())
_NAME_STOP = frozenset("of the and for".split())  # "da" in "Da Peng" is a name
_LEAD = frozenset(
    """the a an in on at but and or while when so last this that these those his her their its
    our my your we i it he she they as if after before for from with meanwhile however also still
    then there here where what who why how not no neither nor both all any each every some
    many most more such only even just yet thus though although because since until unless""".split())
_ABBREVIATIONS = frozenset(
    """Gen Col Sgt Capt Corp Inc Ltd Bros Dept Univ Gov Sen Rep Brig Adm Lt Maj Mrs Messrs Prof Rev
    Fig No Jan Feb Mar Apr Jun Jul Aug Sep Sept Oct Nov Dec""".split())
_NOT_NAMES = frozenset(
    """monday tuesday wednesday thursday friday saturday sunday january february march april may
    june july august september october november december""".split())


def _is_initial(norm: str, pos: int) -> bool:
    """Whether ``pos`` starts a sentence (only spaces, quotes or brackets after . ! ? or the start)."""
    k = pos - 1
    while k >= 0 and norm[k] in " \t\n\"'([“‘":
        if norm[k] == "\n":
            return True
        k -= 1
    return k < 0 or norm[k] in ".!?:;"


def _cap_tokens(norm: str) -> set[str]:
    """Lower-cased words written capitalised where no sentence starts: evidence they are names."""
    out = set()
    for m in re.finditer(r"[A-Z][\w'-]*", norm):
        if not _is_initial(norm, m.start()):
            out.add(m.group().lower().removesuffix("'s"))
    return out


def _name_key(text: str) -> tuple[str, ...]:
    """Lower-cased words of a name; for "British Transport Secretary Grant Shapps" the person."""
    words = [w.replace(".", "").lower().removesuffix("'s").strip("'")
             for w in re.split(r"[\s-]+", text)]
    words = [w for w in words if w and w not in _NAME_STOP]
    titles = [k for k, w in enumerate(words) if w in _TITLES]
    if titles and titles[-1] + 1 < len(words):
        words = words[titles[-1] + 1 :]
    return tuple(w for w in words if w not in _TITLES)


def _runs(norm: str, m: re.Match[str]) -> list[list[tuple[int, int]]]:
    """A capitalised sequence's words, split where a sentence ends or a month/weekday stands."""
    runs: list[list[tuple[int, int]]] = [[]]
    for t in re.finditer(r"\S+", m.group()):
        a, b = m.start() + t.start(), m.start() + t.end()
        word = norm[a:b]
        if word.lower().rstrip(".,'") in _NOT_NAMES:
            runs.append([])
        elif re.fullmatch(r"[A-Z][a-z]{2,}\.", word) and word[:-1] not in _ABBREVIATIONS:
            runs[-1].append((a, b - 1))  # "Committee. It": a sentence ended there
            runs.append([])
        else:
            runs[-1].append((a, b))
    return [r for r in runs if r]


def _names(norm: str, start: int, end: int, known: set[str]) -> list[tuple[int, int, tuple[str, ...]]]:
    """``(start, end, key)`` of capitalised word sequences that look like names."""
    out = []
    headline: dict[int, bool] = {}  # line start -> whether the line is Title Case (one test a line)
    for m in _CAPS.finditer(norm, start, end):
        line = norm.rfind("\n", 0, m.start()) + 1
        if line not in headline:
            headline[line] = _title_case(norm, m.start())
        if headline[line]:
            continue
        for toks in _runs(norm, m):
            # drop leading function words ("The", "While") and trailing particles
            while toks and norm[slice(*toks[0])].lower() in _LEAD:
                toks.pop(0)
            while toks and norm[slice(*toks[-1])].lower() in _PARTICLES:
                toks.pop()
            if not toks:
                continue
            s, e = toks[0][0], toks[-1][1]
            # a trailing possessive or sentence period is not part of the name (U.S. keeps its dot)
            if norm[s:e].endswith("'s"):
                e -= 2
            while e > s and norm[e - 1] in ".'" and not re.search(r"\b[A-Z]\.[A-Z]\.$", norm[s:e]):
                e -= 1
            key = _name_key(norm[s:e])
            if not key:
                continue
            if len(toks) == 1 and _is_initial(norm, s) and key[0] not in known:
                continue  # "Meanwhile", "Weapons": capitalised only because a sentence starts
            out.append((s, e, key))
    return out


def _title_case(norm: str, pos: int) -> bool:
    """Whether the line around ``pos`` is a Title Case headline, where capitals mark no names."""
    s = norm.rfind("\n", 0, pos) + 1
    e = norm.find("\n", pos)
    words = re.findall(r"[^\W\d_]{4,}", norm[s : e if e >= 0 else len(norm)])[1:]
    return len(words) >= 4 and sum(w[0].isupper() for w in words) >= 0.6 * len(words)


def _token_match(a: str, b: str) -> bool:
    if a == b:
        return True
    short, long_ = sorted((a, b), key=len)
    common = len(short) if long_.startswith(short) else next(
        (k for k in range(len(short)) if short[k] != long_[k]), len(short))
    # demonyms and inflections (Russia/Russian, China/Chinese, Iran/Iranian) and spelling
    # variants of long words (Defense/Defence); Kirby/Kerry and Patel/Patil stay apart
    if common >= max(4, len(short) - 2):
        return True
    return len(short) >= 5 and difflib.SequenceMatcher(None, a, b).ratio() >= 0.85


def _initials(words: Sequence[str]) -> set[str]:
    """Initials of every run of two or more consecutive words: SAR, NSC, UN."""
    return {"".join(w[0] for w in words[i:j]) for i in range(len(words))
            for j in range(i + 2, len(words) + 1)}


def _same_entity(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """Whether two name keys name one entity (subset of words, spacing, spelling, acronym)."""
    if re.sub(r"\W", "", "".join(a)) == re.sub(r"\W", "", "".join(b)):
        return True  # Dapeng / Da Peng, Yu Ebao / Yu'E Bao
    short, long_ = sorted((a, b), key=len)
    acronyms = _initials(long_)
    return all(any(_token_match(x, y) for y in long_) or x in acronyms for x in short)


def _related(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """Whether two different names could be one name translated differently."""
    if any(_token_match(x, y) for x in a for y in b):
        return True
    return difflib.SequenceMatcher(None, " ".join(a), " ".join(b)).ratio() >= 0.7


class NameIndex:
    """The names each side mentions anywhere, to tell a changed name from another one."""

    def __init__(self, mt_norm: str, ref_norms: Sequence[str], answers: NameAnswers) -> None:
        """Index the names of a candidate and its references (normalised texts); ``answers``
        keeps name comparisons (difflib) for a batch, where other translations of an article
        name the same people."""
        known = _cap_tokens(mt_norm)
        for r in ref_norms:
            known |= _cap_tokens(r)
        self.known = known  # words written capitalised mid-sentence on either side
        self.mt_keys = [k for _, _, k in _names(mt_norm, 0, len(mt_norm), known)]
        self.ref_keys = [k for r in ref_norms for _, _, k in _names(r, 0, len(r), known)]
        self._answers = answers

    def in_ref(self, key: tuple[str, ...]) -> bool:
        return any(self._answer(_same_entity, key, k) for k in self.ref_keys)

    def in_mt(self, key: tuple[str, ...]) -> bool:
        return any(self._answer(_same_entity, key, k) for k in self.mt_keys)

    def related(self, a: tuple[str, ...], b: tuple[str, ...]) -> bool:
        """``_related``, answered once per batch."""
        return self._answer(_related, a, b)

    def _answer(self, test: Callable[[tuple[str, ...], tuple[str, ...]], bool],
                a: tuple[str, ...], b: tuple[str, ...]) -> bool:
        found = self._answers.get((test.__name__, a, b))
        if found is None:
            found = self._answers[test.__name__, a, b] = test(a, b)
        return found


def _number_value(m: re.Match[str], norm: str) -> tuple[str, str, int] | None:
    """``(value, unit, end)`` of a number match, the scale word and unit noun included."""
    if (_RANGE_BEFORE.search(norm, max(0, m.start() - 8), m.start())
            or _RANGE_AFTER.match(norm, m.end())):
        return None  # "five or six hundred", "from 5:30 to 6:30": ranges say little alone
    after = _AFTER_NUMBER.match(norm, m.end())
    end = m.end()
    if m.group("time"):
        hour, minute = m.group("time").split(":")
        return f"{int(hour)}:{minute}", "time", end
    if m.group("num"):
        value = float(m.group("num").replace(",", ""))
    else:
        word = m.group("word").lower()
        tens, _, unit = word.replace(" ", "-").partition("-")
        value = float(_TENS.get(tens, _TEENS.get(tens, _UNITS.get(tens, 0))) + _UNITS.get(unit, 0))
    unit_noun = ""
    if after:
        if after.group("scale"):
            value *= _SCALES[after.group("scale").lower()]
            end = after.end("scale")
        if after.group("pct"):
            unit_noun = "%"
            end = after.end("pct")
        elif after.group("unit"):
            noun = after.group("unit").lower()
            unit_noun = noun[:-3] + "y" if noun.endswith("ies") else noun.removesuffix("s")
            end = after.end("unit")
    if m.group("cur"):
        unit_noun = m.group("cur")
    return f"{value:g}", unit_noun, end


def find_facts(text: str, norm: str, start: int, end: int, known: set[str]) -> list[Fact]:
    """Facts stated in ``text[start:end]``, offsets into ``text``."""
    out: list[Fact] = []
    taken: list[tuple[int, int]] = []
    for m in _DATE.finditer(norm, start, end):
        month = m.group("m1") or m.group("m2") or m.group("m3")
        day = m.group("d1") or m.group("d2") or ""
        year = m.group("y1") or m.group("y2") or m.group("y3") or ""
        before = norm[max(0, m.start() - 12) : m.start()]
        if m.group("m3") and month == "May" and not year and not _MONTH_CUE.search(before):
            continue
        if day and not 1 <= int(day) <= 31:
            continue
        out.append(Fact("date", m.start(), m.end(), text[m.start():m.end()],
                         (str(_MONTHS[month.lower().rstrip(".")]), day, year)))
        taken.append((m.start(), m.end()))
    for m in _WEEKDAY.finditer(norm, start, end):
        out.append(Fact("weekday", m.start(), m.end(), text[m.start():m.end()], (m.group(1).lower(),)))
    for m in _YEAR_RE.finditer(norm, start, end):
        if not any(a <= m.start() < b for a, b in taken):
            out.append(Fact("year", m.start(), m.end(), m.group(), (m.group(),)))
            taken.append((m.start(), m.end()))
    for m in _NUMBER.finditer(norm, start, end):
        if any(a <= m.start() < b for a, b in taken):
            continue
        parsed = _number_value(m, norm)
        if parsed is None:
            continue
        value, unit, e = parsed
        out.append(Fact("number", m.start(), e, text[m.start():e], (value, unit)))
    for s, e, key in _names(norm, start, end, known):
        out.append(Fact("name", s, e, text[s:e], key))
    for rx in (_QUOTE, _SINGLE_QUOTE):
        src = norm if rx is _QUOTE else text
        for m in rx.finditer(src, start, end):
            out.append(Fact("quote", m.start(1), m.end(1), text[m.start(1):m.end(1)], ()))
    return out


_CONTRACTIONS = (("n't", " not"), ("'re", " are"), ("'m", " am"), ("'ve", " have"),
                 ("'ll", " will"), ("'d", " would"), ("'s", ""))


def _quote_tokens(text: str, base: int) -> list[tuple[str, int, int]]:
    out = []
    for m in re.finditer(r"\w+(?:['’]\w+)?", text):
        w = m.group().lower().replace("’", "'")
        for suf, rep in _CONTRACTIONS:
            if w.endswith(suf) and len(w) > len(suf):
                w = w[: -len(suf)] + rep
                break
        for part in w.split():
            out.append((part, base + m.start(), base + m.end()))
    return out


def _quote_mismatches(f: Fact, ref_quotes: Sequence[Fact]) -> list[tuple[int, int, str]]:
    """Words of candidate quote ``f`` replaced in the same quotation in the reference."""
    mt = _quote_tokens(f.text, f.start)
    mt_content = {w for w, _, _ in mt if w not in STOPWORDS}
    for q in ref_quotes:
        rt = _quote_tokens(q.text, 0)
        rc = {w for w, _, _ in rt if w not in STOPWORDS}
        small = min(len(mt_content), len(rc))
        if small < 3 or len(mt_content & rc) / small < 0.5:
            continue  # not the same quotation
        sm = difflib.SequenceMatcher(None, [w for w, _, _ in mt], [w for w, _, _ in rt], autojunk=False)
        out = []
        for tag, i1, i2, j1, j2 in sm.get_opcodes():
            if tag != "replace":
                continue
            if all(w in STOPWORDS for w, _, _ in mt[i1:i2]) or all(w in STOPWORDS for w, _, _ in rt[j1:j2]):
                continue
            out.append((mt[i1][1], mt[i2 - 1][2], q.text[rt[j1][1]:rt[j2 - 1][2]]))
        return out
    return []


def _agrees(a: Fact, b: Fact) -> bool:
    """Whether two facts of one kind state the same value."""
    if a.kind == "number":
        return a.value[0] == b.value[0]
    if a.kind == "date":
        (am, ad, ay), (bm, bd, by) = a.value, b.value
        return am == bm and (not ad or not bd or ad == bd) and (not ay or not by or ay == by)
    return a.value == b.value


def _rivals(a: Fact, b: Fact) -> bool:
    """Whether reference fact ``b`` could be what candidate fact ``a`` states differently."""
    if a.kind == "number":
        return bool(a.value[1]) and a.value[1] == b.value[1]  # same unit noun: six/seven months
    if a.kind == "date":
        (am, ad, _), (bm, bd, _) = a.value, b.value
        return am == bm or bool(ad and ad == bd)  # day or month changed, not both
    return True


def compare_facts(mt_facts: Sequence[Fact], ref_facts: Sequence[Sequence[Fact]],
                   names: NameIndex, *, quotes: bool) -> list[tuple[Fact, str]]:
    """Candidate facts that a reference states differently: ``(fact, the reference's value)``.

    A fact is a mismatch only when no reference states its value and a reference states a rival
    value of the same kind (and unit, or month) that the candidate states nowhere in the pair:
    "on July 5" against a reference that only keeps "July 10" is an omission, not a mismatch.
    """
    refs = [f for fs in ref_facts for f in fs]
    out: list[tuple[Fact, str]] = []
    for f in mt_facts:
        theirs = [r for r in refs if r.kind == f.kind]
        if f.kind == "name":
            if not names.in_ref(f.value):
                rivals = [r for r in theirs
                          if not names.in_mt(r.value) and names.related(f.value, r.value)]
                if rivals:
                    out.append((f, rivals[0].text))
            continue
        if f.kind == "quote":
            if quotes and theirs:
                out.extend((Fact("quote", s, e, "", ()), words)
                           for s, e, words in _quote_mismatches(f, theirs))
            continue
        if not theirs or any(_agrees(f, r) for r in theirs):
            continue
        mine = [g for g in mt_facts if g.kind == f.kind]
        rivals = [r for r in theirs if _rivals(f, r) and not any(_agrees(g, r) for g in mine)]
        if rivals:
            out.append((f, rivals[0].text))
    return out
