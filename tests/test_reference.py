"""Reference checker: sacreBLEU numbers, parallel/comparable modes, alignment, facts, offsets."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sacrebleu.metrics.bleu import BLEU
from sacrebleu.metrics.chrf import CHRF
from sacrebleu.metrics.ter import TER

from mtqa import align as A
from mtqa.checkers import load_checker_class
from mtqa.checkers.reference import ReferenceChecker
from mtqa.errors import CheckerUnavailable, ConfigError, InputError
from mtqa.segment import segment
from mtqa.types import CheckResult, Document, Kind, SegmentedDocument, Severity

ROOT = Path(__file__).resolve().parent.parent


class HashEncoder:
    """A deterministic stand-in for a sentence model: hashed bag of lower-cased words."""

    def __init__(self) -> None:
        self.calls = 0
        self.seen: list[list[str]] = []

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        self.seen.append(list(texts))
        out = np.zeros((len(texts), 512), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in re.findall(r"\w+", t.lower()):
                out[i, zlib.crc32(w.encode()) % 512] += 1.0
        return out


def check(mt: str, *refs: str, mode: str = "auto") -> CheckResult:
    checker = ReferenceChecker(encoder=HashEncoder(), mode=mode)
    return checker.check([segment(Document(id="t", mt=mt, ref=tuple(refs)))])[0]


def facts(result: CheckResult) -> list[Any]:
    return [f for f in result.findings if f.category == "fact-mismatch"]


# --- parallel mode: sacreBLEU's numbers ----------------------------------------------------

MT_LINES = [
    "The Kremlin is buying millions of rockets and artillery shells from North Korea.",
    "A US official said on Tuesday that the purchases show severe supply shortages. "
    "Export controls and sanctions are working.",
    "",
    "Pentagon spokesman Pat Ryder said Russia was reaching out to North Korea.",
    "Photo: AP",
]
REF1_LINES = [
    "Russia is purchasing millions of rockets and artillery shells from North Korea.",
    "A U.S. official said Tuesday that the purchases signal severe supply shortages. "
    "Export controls and sanctions are biting.",
    "",
    "Pentagon spokesperson Pat Ryder said Russia had approached North Korea.",
    "Photo: AP",
]
REF2_LINES = [
    "Moscow is buying millions of rockets and shells from Pyongyang.",
    "An American official said on Tuesday the purchases reveal serious supply shortages. "
    "Sanctions and export controls are effective.",
    "",
    "Pat Ryder, a Pentagon spokesman, said Russia was reaching out to North Korea.",
    "Photo: AP",
]


def test_parallel_numbers_equal_sacrebleu() -> None:
    mt, r1, r2 = ("\n".join(x) for x in (MT_LINES, REF1_LINES, REF2_LINES))
    result = check(mt, r1, r2, mode="parallel")
    ref = result.reference
    assert ref is not None and ref.mode == "parallel"
    streams = [REF1_LINES, REF2_LINES]
    expected = {}
    for name, metric in (("BLEU", BLEU()), ("chrF", CHRF()), ("chrF++", CHRF(word_order=2)),
                         ("TER", TER())):
        score = metric.corpus_score(MT_LINES, streams)
        expected[name] = (score.score, metric.get_signature().format())
    got = {m.name: (m.score, m.signature) for m in ref.metrics}
    assert got.keys() == expected.keys()
    for name, (score, sig) in expected.items():
        assert got[name][0] == pytest.approx(score, abs=1e-9), name
        assert got[name][1] == sig
        assert "nrefs:2" in sig
    assert result.features["chrf"] == pytest.approx(expected["chrF"][0])
    for part in (f"BLEU|{expected['BLEU'][1]}", f"TER|{expected['TER'][1]}"):
        assert part in result.signature


def test_parallel_sentence_metrics_equal_sacrebleu() -> None:
    mt, r1, r2 = ("\n".join(x) for x in (MT_LINES, REF1_LINES, REF2_LINES))
    doc = segment(Document(id="t", mt=mt, ref=(r1, r2)))
    result = ReferenceChecker(encoder=HashEncoder(), mode="parallel").check([doc])[0]
    assert result.reference is not None
    sbleu, chrf, ter = BLEU(effective_order=True), CHRF(), TER()
    links = {link.mt: link for link in result.reference.alignment}
    # line 2 has two sentences on every side: they pair one to one
    two = [i for i, s in enumerate(doc.sentences) if "Export controls" in doc.text(s)]
    assert len(two) == 1
    link = links[two[0]]
    refs = ["Export controls and sanctions are biting.", "Sanctions and export controls are effective."]
    got = {m.name: m.score for m in link.metrics}
    assert got["BLEU"] == pytest.approx(sbleu.sentence_score(doc.text(doc.sentences[two[0]]), refs).score)
    assert got["chrF"] == pytest.approx(chrf.sentence_score(doc.text(doc.sentences[two[0]]), refs).score)
    assert got["TER"] == pytest.approx(ter.sentence_score(doc.text(doc.sentences[two[0]]), refs).score)
    # every non-blank line's sentences are linked, to sentences of the same line
    ref0 = segment(Document(id="r", mt=r1))
    for i, link in links.items():
        assert doc.sentences[i].paragraph == ref0.sentences[link.ref[0]].paragraph


def test_parallel_line_count_mismatch_is_an_input_error() -> None:
    mt = "\n".join(MT_LINES)
    ref = "\n".join(REF1_LINES[:2] + REF1_LINES[3:4])  # a line lost
    with pytest.raises(InputError, match="lines"):
        check(mt, ref, mode="parallel")
    # auto mode does not force line pairing: the texts are compared as comparable articles
    assert check(mt, ref).reference.mode == "comparable"  # type: ignore[union-attr]


def test_parallel_blank_lines_on_one_side_only_still_pair() -> None:
    mt = "First line here.\n\nSecond line here."
    ref = "First line there.\nSecond line there."
    result = check(mt, ref, mode="parallel")
    assert result.reference is not None and len(result.reference.alignment) == 2
    assert result.reference.metrics[1].score == pytest.approx(
        CHRF().corpus_score(["First line here.", "Second line here."],
                            [["First line there.", "Second line there."]]).score)


def test_auto_mode_picks_parallel_for_a_line_aligned_translation() -> None:
    mt, ref = "\n".join(MT_LINES), "\n".join(REF1_LINES)
    result = check(mt, ref)
    assert result.reference is not None and result.reference.mode == "parallel"
    assert result.doc_score is not None and 0 <= result.doc_score <= 100
    assert "mode:auto>parallel" in result.signature


def test_auto_mode_picks_comparable_for_the_seed_pair(abc_text: str, hill_text: str) -> None:
    result = check(abc_text, hill_text)
    assert result.reference is not None and result.reference.mode == "comparable"
    assert result.doc_score is None


def test_repeated_pairs_keep_each_documents_reference_count() -> None:
    """Statistics are extracted once per batch; each document's signature keeps its nrefs."""
    mt, r1, r2 = ("\n".join(x) for x in (MT_LINES, REF1_LINES, REF2_LINES))
    docs = [segment(Document(id="two", mt=mt, ref=(r1, r2))),
            segment(Document(id="one", mt=mt, ref=(r1,))),
            segment(Document(id="two-again", mt=mt, ref=(r1, r2)))]
    checker = ReferenceChecker(encoder=HashEncoder(), mode="parallel")
    together = checker.check(docs)
    assert "nrefs:2" in together[2].signature and "nrefs:1" not in together[2].signature
    assert together[2].reference == together[0].reference
    assert together == [ReferenceChecker(encoder=HashEncoder(), mode="parallel").check([d])[0]
                        for d in docs]
    for link in together[1].reference.alignment:  # type: ignore[union-attr]
        assert all("nrefs:1" in m.signature for m in link.metrics)


