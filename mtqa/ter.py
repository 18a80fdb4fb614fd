"""sacreBLEU at the level of segment statistics: the batched TER shift search and a statistics memo.

This is the only mtqa module that touches sacreBLEU's private names (``lib_ter._*``, a
``Metric``'s ``_preprocess_segment``/``_extract_reference_info``/``_compute_segment_statistics``/
``_aggregate_and_compute``); ``pyproject.toml`` pins sacreBLEU to the versions its tests pass.
As in sacreBLEU, the algorithm (``lib_ter``) stands apart from the metric (``TER``):

* ``BatchTER`` is sacreBLEU's ``TER`` with its shift search's edit distances computed on arrays,
  every candidate shift of a step at once (about ten times faster on news lines; the numbers are
  sacreBLEU's); ``sentence_ter`` is its sentence TER for many lines.
* ``StatsMemo`` extracts each distinct segment's statistics once per batch, so a pair's
  sentence scores, the corpus scores of the lines it is part of and the same pair in other
  documents share one extraction; ``score`` and ``signature`` read a metric's figures back.

``benchmarks/ter.py`` measures both against sacreBLEU's public ``sentence_score``/``corpus_score``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from sacrebleu.metrics import lib_ter
from sacrebleu.metrics.bleu import BLEU
from sacrebleu.metrics.chrf import CHRF
from sacrebleu.metrics.ter import TER

if TYPE_CHECKING:
    from numpy.typing import NDArray

__all__ = ["BatchTER", "SacreMetric", "StatsMemo", "score", "sentence_ter", "signature"]

#: the sacreBLEU metrics mtqa scores with
SacreMetric = BLEU | CHRF | TER


class StatsMemo:
    """sacreBLEU segment statistics, extracted once per ``(metric, hypothesis, references)``.

    ``sentence_score`` and ``corpus_score`` both aggregate segment statistics; extracting them
    once serves a pair's sentence scores, the corpus scores of the lines it is part of, and the
    same pair in other documents of a batch (systems that translate a line the same way). A
    reference line's n-grams are extracted once too: other translations of an article share its
    references. ``tests/test_ter.py`` and ``tests/test_reference.py`` pin the results to
    sacreBLEU's public calls.
    """

    def __init__(self) -> None:
        self._done: dict[tuple[int, str, tuple[str, ...]], list[Any]] = {}
        self._refs: dict[tuple[int, tuple[str, ...]], dict[str, Any]] = {}

    def stats(self, metric: SacreMetric, hyps: list[str],
              streams: list[list[str]]) -> tuple[list[Any], str]:
        """Segment statistics of ``hyps`` against reference ``streams``, and the signature.

        The same statistics as ``metric._extract_corpus_statistics(hyps, streams)``, which
        preprocesses each segment and compares it with its references' preprocessed info.
        """
        if not hyps:
            return [], ""
        for k, hyp in enumerate(hyps):
            refs = tuple(s[k] for s in streams)
            if (id(metric), hyp, refs) in self._done:
                continue
            info = self._refs.get((id(metric), refs))
            if info is None:
                info = metric._extract_reference_info([metric._preprocess_segment(r) for r in refs])
                self._refs[id(metric), refs] = info
            self._done[id(metric), hyp, refs] = metric._compute_segment_statistics(
                metric._preprocess_segment(hyp), info)
        # NOTE: sacreBLEU sets num_refs (the signature's nrefs) when it extracts statistics
        metric.num_refs = len(streams)
        stats = [self._done[id(metric), hyp, tuple(s[k] for s in streams)]
                 for k, hyp in enumerate(hyps)]
        return stats, signature(metric)


def score(metric: SacreMetric, stats: Sequence[Any]) -> float:
    """The metric's score over segment statistics (one segment's: its sentence score)."""
    return float(metric._aggregate_and_compute(list(stats)).score)


def signature(metric: SacreMetric) -> str:
    """sacreBLEU's signature of ``metric``, in its ``key:value|...`` form."""
    return str(metric.get_signature().format())


_INF = lib_ter._INT_INFINITY
_MATRIX_CELLS = 1 << 22  # edit distance cells (8 bytes each) of the candidates scored together


