"""mtqa.ter: the batched TER shift search and the statistics memo give sacreBLEU's numbers."""

from __future__ import annotations

import numpy as np
import pytest
from sacrebleu.metrics.bleu import BLEU
from sacrebleu.metrics.chrf import CHRF
from sacrebleu.metrics.ter import TER

from mtqa import ter
from mtqa.segment import segment
from mtqa.types import Document

TER_CASES = [
    ("the cat sat on the mat", ["the cat sat on the mat"]),
    ("on the mat the cat sat", ["the cat sat on the mat"]),
    ("sat the cat the on mat mat the", ["the cat sat on the mat"]),
    ("", ["the cat sat on the mat"]),
    ("the cat sat on the mat", [""]),
    ("", [""]),
    ("cat", ["the cat sat on the long mat by the door of the house in the town near the river " * 4]),
    ("the cat sat on the mat by the door of the house in the town near the river " * 4, ["cat"]),
    ("The Cat sat, on the MAT.", ["the cat sat on the mat", "a cat sat on a mat"]),
    ("Export controls and sanctions are working, said a US official on Tuesday.",
     ["A U.S. official said Tuesday that export controls and sanctions are biting.",
      "Sanctions and export controls are effective, an American official said on Tuesday."]),
    # enough repeated words that the search stops at sacreBLEU's 1000 candidates
    (" ".join(["a b a c b a d a b c"] * 6), [" ".join(["b a c a d a b a a c"] * 6)]),
]


@pytest.mark.parametrize("case_sensitive", [False, True], ids=["lc", "cased"])
@pytest.mark.parametrize(("hyp", "refs"), TER_CASES,
                         ids=["same", "moved", "scrambled", "empty-hyp", "empty-ref", "both-empty",
                              "short-hyp", "short-ref", "two-refs", "news", "candidate-limit"])
def test_ter_statistics_equal_sacrebleu(hyp: str, refs: list[str], case_sensitive: bool) -> None:
    from mtqa.ter import BatchTER

    streams = [[r] for r in refs]
    ours = BatchTER(case_sensitive=case_sensitive)
    theirs = TER(case_sensitive=case_sensitive)
    assert ours._extract_corpus_statistics([hyp], streams) == \
        theirs._extract_corpus_statistics([hyp], streams)
    assert ours.get_signature().format() == theirs.get_signature().format()


def test_ter_statistics_equal_sacrebleu_on_reordered_sentences(abc_text: str, hill_text: str) -> None:
    """Comparable sentences and shuffled words: long shift searches, many candidates, ties."""
    from mtqa.ter import BatchTER

    def long_sentences(text: str) -> list[str]:
        seg = segment(Document(id="t", mt=text))
        return [t for t in map(seg.text, seg.sentences) if len(t) > 40][:6]

    a, b = long_sentences(abc_text), long_sentences(hill_text)
    rng = np.random.default_rng(7)
    shuffled = [" ".join(rng.permutation(s.split())) for s in a]
    hyps, refs = a + shuffled, b + a
    assert BatchTER()._extract_corpus_statistics(hyps, [refs]) == \
        TER()._extract_corpus_statistics(hyps, [refs])


def test_ter_statistics_do_not_depend_on_how_many_candidates_go_together(
        monkeypatch: pytest.MonkeyPatch) -> None:

    hyps = [case[0] for case in TER_CASES if len(case[1]) == 1]
    refs = [[case[1][0] for case in TER_CASES if len(case[1]) == 1]]
    expected = TER()._extract_corpus_statistics(hyps, refs)
    monkeypatch.setattr(ter, "_MATRIX_CELLS", 500)  # a few candidates a batch
    assert ter.BatchTER()._extract_corpus_statistics(hyps, refs) == expected


MEMO_CASES = [
    # (hypotheses, reference streams): repeated pairs, shared references, two references
    (["the cat sat on the mat", "a cat sat on a mat", "the cat sat on the mat"],
     [["the cat sat on the mat", "the cat sat on the mat", "the cat sat on the mat"]]),
    (["Export controls are working, said an official.", "", "Sanctions bite."],
     [["Export controls and sanctions are working.", "Photo: AP", "Sanctions are biting."],
      ["Sanctions work, an official said.", "", "Sanctions are effective."]]),
]


@pytest.mark.parametrize(("hyps", "streams"), MEMO_CASES, ids=["repeated", "two-refs"])
@pytest.mark.parametrize("make", [BLEU, lambda: BLEU(effective_order=True), CHRF,
                                  lambda: CHRF(word_order=2), ter.BatchTER],
                         ids=["bleu", "sentence-bleu", "chrf", "chrf++", "ter"])
def test_memo_scores_equal_sacrebleu_public_calls(hyps: list[str], streams: list[list[str]],
                                                   make: object) -> None:
    """Statistics from the memo give sacreBLEU's corpus_score and each sentence_score."""
    metric = make()  # type: ignore[operator]
    public = make()  # type: ignore[operator]
    memo = ter.StatsMemo()
    stats, sig = memo.stats(metric, hyps, streams)
    again, _ = memo.stats(metric, hyps, streams)  # served from the memo
    assert again == stats
    assert ter.score(metric, stats) == public.corpus_score(hyps, streams).score
    assert sig == public.get_signature().format()
    for k, hyp in enumerate(hyps):
        expected = public.sentence_score(hyp, [s[k] for s in streams]).score
        assert ter.score(metric, [stats[k]]) == pytest.approx(expected, abs=1e-9)


def test_sentence_ter_equals_sacrebleu() -> None:
    import sacrebleu

    hyps = [h for h, refs in TER_CASES if len(refs) == 1]
    refs = [refs[0] for _, refs in TER_CASES if len(refs) == 1]
    assert ter.sentence_ter(hyps, refs) == [sacrebleu.sentence_ter(h, [r]).score
                                            for h, r in zip(hyps, refs)]