def test_every_pair_metric_equals_sacrebleu_sentence_score() -> None:
    mt, r1, r2 = ("\n".join(x) for x in (MT_LINES, REF1_LINES, REF2_LINES))
    doc = segment(Document(id="t", mt=mt, ref=(r1, r2)))
    result = ReferenceChecker(encoder=HashEncoder(), mode="parallel").check([doc])[0]
    assert result.reference is not None
    metrics = {"BLEU": BLEU(effective_order=True), "chrF": CHRF(), "TER": TER()}
    checked = 0
    for link in result.reference.alignment:
        text = doc.text(doc.sentences[link.mt])
        if text not in MT_LINES:
            continue  # the two-sentence line: test_parallel_sentence_metrics_equal_sacrebleu
        k = MT_LINES.index(text)
        for m in link.metrics:
            expected = metrics[m.name].sentence_score(MT_LINES[k], [REF1_LINES[k], REF2_LINES[k]])
            assert m.score == pytest.approx(expected.score, abs=1e-9), (k, m.name)
            assert m.signature == metrics[m.name].get_signature().format()
        checked += 1
    assert checked == 3


def test_comparable_mode_with_two_references_aligns_with_the_first() -> None:
    mt, r1, r2 = ("\n".join(x) for x in (MT_LINES, REF1_LINES, REF2_LINES))
    both, first = check(mt, r1, r2, mode="comparable"), check(mt, r1, mode="comparable")
    assert both.reference is not None and first.reference is not None
    assert both.reference.alignment and both.reference.alignment == first.reference.alignment
    assert both.reference.metrics == first.reference.metrics
    assert "nrefs:1" in both.signature