def sentence_ter(hypotheses: Sequence[str], references: Sequence[str]) -> list[float]:
    """sacreBLEU's sentence TER (default settings, one reference each): its numbers, from the
    batched shift search (about 7x faster than ``sacrebleu.sentence_ter`` on news lines)."""
    ter = BatchTER()
    return [ter.sentence_score(h, [r]).score for h, r in zip(hypotheses, references)]


class BatchTER(TER):
    """sacreBLEU's TER, with the shift search's edit distances computed on arrays.

    The numbers are sacreBLEU's: its tokenizer, shift candidates, limits, beam and
    tie-breaking (``sacrebleu.metrics.lib_ter``) are kept as they are. sacreBLEU computes the
    edit distance of every candidate shift with its own Python dynamic programme, which is most
    of a document's scoring time; here all the candidates of one shift step go through the same
    recurrence together, one matrix row at a time, from the first row where they differ from the
    current hypothesis. ``tests/test_ter.py`` pins the statistics to ``TER``'s on
    reordered, repeated and empty segments.
    """

    def _compute_segment_statistics(self, hypothesis: str,
                                    ref_kwargs: dict[str, Any]) -> list[float]:
        """``[fewest edits over the references, mean reference length]``, as ``TER``'s."""
        words_hyp = hypothesis.split()
        ref_words: list[list[str]] = ref_kwargs["ref_words"]
        best = _INF
        ref_lengths = 0
        for words_ref in ref_words:
            edits, ref_len = _translation_edit_rate(words_hyp, words_ref)
            ref_lengths += ref_len
            best = min(best, edits)
        return [best, ref_lengths / len(ref_words)]


@dataclass(frozen=True, slots=True)
class _TerRef:
    """A reference of the shift search: its words, an id for each distinct word, the words' ids."""

    words: list[str]
    vocab: Mapping[str, int]
    ids: NDArray[np.int64]


def _translation_edit_rate(words_hyp: list[str], words_ref: list[str]) -> tuple[int, int]:
    """``(edits, reference length)``, as ``lib_ter.translation_edit_rate``."""
    if not words_ref:
        return len(words_hyp), 0
    vocab = {w: k for k, w in enumerate(dict.fromkeys(words_ref))}
    ref = _TerRef(words_ref, vocab, np.array([vocab[w] for w in words_ref], dtype=np.int64))
    words = words_hyp
    mat = _edit_matrices(np.array([[vocab.get(w, -1) for w in words]], dtype=np.int64).reshape(1, -1),
                         ref.ids)[0]
    shifts = 0
    checked = 0
    while True:
        delta, shifted, shifted_mat, checked = _best_shift(words, mat, ref, checked)
        # NOTE: sacreBLEU drops the step that reaches the candidate limit, even when it gains
        if checked >= lib_ter._MAX_SHIFT_CANDIDATES or delta <= 0:
            break
        shifts += 1
        words, mat = shifted, shifted_mat
    return shifts + _distance(mat), len(words_ref)


