"""Alignment of a candidate with its reference: pure functions on similarity matrices and lines.

Rows are the candidate's sentences, columns the reference's. Every ``link_*`` function takes a
score matrix and a threshold and returns sorted ``(row, column)`` pairs; pairs scoring below the
threshold are never returned, so sentences with no counterpart stay unaligned.

Comparable articles (two outlets' reports of one story) share a topic, so every sentence pair has
a raw cosine around .4-.6 and the true links stand out only against their row and column.
``align`` therefore links a pair on either of two kinds of evidence: a *relative* score (z-scored
cosine plus z-scored TF-IDF overlap; each sentence's best partner in either direction) that also
clears a low absolute floor, so that two unrelated articles get (almost) no links; or an
*absolute* score high enough on its own (translations, near-copies, one-sentence texts).
``benchmarks/reference_seeds.py`` measures every linker on the hand-aligned seed pair
(``fixtures/seed_alignment.json``), a shuffled parallel set and unrelated pairs.

Parallel texts pair line by line instead (``line_spans``, ``pair_lines``).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "ABSOLUTE",
    "FLOOR",
    "LINKERS",
    "Matrix",
    "Pairs",
    "STOPWORDS",
    "THRESHOLD",
    "absolute_score",
    "align",
    "count_lines",
    "csls",
    "inflection_stem",
    "lexical_similarity",
    "link_competitive",
    "link_hungarian",
    "link_monotone",
    "link_mutual_best",
    "link_row_best",
    "link_threshold",
    "link_union",
    "line_spans",
    "pair_lines",
    "relative_score",
    "zscore",
]

Matrix = NDArray[np.float64]
Pairs = list[tuple[int, int]]

THRESHOLD = 1.6  # relative score, in standard deviations above the document pair's mean
FLOOR = 0.25  # absolute score: mean of cosine and TF-IDF cosine
ABSOLUTE = 0.4  # absolute score that links on its own
_MIN_SIDE = 3  # below this many sentences on a side, z-scores mean nothing

_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)?")
STOPWORDS = frozenset(
    """a about above after again against all also am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for from
    further had has have having he her here hers him his how i if in into is it its itself just
    me more most my no nor not now of off on once only or other our out over own s same she
    should so some such t than that the their them then there these they this those through to
    too under until up very was we were what when where which while who whom why will with would
    you your said says say told tell according yet""".split()
)
_SUFFIXES = ("ations", "ation", "ings", "ing", "ies", "ied", "ed", "es", "s", "ly")


# NOTE: two crude suffix strippers (no stemmer ships with the project's dependencies), on
# purpose: they answer different questions and merging them would change numbers.
# ``_alignment_stem`` conflates derived forms for TF-IDF overlap between comparable sentences
# (purchase/purchasing, failure/failures; cut to 7 characters), which the alignment thresholds
# were tuned with; ``inflection_stem`` strips one inflection only, for the reference checker's
# per-word "its stem is in no reference" input (``absent``), which the calibrated word model
# was fitted with.


def _alignment_stem(word: str) -> str:
    """A coarse stem for TF-IDF alignment: one derivational or inflectional suffix, 7 characters."""
    for suf in _SUFFIXES:
        if word.endswith(suf) and len(word) - len(suf) >= 4:
            word = word[: -len(suf)]
            break
    return word[:7]


def inflection_stem(word: str) -> str:
    """A crude English stem, enough to match "reported" with "reports"."""
    for suffix in ("ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def _terms(text: str) -> list[str]:
    return [_alignment_stem(w) for w in (m.lower() for m in _WORD.findall(text)) if w not in STOPWORDS]


def lexical_similarity(rows: Sequence[str], cols: Sequence[str]) -> Matrix:
    """TF-IDF cosine of content-word stems, IDF taken over all the given sentences.

    Words both articles repeat everywhere (the story's topic) weigh little; words two sentences
    share alone (``failures``, ``indication``) weigh much.
    """
    docs = [Counter(_terms(t)) for t in (*rows, *cols)]
    n = len(docs)
    df: Counter[str] = Counter()
    for d in docs:
        df.update(d.keys())
    vocab = {w: k for k, w in enumerate(df)}
    mat = np.zeros((n, len(vocab)), dtype=np.float64)
    for r, d in enumerate(docs):
        for w, c in d.items():
            mat[r, vocab[w]] = (1.0 + math.log(c)) * math.log((1 + n) / df[w])
    norms = np.linalg.norm(mat, axis=1, keepdims=True)
    mat = mat / np.where(norms == 0, 1.0, norms)
    out: Matrix = mat[: len(rows)] @ mat[len(rows) :].T
    return out


def zscore(m: Matrix) -> Matrix:
    """``(m - mean) / std`` over the whole matrix (zeros where it is constant)."""
    if m.size == 0:
        return m.astype(np.float64)
    std = float(m.std())
    out: Matrix = (m - m.mean()) / std if std > 1e-9 else np.zeros_like(m, dtype=np.float64)
    return out


def csls(sim: Matrix, k: int = 4) -> Matrix:
    """Cross-domain similarity local scaling (Conneau et al. 2018): ``2cos - r_row - r_col``.

    ``r`` is a sentence's mean similarity to its ``k`` nearest neighbours on the other side.
    Measured as an alternative relative score; ``align`` does not use it.
    """
    if sim.size == 0:
        return sim.astype(np.float64)
    r_row = np.sort(sim, axis=1)[:, -min(k, sim.shape[1]) :].mean(axis=1)
    r_col = np.sort(sim, axis=0)[-min(k, sim.shape[0]) :, :].mean(axis=0)
    out: Matrix = 2 * sim - r_row[:, None] - r_col[None, :]
    return out


def relative_score(cos: Matrix, lexical: Matrix) -> Matrix:
    """Mean of the z-scored embedding cosine and the z-scored TF-IDF cosine."""
    out: Matrix = (zscore(cos) + zscore(lexical)) / 2
    return out


def absolute_score(cos: Matrix, lexical: Matrix) -> Matrix:
    """Mean of the embedding cosine and the TF-IDF cosine."""
    out: Matrix = (cos + lexical) / 2
    return out


def link_threshold(score: Matrix, t: float) -> Pairs:
    """Every pair at or above ``t`` (many-to-many)."""
    return sorted((int(i), int(j)) for i, j in zip(*np.nonzero(score >= t)))


def link_row_best(score: Matrix, t: float) -> Pairs:
    """Each row to its best column, if at or above ``t`` (many-to-one)."""
    if score.size == 0:
        return []
    best = score.argmax(axis=1)
    return [(i, int(j)) for i, j in enumerate(best) if score[i, j] >= t]


def link_mutual_best(score: Matrix, t: float) -> Pairs:
    """Pairs that are each other's best, at or above ``t`` (one-to-one)."""
    if score.size == 0:
        return []
    col_best = score.argmax(axis=0)
    return [(i, j) for i, j in link_row_best(score, t) if col_best[j] == i]


def link_union(score: Matrix, t: float) -> Pairs:
    """Each row's best column and each column's best row, at or above ``t``.

    The union of the two directions' best links (as in word-alignment symmetrisation): a row
    may link to several columns (it merges sentences) and a column to several rows (it was
    split), in any order.
    """
    if score.size == 0:
        return []
    rows = np.arange(score.shape[0])
    cols = np.arange(score.shape[1])
    best = np.zeros(score.shape, dtype=bool)
    best[rows, score.argmax(axis=1)] = True
    best[score.argmax(axis=0), cols] = True
    return sorted((int(i), int(j)) for i, j in zip(*np.nonzero(best & (score >= t))))


def link_competitive(score: Matrix, t: float) -> Pairs:
    """Competitive linking (Melamed 2000): take the best remaining pair until none is ``>= t``."""
    if score.size == 0:
        return []
    used_r: set[int] = set()
    used_c: set[int] = set()
    out: Pairs = []
    for flat in np.argsort(-score, axis=None, kind="stable"):
        i, j = divmod(int(flat), score.shape[1])
        if score[i, j] < t:
            break
        if i not in used_r and j not in used_c:
            used_r.add(i)
            used_c.add(j)
            out.append((i, j))
    return sorted(out)


def link_hungarian(score: Matrix, t: float) -> Pairs:
    """The one-to-one assignment of maximal total score, pairs below ``t`` dropped."""
    # NOTE: scipy comes with sentence-transformers; only this benchmark baseline needs it
    from scipy.optimize import linear_sum_assignment

    if score.size == 0:
        return []
    rows, cols = linear_sum_assignment(score, maximize=True)
    return sorted((int(i), int(j)) for i, j in zip(rows, cols) if score[i, j] >= t)


def link_monotone(score: Matrix, t: float) -> Pairs:
    """An order-preserving DP alignment (vecalign-like: 1-1 links and skips).

    Right for parallel text only; kept as the baseline that shows why monotone alignment fails
    on comparable articles, which tell the same facts in another order.
    """
    n, m = score.shape
    gain = np.where(score >= t, score, -np.inf)
    best = np.full((n + 1, m + 1), -np.inf)
    best[0, :] = 0.0
    best[:, 0] = 0.0
    move = np.zeros((n + 1, m + 1), dtype=np.int8)  # 0 link, 1 skip row, 2 skip column
    move[1:, 0] = 1
    move[0, 1:] = 2
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            cands = (best[i - 1, j - 1] + gain[i - 1, j - 1], best[i - 1, j], best[i, j - 1])
            k = int(np.argmax(cands))
            best[i, j], move[i, j] = cands[k], k
    out: Pairs = []
    i, j = n, m
    while i and j:
        step = int(move[i, j])
        if step == 0:
            out.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        elif step == 1:
            i -= 1
        else:
            j -= 1
    return sorted(out)


LINKERS: dict[str, Callable[[Matrix, float], Pairs]] = {
    "threshold": link_threshold,
    "row-best": link_row_best,
    "mutual-best": link_mutual_best,
    "union": link_union,
    "competitive": link_competitive,
    "hungarian": link_hungarian,
    "monotone-dp": link_monotone,
}


def align(cos: Matrix, lexical: Matrix, threshold: float = THRESHOLD, floor: float = FLOOR) -> Pairs:
    """Link candidate sentences (rows) to reference sentences (columns).

    Two kinds of evidence, either suffices:

    * *relative*: ``link_union`` on ``relative_score`` at ``threshold``, kept where
      ``absolute_score`` is at least ``floor``: the pair stands out from the background
      similarity of two reports of one story (needs three sentences a side for z-scores);
    * *absolute*: ``link_union`` on ``absolute_score`` at ``ABSOLUTE``: the pair is close
      whatever the background (translations, near-copies, one-sentence texts).
    """
    absolute = absolute_score(cos, lexical)
    pairs = set(link_union(absolute, max(floor, ABSOLUTE)))
    if min(cos.shape, default=0) >= _MIN_SIDE:
        pairs.update((i, j) for i, j in link_union(relative_score(cos, lexical), threshold)
                     if absolute[i, j] >= floor)
    return sorted(pairs)


# --- parallel texts: line by line -------------------------------------------------------------


def line_spans(norm: str) -> tuple[tuple[int, int], ...]:
    """``[start, end)`` of each line's stripped text (``(s, s)`` when blank), trailing blanks dropped."""
    spans: list[tuple[int, int]] = []
    pos = 0
    for raw in norm.split("\n"):
        content = raw.strip()
        s = pos + (len(raw) - len(raw.lstrip())) if content else pos
        spans.append((s, s + len(content)))
        pos += len(raw) + 1
    while spans and spans[-1][0] == spans[-1][1]:
        spans.pop()
    return tuple(spans)


def count_lines(lines: Sequence[tuple[int, int]]) -> int:
    """The number of non-blank lines of ``line_spans``."""
    return sum(1 for s, e in lines if e > s)


def pair_lines(a: Sequence[tuple[int, int]], b: Sequence[tuple[int, int]]) -> list[tuple[int, int]] | None:
    """Line index pairs: all lines when the counts agree, else the non-blank ones, else None."""
    if len(a) == len(b):
        return [(k, k) for k in range(len(a))]
    na = [k for k, (s, e) in enumerate(a) if e > s]
    nb = [k for k, (s, e) in enumerate(b) if e > s]
    return list(zip(na, nb)) if len(na) == len(nb) else None