# --- facts ----------------------------------------------------------------------------------

FACT_CASES = [
    ("The minister said on Tuesday that talks would resume.",
     "The minister said on Wednesday that talks would resume.", "Tuesday", "Wednesday"),
    ("Russia's war against Ukraine has stretched more than six months.",
     "Russia's war against Ukraine has stretched more than seven months.", "six months", "seven months"),
    ("The photo was released on September 6, 2022, by state media.",
     "The photo was released on September 7, 2022, by state media.", "September 6, 2022", "September 7, 2022"),
    ("White House spokesman John Kerry told reporters the purchase had not happened.",
     "White House spokesman John Kirby told reporters the purchase had not happened.", "John Kerry", "John Kirby"),
    ("Exports fell 5% to $3.2 billion last year.", "Exports fell 6% to $3.2 billion last year.", "5%", "6%"),
    ("The company was founded in 1998 in Shanghai.", "The company was founded in 1989 in Shanghai.", "1998", "1989"),
    ("Officials said 1,200 people were evacuated from the coast.",
     "Officials said 2,100 people were evacuated from the coast.", "1,200 people", "2,100 people"),
]


@pytest.mark.parametrize("mode", ["parallel", "comparable"])
@pytest.mark.parametrize(("mt", "ref", "flagged", "ref_value"), FACT_CASES,
                         ids=["weekday", "months", "date", "name", "percent", "year", "count"])
def test_fact_mismatch(mt: str, ref: str, flagged: str, ref_value: str, mode: str) -> None:
    result = check(mt, ref, mode=mode)
    found = facts(result)
    assert [mt[f.start:f.end] for f in found] == [flagged]
    assert found[0].severity is Severity.MAJOR
    assert f'"{ref_value}"' in found[0].message


NO_FACT_CASES = [
    ("Russia bought 20 drones from Iran in August.", "Russia bought twenty drones from Iran in August."),
    ("He took the train on July 5 and was reported missing on July 10, 2020.",
     "On July 10, 2020, police were told he had taken the train."),  # an omission, not a mismatch
    ("Russia's Defense Ministry is buying rockets.", "The Russian Ministry of Defence is buying rockets."),
    ("The film by director Dapeng was shortlisted.", "The film directed by Da Peng was nominated."),
    ("The war has lasted six months.", "The war has lasted half a year."),  # no number on one side
    ("The talks resumed on Tuesday in Geneva.", "The talks resumed in Geneva."),  # no weekday in ref
    ("He walked five or six hundred meters from home.", "He walked about 500 meters from home."),
    ("ABC News was told by a US official that Russia is buying shells.",
     "A U.S. official told The Hill that Russia is buying shells."),  # different outlets, unrelated
    ("Ding Dong Online! Good Teacher Will Be Broadcast Next Week",
     "Dingdong Goes Online! Hello Teacher Will Air Next Week"),  # Title Case: capitals mark no names
]