def _best_shift(words_h: list[str], mat: NDArray[np.int64], ref: _TerRef,
                checked: int) -> tuple[int, list[str], NDArray[np.int64], int]:
    """``lib_ter._shift``: the same candidates in the same order, scored in one batch.

    ``mat`` is ``words_h``'s edit distance matrix (``_edit_matrices``).

    Returns:
        the gain, the shifted words and their matrix, and the number of candidates checked so far.
    """
    pre_score = _distance(mat)
    trace = _trace(mat.tolist(), words_h, ref.words)
    # NOTE: as sacreBLEU, align by rewriting the reference into the hypothesis: flip the trace
    align, ref_err, hyp_err = lib_ter.trace_to_alignment(trace.translate(lib_ter._FLIP_OPS))
    ids = [ref.vocab.get(w, -1) for w in words_h]
    cands: list[tuple[int, int, int]] = []  # length, start_h, target
    shifted_ids: list[list[int]] = []
    for start_h, start_r, length in _find_shifted_pairs(words_h, ref.words):
        if sum(hyp_err[start_h : start_h + length]) == 0:
            continue
        if sum(ref_err[start_r : start_r + length]) == 0:
            continue
        if start_h <= align[start_r] < start_h + length:
            continue
        prev_idx = -1
        for offset in range(-1, length):
            if start_r + offset == -1:
                idx = 0
            elif start_r + offset in align:
                idx = align[start_r + offset] + 1
            else:
                break
            if idx == prev_idx:
                continue
            prev_idx = idx
            cands.append((length, start_h, idx))
            # NOTE: sacreBLEU's shift only slices and joins, so it shifts word ids as well
            shifted_ids.append(lib_ter._perform_shift(ids, start_h, length, idx))  # type: ignore[arg-type]
            checked += 1
        if checked >= lib_ter._MAX_SHIFT_CANDIDATES:
            break
    if not cands:
        return 0, words_h, mat, checked
    hyps = np.array(shifted_ids, dtype=np.int64)
    # a shift leaves the words before min(start, target) in place, and so the matrix rows there
    same = min(min(start_h, idx) for _, start_h, idx in cands)
    # NOTE: sacreBLEU keeps the largest (gain, length, -start, -target, shifted words) tuple
    # (Tercom's ranking), the first of equal ones. Start, length and target fix the shift, so
    # the words never decide between two different shifts.
    best_key: tuple[int, int, int, int] | None = None
    best, best_mat = 0, mat
    step = max(1, _MATRIX_CELLS // mat.size)  # candidates a batch: bounds the memory taken
    for k in range(0, len(cands), step):
        mats = _edit_matrices(hyps[k : k + step], ref.ids, mat, same)
        for c, dist in enumerate(_distances(mats).tolist(), start=k):
            key = (pre_score - dist, cands[c][0], -cands[c][1], -cands[c][2])
            if best_key is None or key > best_key:
                best_key, best, best_mat = key, c, mats[c - k]
    assert best_key is not None  # noqa: S101 - there are candidates
    length, start_h, idx = cands[best]
    return best_key[0], lib_ter._perform_shift(words_h, start_h, length, idx), best_mat, checked


def _find_shifted_pairs(words_h: list[str], words_r: list[str]) -> Iterator[tuple[int, int, int]]:
    """``lib_ter._find_shifted_pairs``, in the same order, visiting matching positions only."""
    n_h, n_r = len(words_h), len(words_r)
    where: dict[str, list[int]] = {}
    for k, w in enumerate(words_r):
        where.setdefault(w, []).append(k)
    for start_h in range(n_h):
        for start_r in where.get(words_h[start_h], ()):
            if abs(start_r - start_h) > lib_ter._MAX_SHIFT_DIST:
                continue
            length = 0
            while (words_h[start_h + length] == words_r[start_r + length]
                   and length < lib_ter._MAX_SHIFT_SIZE):
                length += 1
                yield start_h, start_r, length
                if n_h == start_h + length or n_r == start_r + length:
                    break


def _edit_matrices(hyp: NDArray[np.int64], ref: NDArray[np.int64],
                   prefix: NDArray[np.int64] | None = None, same: int = 0) -> NDArray[np.int64]:
    """``lib_ter.BeamEditDistance``'s matrix for each row of ``hyp`` (word ids, one length).

    The same recurrence, costs and beam, one matrix row for every hypothesis at a time, in
    shifted coordinates ``m[i][j] = d[i][j] - j*ins - i*del`` where the recurrence
    ``d[i][j] = min(d[i-1][j-1] + sub, d[i-1][j] + del, d[i][j-1] + ins)`` becomes
    ``m[i][j] = min(m[i-1][j-1] + sub - ins - del, m[i-1][j], m[i][j-1])``: the insertions
    along a row are a running minimum. ``_distance`` and ``_trace`` read the edit distances
    back. Cells outside the beam start at ``_INF``; cells only they reach stay at or above it
    once read back (sacreBLEU keeps exactly ``_INF`` there), which no finite value and no trace
    through finite cells depends on.

    Args:
        hyp: ``(n, length)`` word ids; -1 for words the reference lacks.
        prefix: a matrix whose rows ``0..same`` every hypothesis shares (its first ``same``
            words are theirs).

    Returns:
        ``(n, length + 1, len(ref) + 1)`` matrices.
    """
    n, n_h = hyp.shape
    n_r = len(ref)
    ratio = n_r / n_h if n_h else 1
    beam = math.ceil(ratio / 2 + lib_ter._BEAM_WIDTH) if lib_ter._BEAM_WIDTH < ratio / 2 \
        else lib_ter._BEAM_WIDTH
    # rows first: each row of every hypothesis is one contiguous block
    out = np.full((n_h + 1, n, n_r + 1), _INF, dtype=np.int64)
    if prefix is None:
        same = 0
        out[0] = 0  # the first row inserts the reference: j*ins, shifted to 0
    else:
        out[: same + 1] = prefix[: same + 1, None]
    diag_cost = ((hyp.T[same:, :, None] != ref[None, None, :]) * lib_ter._COST_SUB
                 - lib_ter._COST_INS - lib_ter._COST_DEL).astype(np.int8)
    add, minimum, running_min = np.add, np.minimum, np.minimum.accumulate
    for i in range(same + 1, n_h + 1):
        diag = math.floor(i * ratio)
        lo = max(0, diag - beam)
        hi = n_r + 1 if i == n_h else min(n_r + 1, diag + beam)
        j0 = max(lo, 1)
        prev, cur = out[i - 1], out[i]
        if lo == 0:
            cur[:, 0] = prev[:, 0]  # column 0 deletes, whatever it costs
        cells = cur[:, j0:hi]
        add(prev[:, j0 - 1 : hi - 1], diag_cost[i - 1 - same, :, j0 - 1 : hi - 1], out=cells)
        minimum(cells, prev[:, j0:hi], out=cells)
        row = cur[:, lo:hi]
        running_min(row, axis=1, out=row)
    result: NDArray[np.int64] = out.transpose(1, 0, 2)
    return result


def _distances(mats: NDArray[np.int64]) -> NDArray[np.int64]:
    """The edit distances of ``_edit_matrices``' matrices."""
    _, rows, cols = mats.shape  # the words of the hypothesis and of the reference, plus one
    out: NDArray[np.int64] = (mats[:, -1, -1] + (cols - 1) * lib_ter._COST_INS
                              + (rows - 1) * lib_ter._COST_DEL)
    return out


def _distance(mat: NDArray[np.int64]) -> int:
    """The edit distance of one ``_edit_matrices`` matrix."""
    return int(_distances(mat[None])[0])


def _trace(mat: list[list[int]], words_h: Sequence[str], words_r: Sequence[str]) -> str:
    """sacreBLEU's trace of edit operations, read back from an ``_edit_matrices`` matrix.

    A cell's operation is the first of substitution/match, deletion, insertion (sacreBLEU's
    order) that gives its value strictly below the ones before it, starting from infinity.
    """
    ins, dele, sub = lib_ter._COST_INS, lib_ter._COST_DEL, lib_ter._COST_SUB
    ops: list[str] = []
    i, j = len(words_h), len(words_r)
    while i > 0 or j > 0:
        if i == 0:
            op = lib_ter._OP_INS
        elif j == 0:
            op = lib_ter._OP_DEL
        else:
            same = words_h[i - 1] == words_r[j - 1]
            # d[i][j] = m[i][j] + j*ins + i*del (see _edit_matrices)
            shift = j * ins + i * dele
            best, op = _INF, lib_ter._OP_UNDEF
            for cost, name in (
                (mat[i - 1][j - 1] + shift - ins - dele + (0 if same else sub),
                 lib_ter._OP_NOP if same else lib_ter._OP_SUB),
                (mat[i - 1][j] + shift, lib_ter._OP_DEL),  # d[i-1][j] + del
                (mat[i][j - 1] + shift, lib_ter._OP_INS),  # d[i][j-1] + ins
            ):
                if best > cost:
                    best, op = cost, name
        ops.append(op)
        if op in (lib_ter._OP_SUB, lib_ter._OP_NOP):
            i, j = i - 1, j - 1
        elif op == lib_ter._OP_INS:
            j -= 1
        elif op == lib_ter._OP_DEL:
            i -= 1
        else:
            err = f"TER trace reached an unreachable cell ({i}, {j})"
            raise RuntimeError(err)
    return "".join(reversed(ops))