@pytest.mark.parametrize(("mt", "ref"), NO_FACT_CASES,
                         ids=["word-number", "omitted-date", "spelling", "spacing", "one-side",
                              "no-weekday", "range", "outlets", "title-case"])
def test_no_fact_mismatch(mt: str, ref: str) -> None:
    assert facts(check(mt, ref, mode="parallel")) == []


def test_fact_in_any_reference_is_not_a_mismatch() -> None:
    mt = "The minister said on Tuesday that talks would resume."
    r1 = "The minister said on Wednesday that talks would resume."
    r2 = "On Tuesday, the minister said talks would resume."
    assert facts(check(mt, r1, r2, mode="parallel")) == []


def test_quote_mismatch_in_comparable_mode_only() -> None:
    mt = ('"The fact that they are reaching out to North Korea is a sign that they are having '
          'difficulty on the sustainment front," Ryder said.')
    ref = ('"The fact that they\'re reaching out to North Korea is a sign that they\'re having some '
           'challenges on the sustainment front," Ryder said.')
    found = facts(check(mt, ref, mode="comparable"))
    assert [(mt[f.start:f.end], f.rule) for f in found] == [("difficulty", "fact-quote")]
    assert '"some challenges"' in found[0].message
    # a parallel reference translates the quote: other words there are no misquotation
    assert facts(check(mt, ref, mode="parallel")) == []


# --- offsets, diff, identity -----------------------------------------------------------------


def test_offsets_exact_with_emoji_and_cjk(emoji_text: str) -> None:
    mt = "🚀 东京 officials 👩‍🚀 said on Tuesday that 6 people were hurt in 文昌.\nThe launch was postponed."
    ref = "🚀 东京 officials 👩‍🚀 said on Wednesday that 7 people were hurt in 文昌.\nThe launch was delayed."
    result = check(mt, ref, mode="parallel")
    assert [(mt[f.start:f.end], f.rule) for f in facts(result)] == [
        ("Tuesday", "fact-weekday"), ("6 people", "fact-number")]
    diffs = [mt[f.start:f.end] for f in result.findings if f.category == "reference-mismatch"]
    assert diffs == ["Tuesday", "6", "postponed"]
    for f in result.findings:
        assert 0 <= f.start < f.end <= len(mt)
    # the shared emoji/CJK fixture against a reference that changes one CJK word
    ref2 = emoji_text.replace("任务", "项目")
    result = check(emoji_text, ref2, mode="parallel")
    diffs = [emoji_text[f.start:f.end] for f in result.findings]
    assert diffs == ["任务"]


def test_diff_findings_are_minor_low_confidence_evidence() -> None:
    result = check("The army continues to suffer from severe supply shortages.",
                   "The army is suffering severe supply shortages.", mode="parallel")
    diffs = [f for f in result.findings if f.category == "reference-mismatch"]
    assert diffs and all(f.severity is Severity.MINOR and f.confidence <= 0.3 for f in diffs)
    by_text = {"The army continues to suffer from severe supply shortages."[f.start:f.end]: f.message
               for f in diffs}
    assert by_text == {"continues to suffer from": 'differs from the reference ("is suffering")'}


@pytest.mark.parametrize("mode", ["auto", "parallel", "comparable"])
def test_identical_reference_gives_no_findings(abc_text: str, mode: str) -> None:
    result = check(abc_text, abc_text, mode=mode)
    assert result.findings == ()
    ref = result.reference
    assert ref is not None
    assert ref.mt_coverage == 1.0 and ref.ref_coverage == 1.0
    assert ref.unsupported == () and ref.missed == ()
    chrf = next(m for m in ref.metrics if m.name == "chrF")
    assert chrf.score == pytest.approx(100.0)
    assert (mode == "comparable") or ref.mode == "parallel"


def test_document_without_reference() -> None:
    doc = segment(Document(id="n", mt="One sentence. Another sentence."))
    result = ReferenceChecker(encoder=HashEncoder()).check([doc])[0]
    assert result.reference is None and result.findings == ()
    assert result.sentence_scores == (None, None)


def test_each_document_is_embedded_alone_and_order_independent(abc_text: str,
                                                                 hill_text: str) -> None:
    # one encode call per document with a reference, holding only its own texts: a sentence
    # model's float32 products round a text's embedding differently beside other texts, so
    # what shares a batch must not reach the numbers (issue 21)
    docs = [segment(Document(id="a", mt=abc_text, ref=(hill_text,))),
            segment(Document(id="b", mt="\n".join(MT_LINES), ref=("\n".join(REF1_LINES),))),
            segment(Document(id="c", mt="No reference here."))]
    enc = HashEncoder()
    checker = ReferenceChecker(encoder=enc)
    together = checker.check(docs)
    assert enc.calls == 2
    b_texts = "\n".join(MT_LINES + REF1_LINES)
    assert all(t in abc_text or t in hill_text for t in enc.seen[0])
    assert enc.seen[1] and all(t in b_texts for t in enc.seen[1])
    assert not any(t and t in b_texts for t in enc.seen[0])
    assert [r.doc_id for r in together] == ["a", "b", "c"]
    alone = [checker.check([d])[0] for d in docs]
    assert together == alone
    assert checker.check(docs[::-1]) == together[::-1]


@pytest.mark.model
def test_a_documents_result_does_not_depend_on_the_documents_beside_it(
        model_checker: ReferenceChecker, abc_text: str, hill_text: str) -> None:
    """With the real sentence model (whose batched float32 embeddings differ by ~1e-7 with
    other texts beside them): the same floats alone and in any company."""
    docs = [segment(Document(id="a", mt=abc_text, ref=(hill_text,))),
            segment(Document(id="b", mt="\n".join(MT_LINES), ref=("\n".join(REF1_LINES),))),
            segment(Document(id="h", mt=hill_text, ref=(abc_text,)))]
    alone = [model_checker.check([d])[0] for d in docs]
    assert model_checker.check(docs) == alone
    assert model_checker.check(docs[::-1]) == alone[::-1]


def test_sentence_scores_and_features(abc_text: str, hill_text: str) -> None:
    doc = segment(Document(id="a", mt=abc_text, ref=(hill_text,)))
    result = ReferenceChecker(encoder=HashEncoder()).check([doc])[0]
    ref = result.reference
    assert ref is not None
    assert len(result.sentence_scores) == len(doc.sentences)
    linked = {link.mt for link in ref.alignment}
    for i, (s, score) in enumerate(zip(doc.sentences, result.sentence_scores)):
        if s.kind is Kind.BOILERPLATE or i not in linked:
            assert score is None
        else:
            assert score is not None and 0 <= score <= 100
    assert set(ref.unsupported) | linked >= {i for i, s in enumerate(doc.sentences) if s.kind is Kind.BODY}
    assert result.features["mt_coverage"] == ref.mt_coverage
    for s in ref.sentences:
        assert hill_text[s.start:s.end].strip() == hill_text[s.start:s.end]


def test_bad_mode_and_closed_checker() -> None:
    with pytest.raises(ConfigError, match="mode"):
        ReferenceChecker(encoder=HashEncoder(), mode="bilingual")
    checker = ReferenceChecker(encoder=HashEncoder())
    checker.close()
    checker.close()
    with pytest.raises(CheckerUnavailable):
        checker.check([segment(Document(id="x", mt="a", ref=("b",)))])


def test_registry_and_lazy_imports() -> None:
    assert load_checker_class("reference") is ReferenceChecker
    code = ("import sys, mtqa.checkers.reference, mtqa.align; "
            "print([m for m in ('torch', 'transformers', 'sentence_transformers') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- alignment functions ----------------------------------------------------------------------


def test_link_union_gives_many_to_one_and_one_to_many_in_any_order() -> None:
    score = np.array([[0.9, 0.1, 0.0, 0.0],
                      [0.0, 0.1, 0.2, 0.8],   # row 1 -> col 3 (reordered)
                      [0.0, 0.7, 0.6, 0.0],   # row 2 merges cols 1 and 2
                      [0.0, 0.0, 0.1, 0.75]])  # row 3 also -> col 3 (split)
    assert A.link_union(score, 0.5) == [(0, 0), (1, 3), (2, 1), (2, 2), (3, 3)]
    assert A.link_mutual_best(score, 0.5) == [(0, 0), (1, 3), (2, 1)]
    # an order-preserving aligner cannot keep both the reordered link and the one after it
    assert not {(1, 3), (2, 1)} <= set(A.link_monotone(score, 0.5))


def test_align_leaves_unrelated_sentences_unaligned() -> None:
    rows = ["Russia is buying rockets from North Korea.", "The weather was sunny in Paris.",
            "Kirby said the purchase had not happened yet.", "Stocks fell sharply on Monday."]
    cols = ["Kirby said there was no indication the purchase had happened.",
            "Russia is purchasing rockets and shells from North Korea.",
            "A new bakery opened downtown."]
    enc = HashEncoder()
    e = enc.encode(rows + cols)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    cos = (e[:4] @ e[4:].T).astype(np.float64)
    pairs = A.align(cos, A.lexical_similarity(rows, cols))
    assert pairs == [(0, 1), (2, 0)]


# --- the real model (slow) ---------------------------------------------------------------------


def _gold(mt: SegmentedDocument, ref: SegmentedDocument) -> tuple[set[tuple[int, int]], set[tuple[int, int]]]:
    data = json.loads((ROOT / "fixtures" / "seed_alignment.json").read_text(encoding="utf-8"))
    mt_idx = {mt.text(s): i for i, s in enumerate(mt.sentences)}
    ref_idx = {ref.text(s): j for j, s in enumerate(ref.sentences)}
    sure = {(mt_idx[x["mt_text"]], ref_idx[r["ref_text"]]) for x in data["links"] for r in x["sure"]}
    possible = {(mt_idx[x["mt_text"]], ref_idx[r["ref_text"]]) for x in data["links"] for r in x["possible"]}
    return sure, sure | possible


@pytest.fixture(scope="module")
def model_checker() -> ReferenceChecker:
    return ReferenceChecker()


@pytest.mark.model
def test_seed_alignment_against_annotation(model_checker: ReferenceChecker, abc_text: str, hill_text: str) -> None:
    doc = segment(Document(id="abc", mt=abc_text, ref=(hill_text,)))
    result = model_checker.check([doc])[0]
    ref = result.reference
    assert ref is not None and ref.mode == "comparable"
    pred = {(link.mt, j) for link in ref.alignment for j in link.ref}
    sure, possible = _gold(doc, segment(Document(id="hill", mt=hill_text)))
    precision = len(pred & possible) / len(pred)
    recall = len(pred & sure) / len(sure)
    # measured 0.75 / 0.67 (benchmarks/reference_seeds.py); a monotone aligner gets 0.47 recall
    assert precision >= 0.65
    assert recall >= 0.55
    # coverage near the annotation's (0.52 of the ABC body, 0.63 of the Hill body, sure links)
    assert ref.mt_coverage == pytest.approx(len({i for i, _ in sure}) / 23, abs=0.15)
    assert ref.ref_coverage == pytest.approx(len({j for _, j in sure}) / 19, abs=0.15)
    # facts are compared in aligned sentences only, and the two reports agree on their facts
    aligned_spans = [(doc.sentences[link.mt].start, doc.sentences[link.mt].end) for link in ref.alignment]
    for f in facts(result):
        assert any(s <= f.start < e for s, e in aligned_spans)
    assert len(facts(result)) <= 2


@pytest.mark.model
@pytest.mark.parametrize(("precision", "tolerance"), [("fp32", 1e-5), ("bf16", 2e-3)])
def test_model_batch_size_does_not_change_embeddings(abc_text: str, precision: str,
                                                     tolerance: float) -> None:
    """Padding never leaks into a sentence's embedding: batches of 1 and of 8 agree, to float32
    rounding in fp32 and to bfloat16 rounding in bf16 (a batch's padded length changes the
    products' shapes, and autocast rounds their outputs to 8 bits: measured up to 9e-4 on the
    seed; the checker's own batch size is fixed, and each document embeds in a call of its own,
    so this never moves a report)."""
    from mtqa.encoders import SentenceTransformerEncoder

    doc = segment(Document(id="abc", mt=abc_text))
    texts = [doc.text(s) for s in doc.sentences]
    enc = SentenceTransformerEncoder(precision=precision, batch_size=1)
    one = enc.encode(texts)
    enc.batch_size = 8
    eight = enc.encode(texts)
    np.testing.assert_allclose(one, eight, atol=tolerance)


def test_the_embedder_runs_in_the_precision_the_setting_resolves_to(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``auto``: bf16 where the CPU computes bfloat16 natively, fp32 elsewhere (as the
    language model); fp32 and bf16 as asked; anything else refused."""
    import torch

    from mtqa.encoders import embedder_precision

    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": True},
                        raising=False)
    assert embedder_precision("auto") == "bf16"
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx2": True}, raising=False)
    assert embedder_precision("auto") == "fp32"
    assert embedder_precision("bf16") == "bf16"
    assert embedder_precision("fp32") == "fp32"
    with pytest.raises(ConfigError, match="fp16"):
        embedder_precision("fp16")
    with pytest.raises(ConfigError, match="fp16"):  # refused with an injected encoder too
        ReferenceChecker(encoder=HashEncoder(), embedder_precision="fp16")


@pytest.mark.model
def test_bf16_embeddings_stay_close_to_fp32_and_the_signature_says_which(
        abc_text: str, hill_text: str) -> None:
    """The bundled encoder in bf16 (autocast) against fp32 on the seed pair: really other
    floats, each embedding within a cosine of 1e-4 of its fp32 one, the same alignment, and the
    signature (so the batch store) names the precision."""
    fp32 = ReferenceChecker(embedder_precision="fp32")
    bf16 = ReferenceChecker(embedder_precision="bf16")
    assert "|emb:all-MiniLM-L6-v2/fp32|" in fp32.signature
    assert "|emb:all-MiniLM-L6-v2/bf16|" in bf16.signature
    texts = []
    for text in (abc_text, hill_text):
        doc = segment(Document(id="d", mt=text))
        texts += [doc.text(s) for s in doc.sentences]
    a, b = fp32._embed(texts), bf16._embed(texts)
    assert not np.array_equal(a, b)
    assert float(((a * b).sum(axis=1)).min()) > 0.9999
    assert float(np.abs(a @ a.T - b @ b.T).max()) < 0.01
    doc = segment(Document(id="abc", mt=abc_text, ref=(hill_text,)))
    ra, rb = fp32.check([doc])[0].reference, bf16.check([doc])[0].reference
    assert ra is not None and rb is not None
    assert [(x.mt, x.ref) for x in ra.alignment] == [(x.mt, x.ref) for x in rb.alignment]
    assert rb.mt_coverage == ra.mt_coverage and rb.ref_coverage == ra.ref_coverage
    for x, y in zip(ra.alignment, rb.alignment):
        assert y.similarity == pytest.approx(x.similarity, abs=0.01)


def test_parallel_blank_reference_line_leaves_its_sentences_unsupported() -> None:
    mt = "The first line.\nA second line the reference lacks.\nThe third line."
    ref = "The first line.\n\nThe third line."
    result = check(mt, ref, mode="parallel")
    ref_result = result.reference
    assert ref_result is not None
    doc = segment(Document(id="t", mt=mt))
    assert [doc.text(doc.sentences[i]) for i in ref_result.unsupported] == ["A second line the reference lacks."]
    assert ref_result.mt_coverage == pytest.approx(2 / 3)
    assert ref_result.ref_coverage == 1.0
    # sacreBLEU still scores the line pair (hypothesis against an empty reference)
    assert ref_result.metrics[1].score == pytest.approx(
        CHRF().corpus_score(mt.split("\n"), [ref.split("\n")]).score)


# --- reading pairs with the language model ------------------------------------------------------


@pytest.mark.model
def test_lm_reads_each_candidate_after_its_reference() -> None:
    """A faithful candidate is more predictable after its reference than a wrong one."""
    from mtqa.calibrate import model_inputs, unit_features

    ref = ("The company said on Monday that profits rose by a fifth.\n"
           "Its shares fell two per cent in early trading.")
    good = ("The company said Monday that its profit rose by one fifth.\n"
            "Its shares dropped 2 percent in early trading.")
    bad = ("The firm announced on Monday that losses grew by a fifth.\n"
           "Its stock climbed sharply after the market closed.")
    checker = ReferenceChecker(encoder=HashEncoder(), mode="parallel", lm=True)
    assert "|lm:gemma3-270m@" in checker.signature  # the default model
    docs = [segment(Document(id=n, mt=t, ref=(ref,))) for n, t in (("good", good), ("bad", bad))]
    res = checker.check(docs)
    means = []
    for d, r in zip(docs, res):
        assert len(r.sentence_features) == len(d.sentences)
        lines = [m for m in r.sentence_features if m]
        assert len(lines) == 2  # one figure per line pair, on its first sentence
        assert all(m["lm_cond_tokens"] >= 8 and m["lm_cond_sum"] > 0 for m in lines)
        means.append(r.features["lm_cond_sum"] / r.features["lm_cond_tokens"])
    assert means[0] < means[1] - 0.3
    # the same numbers whatever else is checked alongside (contexts read alone)
    alone = ReferenceChecker(encoder=HashEncoder(), mode="parallel",
                             language_model=checker._lm).check(docs[1:])[0]
    assert alone.features["lm_cond_sum"] == pytest.approx(res[1].features["lm_cond_sum"], abs=1e-3)
    # the calibration reads them as adequacy inputs of the unit
    raw = unit_features(docs[0], [res[0]], [0])
    assert raw["ref_lm_cond_tokens"] == res[0].sentence_features[0]["lm_cond_tokens"]
    raw["lm_lm_sum"] = raw["ref_lm_cond_sum"] * 2
    assert model_inputs(raw)["ref_lm_gain_share"] == pytest.approx(0.5, abs=0.01)
    # per word, for the calibrated word model: every word of the candidate, with its reading
    for d, r in zip(docs, res):
        assert r.words is not None
        assert [d.doc.mt[s:e] for s, e in zip(r.words.start, r.words.end)] == \
            re.findall(r"\w+", d.doc.mt)
        cond = r.words.values["lm_cond"]
        assert all(c == c and c >= 0 for c in cond)
        # the words' shares add up to the pair's figure, less what falls on punctuation
        total = sum(m["lm_cond_sum"] for m in r.sentence_features if m)
        assert 0.7 * total < sum(cond) <= total + 1e-3
    bad_words = dict(zip((docs[1].doc.mt[s:e] for s, e in zip(res[1].words.start,
                                                               res[1].words.end)),
                         zip(res[1].words.values["absent"], res[1].words.values["lm_cond"])))
    assert bad_words["losses"][0] == 1.0 and bad_words["Monday"][0] == 0.0
    assert bad_words["losses"][1] > bad_words["Monday"][1]


def test_without_the_lm_the_signature_says_so() -> None:
    checker = ReferenceChecker(encoder=HashEncoder(), mode="parallel")
    assert "|lm:none|" in checker.signature
    doc = segment(Document(id="t", mt="A cat sat on the mat.", ref=("The cat sat on the mat.",)))
    result = checker.check([doc])[0]
    assert result.sentence_features == () and "lm_cond_sum" not in result.features
    # the diff is given per word all the same; the LM reading is NaN
    assert result.words is not None
    words = [doc.doc.mt[s:e] for s, e in zip(result.words.start, result.words.end)]
    assert words == ["A", "cat", "sat", "on", "the", "mat"]
    assert result.words.values["unmatched"] == (1.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    assert result.words.values["absent"] == (1.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    assert all(c != c for c in result.words.values["lm_cond"])
