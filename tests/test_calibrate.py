"""Calibration: the shipped file, its loader, the fitters, and how reports use it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from conftest import ABC, HILL, read
from mtqa.aggregate import calibrate_findings
from mtqa.calibrate import (
    SCORE_HALF,
    WORD_INPUTS,
    Calibration,
    SpanModel,
    WordModel,
    fit_logistic,
    fit_poisson,
    load_calibration,
    penalty_to_score,
    score_to_penalty,
    unit_features,
    variant_for,
    word_evidence_ready,
    word_inputs,
)
from mtqa.config import Settings
from mtqa.errors import ConfigError
from mtqa.pipeline import Checker
from mtqa.types import Finding, Severity, WordEvidence

ROOT = Path(__file__).resolve().parent.parent
NO_LM = Settings(checkers=("structure", "grammar"), grammar_backend="harper")


@pytest.fixture(scope="module")
def shipped() -> Calibration:
    return load_calibration()


def test_score_scale_means_expected_penalty() -> None:
    # the README's reading of the score table (mtqa.calibrate: SCORE_HALF, SCORE_SHAPE)
    assert score_to_penalty(50.0) == pytest.approx(SCORE_HALF)
    assert penalty_to_score(SCORE_HALF) == pytest.approx(50.0)
    assert penalty_to_score(0.0) == 100.0 and penalty_to_score(-3.0) == 100.0
    grid = [0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 25.0]
    scores = [penalty_to_score(p) for p in grid]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == len(scores)
    assert all(score_to_penalty(penalty_to_score(p)) == pytest.approx(p) for p in grid[:-1])
    assert penalty_to_score(25.0) < 1.0  # non-translation scores near 0


def test_shipped_calibration_is_complete_and_traceable(shipped: Calibration) -> None:
    assert set(shipped.models) == {"lm-free", "nolm-free", "lm-ref", "nolm-ref"}
    assert set(shipped.spans) == {"free", "ref"} and set(shipped.words) == {"free", "ref"}
    prov = shipped.provenance
    assert len(str(prov["data_sha256"])) == 64 and prov["data"] == "mqm_2021_zhen.jsonl"
    assert prov["refit"] == "python scripts/calibrate.py" and prov["code"]
    assert len(prov["held_out_docs"]) == 10  # type: ignore[arg-type]
    # the models/ copy is the packaged one
    on_disk = json.loads((ROOT / "models" / "calibration.json").read_text(encoding="utf-8"))
    assert on_disk == shipped.to_dict()
    for name, model in shipped.models.items():
        assert len(model.inputs) == len(model.coef) == len(model.scale), name
        assert all(s > 0 for s in model.scale), name
    for side, span in shipped.spans.items():
        assert 0.0 <= span.keep <= 1.0 and 0.0 <= span.major <= 1.01, side
        assert span.groups and all(":" in g for g in span.groups), side
    for side, words in shipped.words.items():
        assert words.side == side and words.inputs == WORD_INPUTS[side]
        assert 0.0 < words.keep <= words.major <= 1.01 and all(s > 0 for s in words.scale)
        assert words.figures["held_out_f1"] > 0


def test_round_trip_and_fingerprint(shipped: Calibration, tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps(shipped.to_dict()), encoding="utf-8")
    again = load_calibration(path)
    assert again.to_dict() == shipped.to_dict()
    assert again.fingerprint() == shipped.fingerprint()
    changed = shipped.to_dict()
    changed["models"]["nolm-free"]["intercept"] += 0.5  # type: ignore[index]
    path.write_text(json.dumps(changed), encoding="utf-8")
    assert load_calibration(path).fingerprint() != shipped.fingerprint()


@pytest.mark.parametrize("content, message", [
    (None, "cannot read"),
    ("{not json", "malformed calibration"),
    ('{"schema": "other/1"}', "not a mtqa.calibration/1 file"),
    ('{"schema": "mtqa.calibration/1", "version": "x", "models": {"a": {"inputs": {}}}}',
     "malformed calibration"),
])
def test_bad_calibration_file_names_the_file(tmp_path: Path, content: str | None,
                                             message: str) -> None:
    path = tmp_path / "cal.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError, match=message) as info:
        load_calibration(path)
    assert str(path) in str(info.value)
    with pytest.raises(ConfigError):
        Checker(Settings(checkers=("structure",), calibration=str(path)))


def test_variant_follows_what_ran() -> None:
    assert variant_for({"words": 3.0}) == "nolm-free"
    assert variant_for({"words": 3.0, "lm_words": 3.0}) == "lm-free"
    assert variant_for({"words": 3.0, "ref_len_ratio": 0.0}) == "nolm-ref"
    assert variant_for({"lm_words": 3.0, "ref_len_ratio": 0.0}) == "lm-ref"


def test_fitted_models_punish_findings(shipped: Calibration) -> None:
    base = {"words": 20.0, "chars": 110.0}
    for variant in ("nolm-free", "nolm-ref"):
        raw = dict(base)
        if variant == "nolm-ref":
            raw.update(ref_len_ratio=0.0, ref_chrf=60.0, ref_similarity=0.9)
        model = shipped.models[variant]
        clean = model.expected_penalty(raw)
        # rule-based findings count what an MQM rater gives them: major 5, non-translation 25
        broken = model.expected_penalty({**raw, "n_structure_major": 2.0})
        assert broken == pytest.approx(clean + 10.0) and clean > 0.0, variant
        untranslated = model.expected_penalty({**raw, "n_blocking_major": 1.0})
        assert untranslated == pytest.approx(clean + 25.0), variant
        more = model.expected_penalty({**raw, "n_grammar_minor": 3.0, "n_grammar_major": 1.0})
        assert more >= clean, variant
    ref = shipped.models["nolm-ref"]
    close = {**base, "ref_len_ratio": 0.0, "ref_chrf": 80.0, "ref_similarity": 0.95}
    far = {**close, "ref_chrf": 20.0, "ref_similarity": 0.4}
    assert ref.expected_penalty(far) > ref.expected_penalty(close)


def test_an_lm_span_crossing_the_major_threshold_does_not_jump_the_score(
        shipped: Calibration) -> None:
    """The unit model reads the fluency checker's spans graded by confidence, not counted by
    severity: a span whose peak moves across ``Z_MAJOR`` changes the expected penalty a little,
    never by a whole major span (it was a 10-point score jump on an MQM document, bf16 vs fp32)."""
    from mtqa.checkers.fluency import FluencyChecker
    from mtqa.segment import segment
    from mtqa.types import CheckResult, Document, Kind

    sd = segment(Document("abc", read(ABC)))
    body = [i for i, s in enumerate(sd.sentences) if s.kind is Kind.BODY]
    first = sd.sentences[body[0]]
    stats = {"words": 20.0, "tokens": 26.0, "lm_sum": 80.0, "excess_sum": 30.0,
             "excess_pos_sum": 40.0, "cost_sum": 12.0, "z0_max": 3.0}

    def raw(confidence: float) -> dict[str, float]:
        major = confidence >= 0.5  # the checker's own rule: peak >= Z_MAJOR
        f = Finding(first.start, first.start + 8, "garbled" if major else "unnatural-phrasing",
                    Severity.MAJOR if major else Severity.MINOR, FluencyChecker.name, "m",
                    confidence=confidence, rule="lm-surprisal")
        result = CheckResult(FluencyChecker.name, "abc", "fluency|test", findings=(f,),
                             sentence_features=tuple(stats if i == body[0] else {}
                                                     for i in range(len(sd.sentences))))
        return unit_features(sd, [result], [body[0]])

    gap = FluencyChecker.Z_MAJOR - FluencyChecker.Z_MINOR
    at_minor = 1.0 / (1.0 + math.exp(gap))  # a span's confidence where it first appears
    assert raw(at_minor)["n_fluency_major"] == pytest.approx(0.0, abs=1e-6)
    assert raw(at_minor)["n_fluency_minor"] == pytest.approx(1.0, abs=1e-6)
    assert raw(0.95)["n_fluency_major"] == 1.0 and raw(0.95)["n_fluency_minor"] == 0.0
    ladder = [raw(c)["n_fluency_major"] for c in (at_minor, 0.2, 0.35, 0.49, 0.5, 0.8)]
    assert ladder == sorted(ladder) and len(set(ladder)) == 5  # graded, capped at 1
    model = shipped.models["lm-free"]
    below, above = (model.expected_penalty(raw(c)) for c in (0.4999, 0.5001))
    assert variant_for(raw(0.5)) == "lm-free"
    assert above == pytest.approx(below, rel=1e-3)
    assert model.expected_penalty(raw(0.95)) >= model.expected_penalty(raw(at_minor))


def test_fit_poisson_recovers_known_coefficients() -> None:
    rng = np.random.default_rng(7)
    n = 4000
    a = rng.integers(0, 4, n).astype(float)
    words = rng.integers(5, 40, n).astype(float)
    mu = np.exp(-1.0 + 0.8 * np.log1p(a) + 0.5 * np.log1p(words))
    y = rng.poisson(mu)
    rows = [{"words": w, "n_structure_major": x} for w, x in zip(words, a)]
    model = fit_poisson(rows, y.tolist(), l2=0.01)
    coef = dict(zip(model.inputs, model.coef))
    scale = dict(zip(model.inputs, model.scale))
    assert coef["structure_major"] / scale["structure_major"] == pytest.approx(0.8, abs=0.1)
    assert coef["log_words"] / scale["log_words"] == pytest.approx(0.5, abs=0.1)
    assert abs(coef["grammar_minor"]) < 1e-6  # constant input: no weight
    pred = np.array([model.expected_penalty(r) for r in rows])
    assert float(np.corrcoef(pred, mu)[0, 1]) > 0.98


def test_ranking_term_learns_what_orders_translations_of_one_segment() -> None:
    """Between segments chrF rises with the penalty (harder, longer segments), within one it
    falls: the likelihood alone learns the first, the pairwise term the second."""
    from mtqa.evaluate import within_segment_kendall

    rng = np.random.default_rng(11)
    rows, target, groups = [], [], []
    for g in range(300):
        m = rng.uniform(20, 80)
        for _ in range(6):
            chrf = m + rng.uniform(-10, 10)
            rows.append({"words": 20.0, "ref_len_ratio": 0.0, "ref_chrf": chrf})
            target.append(float(rng.poisson(np.exp(np.log(0.1 * m) - 0.15 * (chrf - m)))))
            groups.append(str(g))
    within = {}
    for weight in (0.0, 100.0):
        model = fit_poisson(rows, target, l2=0.01, groups=groups, rank_weight=weight)
        coef = dict(zip(model.inputs, model.coef))["ref_chrf"]
        assert (coef > 0) == (weight == 0.0)
        pred = [-model.expected_penalty(r) for r in rows]
        within[weight] = within_segment_kendall(pred, [-t for t in target], groups)
    assert within[0.0] < 0 < within[100.0]


def test_fit_logistic_recovers_known_coefficients() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(5000, 2))
    p = 1.0 / (1.0 + np.exp(-(0.5 + 2.0 * x[:, 0] - 1.0 * x[:, 1])))
    y = (rng.random(5000) < p).astype(float)
    b = fit_logistic(x, y, np.ones(5000), l2=0.0)
    assert b == pytest.approx((0.5, 2.0, -1.0), abs=0.15)


def _finding(checker: str, category: str, start: int, severity: Severity = Severity.MINOR,
             confidence: float = 0.5) -> Finding:
    return Finding(start, start + 4, category, severity, checker, "m", confidence)


def test_calibrate_findings_keeps_drops_and_grades() -> None:
    groups = ("fluency:garbled", "grammar:grammar")
    # p_err rises with confidence; p_major with the checker's own severity
    model = SpanModel(groups, (-2.0, 0.0, 0.0, 0.0, 4.0, 0.0), (-3.0, 0.0, 0.0, 0.0, 0.0, 4.0),
                      keep=0.4, major=0.6)
    at = [(0, 50, 2.0)]
    low = _finding("fluency", "garbled", 0, confidence=0.1)
    high = _finding("fluency", "garbled", 10, Severity.MAJOR, confidence=0.9)
    mid = _finding("grammar", "grammar", 20, confidence=0.8)
    rule = _finding("structure", "broken-join", 30, Severity.MAJOR, confidence=0.1)
    unknown = _finding("fluency", "other", 40, confidence=0.1)
    outside = _finding("fluency", "garbled", 60, confidence=0.1)
    out = calibrate_findings([low, high, mid, rule, unknown, outside], model, at)
    assert low not in out and len(out) == 5
    by_start = {f.start: f for f in out}
    assert by_start[10].severity is Severity.MAJOR and by_start[10].confidence > 0.8
    assert by_start[20].severity is Severity.MINOR
    assert by_start[20].confidence == pytest.approx(1 / (1 + math.exp(-(-2.0 + 3.2))), abs=1e-4)
    assert by_start[30] == rule and by_start[40] == unknown and by_start[60] == outside


def test_report_scores_come_from_the_calibration(shipped: Calibration) -> None:
    with Checker(NO_LM) as checker:
        report = checker.check(read(ABC), id="abc")
        hill = checker.check(read(HILL), id="hill")
    assert "calibration:" in report.signature and "nolm-free" in report.signature
    body = [s for s in report.sentences if s.kind.value == "body"]
    assert body and all(s.score is not None and s.expected_penalty is not None for s in body)
    assert all(s.score is None for s in report.sentences if s.kind.value == "boilerplate")
    mean = sum(s.expected_penalty or 0.0 for s in body) / len(body)
    assert report.features["calibrated.expected_penalty"] == pytest.approx(mean, abs=0.01)
    assert report.score == pytest.approx(penalty_to_score(mean), abs=0.05)
    # the retranslated copy is worse than the clean write-up of the same story
    assert report.score < hill.score


def test_calibration_file_from_settings_changes_scores(shipped: Calibration,
                                                      tmp_path: Path) -> None:
    base = shipped.to_dict()
    for m in base["models"].values():  # type: ignore[union-attr]
        m["prior"] = {}  # fitted part only: a raised intercept multiplies it by e
    harsher = json.loads(json.dumps(base))
    for m in harsher["models"].values():
        m["intercept"] += 1.0
    paths = [tmp_path / "base.json", tmp_path / "harsh.json"]
    for path, data in zip(paths, (base, harsher)):
        path.write_text(json.dumps(data), encoding="utf-8")
    text = read(ABC)
    with Checker(Settings(checkers=NO_LM.checkers, grammar_backend="harper",
                          calibration=str(paths[0]))) as a, \
            Checker(Settings(checkers=NO_LM.checkers, grammar_backend="harper",
                             calibration=str(paths[1]))) as b:
        ra, rb = a.check(text), b.check(text)
    assert ra.features["calibrated.expected_penalty"] > 0
    assert rb.features["calibrated.expected_penalty"] == pytest.approx(
        math.e * ra.features["calibrated.expected_penalty"], rel=0.01)
    assert rb.score < ra.score


def test_sentences_sharing_a_reference_line_are_scored_together() -> None:
    from mtqa.aggregate import scoring_units
    from mtqa.segment import segment
    from mtqa.types import AlignmentLink, Document, ReferenceResult

    sd = segment(Document(id="d", mt="The cat sat down. It was tired.\nThe dog ran away."))
    body = [i for i, s in enumerate(sd.sentences) if s.kind.value == "body"]
    assert len(body) == 3
    assert scoring_units(sd, None) == [[i] for i in body]
    # a line translated as two sentences against one reference sentence, then a 1:1 line
    links = (AlignmentLink(body[0], (0,), 0.9), AlignmentLink(body[1], (0,), 0.8),
             AlignmentLink(body[2], (1,), 0.9))
    parallel = ReferenceResult("parallel", (), (), links)
    assert scoring_units(sd, parallel) == [[body[0], body[1]], [body[2]]]
    comparable = ReferenceResult("comparable", (), (), links)
    assert scoring_units(sd, comparable) == [[i] for i in body]


def test_a_shared_unit_penalty_is_split_by_length() -> None:
    from mtqa.pipeline import Checker

    mt = "The cat sat down. It was tired.\nThe dog ran away."
    ref = "The cat sat down, tired.\nThe dog ran away."
    with Checker(Settings(checkers=("structure", "reference"), ref_mode="parallel")) as checker:
        report = checker.check(mt, ref)
    body = [s for s in report.sentences if s.kind.value == "body"]
    first, second = body[0], body[1]
    assert first.expected_penalty is not None and second.expected_penalty is not None
    ratio = first.expected_penalty / second.expected_penalty
    length = (first.end - first.start) / (second.end - second.start)
    assert ratio == pytest.approx(length, rel=0.02)
    assert "nolm-ref" in report.signature


# --- the word model ------------------------------------------------------------------------------


def _word_model(side: str, coef: dict[str, float], keep: float, major: float) -> WordModel:
    names = WORD_INPUTS[side]
    return WordModel(side, names, (0.0,) * len(names), (1.0,) * len(names),
                     tuple(coef.get(n, 0.0) for n in names), 0.0, keep, major)


def test_word_model_flags_words_and_joins_neighbours_of_one_severity() -> None:
    mt = "aa bb, cc dd ee"
    words = [(0, 2), (3, 5), (7, 9), (10, 12), (13, 15)]
    model = _word_model("free", {}, keep=0.3, major=0.6)
    spans = model.spans(mt, words, [0.35, 0.5, 0.7, 0.65, 0.1])
    # "aa bb" join (blank gap, both minor); the comma keeps "bb" and "cc" apart; "ee" is kept out
    assert spans == [(0, 5, False, 0.5), (7, 12, True, 0.7)]
    assert model.spans(mt, words, [0.0] * 5) == []


def test_word_model_round_trip_and_foreign_inputs_refused(tmp_path: Path) -> None:
    model = _word_model("ref", {"lm_cond": 0.8, "absent": 0.5}, keep=0.2, major=0.3)
    again = WordModel.from_dict(json.loads(json.dumps(model.to_dict())))
    assert again == model
    d = model.to_dict()
    d["inputs"] = {"lm": {"coef": 1.0, "center": 0.0, "scale": 1.0}}
    with pytest.raises(ConfigError, match="word model inputs"):
        WordModel.from_dict(d)


def test_word_inputs_read_both_checkers_evidence() -> None:
    from mtqa.types import WordEvidence

    mt = "The minister spoke from the rostrum 12 times."
    # the fluency checker's words are whitespace tokens (punctuation attached)
    toks = [(m.start(), m.end()) for m in __import__("re").finditer(r"\S+", mt)]
    lm = [3.0, 9.0, 6.0, 2.0, 1.0, 30.0, 4.0, 5.0]
    fluency = WordEvidence(tuple(s for s, _ in toks), tuple(e for _, e in toks), {"lm": tuple(lm)})
    words, x = word_inputs(mt, [(0, len(mt), 4.0)], fluency, None, "free")
    names = WORD_INPUTS["free"]
    col = {n: x[:, k] for k, n in enumerate(names)}
    assert [mt[s:e] for s, e in words] == ["The", "minister", "spoke", "from", "the", "rostrum",
                                           "12", "times"]
    assert col["capitalised"].tolist() == [1, 0, 0, 0, 0, 0, 0, 0]
    assert col["digits"].tolist() == [0, 0, 0, 0, 0, 0, 1, 0]
    assert col["zipf"][4] > 6 > col["zipf"][5]  # "the" is common, "rostrum" rare
    # "times." carries its full stop's share of the surprisal: 5 * 5/6
    assert col["lm"][7] == pytest.approx(5.0 * 5 / 6 / 10)
    assert col["lm"][5] == pytest.approx(3.0)  # 30 nats / 10
    assert col["lm_rel"].sum() == pytest.approx(0.0)
    assert col["position"][0] == 0 and col["log_expected"][0] == pytest.approx(math.log(5.0))
    # with the reference: the reference checker's words, and its per-word numbers
    ref_words = words[:6]
    reference = WordEvidence(tuple(s for s, _ in ref_words), tuple(e for _, e in ref_words),
                             {"unmatched": (0, 0, 1, 1, 0, 1), "absent": (0, 0, 1, 0, 0, 1),
                              "chrf": (0.5,) * 6,
                              "lm_cond": (1.0, 2.0, 8.0, math.nan, 1.0, 50.0)})
    words, x = word_inputs(mt, [(0, len(mt), 4.0)], fluency, reference, "ref")
    col = {n: x[:, k] for k, n in enumerate(WORD_INPUTS["ref"])}
    assert len(words) == 6
    assert col["lm_cond"].tolist() == pytest.approx([0.1, 0.2, 0.8, 0.0, 0.1, 4.0])
    assert col["lm_cond_neighbour"][3] == pytest.approx(0.8)
    assert col["unmatched_neighbours"][4] == 2
    assert col["unmatched_expected"][2] == pytest.approx(math.log(5.0))
    with pytest.raises(ValueError, match="reference"):
        word_inputs(mt, [(0, len(mt), 4.0)], fluency, None, "ref")


def test_word_model_replaces_the_fluency_spans_in_a_report(shipped: Calibration) -> None:
    from mtqa.aggregate import aggregate
    from mtqa.segment import segment
    from mtqa.types import CheckResult, Document, WordEvidence

    sd = segment(Document(id="d", mt="The cat sat on the mat. Frobnicated the mat qux zebra."))
    toks = [(m.start(), m.end()) for m in __import__("re").finditer(r"\S+", sd.doc.mt)]
    lm = tuple(40.0 if sd.doc.mt[s:e].startswith(("Frob", "qux")) else 2.0 for s, e in toks)
    old = Finding(30, 40, "garbled", Severity.MAJOR, "fluency", "old span", 0.9)
    fluency = CheckResult("fluency", "d", "fluency|x", findings=(old,),
                          sentence_scores=(50.0, 50.0),
                          words=WordEvidence(tuple(s for s, _ in toks),
                                             tuple(e for _, e in toks), {"lm": lm}))
    # force flags: a model that reads only the LM surprisal
    model = _word_model("free", {"lm": 4.0}, keep=0.5, major=1.01)
    model = WordModel("free", model.inputs, model.center, model.scale, model.coef, -4.0,
                      0.5, 1.01)
    calib = Calibration(shipped.version, shipped.models, shipped.provenance, shipped.spans,
                        words={"free": model})
    report = aggregate(sd, [fluency], calibration=calib)
    assert "words-free" in report.signature
    assert [s.text for s in report.spans] == ["Frobnicated", "qux"]
    assert all(s.rule == "word-model" and s.category == "unnatural-phrasing" for s in report.spans)
    # the reason names what raised the probability: here the surprisal, all the model reads
    assert report.spans[0].message.startswith(
        "unlikely wording: the language model finds 'Frobnicated' surprising (40 nats)")
    # without the fluency checker's words the old spans stay
    bare = CheckResult("fluency", "d", "fluency|x", findings=(old,), sentence_scores=(50.0, 50.0))
    report = aggregate(sd, [bare], calibration=calib)
    assert "words-free" not in report.signature


def _word_rows(rng: np.random.Generator) -> tuple[list[dict[str, object]], list[str]]:
    """Synthetic feature lines whose one erroneous word (a fluency error) is the one the LM
    finds surprising; no checker findings."""
    vocab = ["the", "minister", "said", "on", "monday", "that", "prices", "rose", "sharply"]
    rows, texts = [], []
    for doc in range(30):
        for line in range(6):
            words = list(rng.choice(vocab, size=8))
            text = " ".join(words)
            starts = [sum(len(w) + 1 for w in words[:k]) for k in range(8)]
            ends = [s + len(w) for s, w in zip(starts, words)]
            bad = int(rng.integers(8))
            lm = [float(rng.uniform(2, 8)) for _ in words]
            lm[bad] = float(rng.uniform(20, 35))
            sev = "major" if rng.random() < 0.8 else "minor"
            rows.append({"line": len(rows), "doc_id": f"d{doc}", "seg_id": f"{doc}-{line}",
                         "length": len(text), "gold": [[starts[bad], ends[bad], sev]],
                         "gold_categories": ["Fluency/Grammar"], "body_free": [0, len(text)],
                         "words_fluency": {"start": starts, "end": ends, "values": {"lm": lm}},
                         "free": {}, "findings_free": []})
            texts.append(text)
    return rows, texts


def test_fitting_script_learns_a_word_model_from_labelled_lines() -> None:
    """``scripts/calibrate.py``'s word fit on synthetic lines where the erroneous word is the
    one the LM finds surprising: it learns that, and tunes thresholds under the major floor."""
    script = _script()
    rows, texts = _word_rows(np.random.default_rng(0))
    table = script.word_table(rows, texts, "free", [1.0] * len(rows))
    assert sorted(table) == list(range(len(rows)))  # every line has the evidence it reads
    model, figs = script.fit_words(rows, texts, "free", table)
    coef = dict(zip(model.inputs, model.coef))
    # the surprisal (and its excess over the line's mean) carry it; nothing else does
    assert coef["lm"] > 1.0 and coef["lm_rel"] > 1.0
    assert all(abs(v) < 0.2 for k, v in coef.items() if k not in ("lm", "lm_rel"))
    assert figs["train_f1_words_alone"] > 0.8
    assert figs["train_major_precision_words_alone"] >= SpanModel.MAJOR_PRECISION + 0.05
    spans = script.word_spans(texts, model, table)
    train, test, _ = script.split(rows)
    held = script.span_figures(rows, test, spans, "free")
    assert held["f1"] > 0.8 and held["major_precision"] > 0.9


@pytest.mark.model
def test_a_parallel_reference_gives_mistranslation_spans_from_the_word_model() -> None:
    """End to end with the real LM: the words that contradict the reference are flagged."""
    ref = ("The company said on Monday that profits rose by a fifth.\n"
           "Its shares fell two per cent in early trading.")
    bad = ("The company said on Monday that losses of the cabbage grew by a fifth.\n"
           "Its shares fell two per cent in early trading.")
    with Checker(Settings(checkers=("structure", "fluency", "reference"),
                          ref_mode="parallel")) as checker:
        report = checker.check(bad, ref, id="bad")
        good = checker.check(ref, ref, id="good")
    assert "words-ref" in report.signature
    flagged = [s for s in report.spans if s.rule == "word-model"]
    assert flagged and all(s.category == "mistranslation" for s in flagged)
    assert any("cabbage" in s.text or "losses" in s.text for s in flagged)
    assert "the reference" in flagged[0].message
    # nothing in the second line, which is the reference's own wording
    second = bad.index("\n")
    assert all(s.start < second for s in flagged)
    # the reference itself, read against itself, gets no word-model span
    assert not [s for s in good.spans if s.rule == "word-model"]


def test_word_evidence_is_ready_only_with_what_each_side_reads() -> None:
    """Without a reference the fluency surprisals suffice; with one, the LM must have read a word."""
    fluency = WordEvidence((0, 4), (3, 9), {"lm": (2.0, 5.0)})
    unread = WordEvidence((0, 4), (3, 9), {"unmatched": (0.0, 1.0), "lm_cond": (math.nan,) * 2})
    read = WordEvidence((0, 4), (3, 9), {"unmatched": (0.0, 1.0), "lm_cond": (math.nan, 3.0)})
    assert word_evidence_ready(fluency, None, "free")
    assert not word_evidence_ready(None, read, "free")
    assert not word_evidence_ready(None, read, "ref")
    assert not word_evidence_ready(fluency, None, "ref")
    assert not word_evidence_ready(fluency, unread, "ref")
    assert word_evidence_ready(fluency, read, "ref")


def _script():  # type: ignore[no-untyped-def]
    import importlib.util

    spec = importlib.util.spec_from_file_location("calibrate_script",
                                                  ROOT / "scripts" / "calibrate.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_a_ranking_weight_must_buy_more_than_noise() -> None:
    """The fit takes the smallest ranking weight whose cross-validated within-segment Kendall is
    within RANK_GAIN of the best: a .003 gain does not buy a weight of 100 (it moved clean BNC
    sentences' median score from 84 to 74), a .02 gain does; and the shipped calibration's
    recorded choices follow that rule from its own cross-validated figures."""
    script = _script()
    pick = script._smallest_near_best
    cv = {0.0: 0.073, 10.0: 0.071, 30.0: 0.072, 100.0: 0.076}
    assert pick(list(cv), cv.__getitem__) == 0.0
    cv[100.0] = 0.095
    assert pick(list(cv), cv.__getitem__) == 100.0
    assert pick([30.0], cv.__getitem__) == 30.0
    for name, model in load_calibration().models.items():
        f = model.figures
        floor = f["cv_pooled_rank0"] - 0.01
        ok = [w for w in script.RANK_WEIGHTS if f[f"cv_pooled_rank{w:g}"] >= floor]
        assert f["rank_weight"] == pick(ok, lambda w: f[f"cv_within_rank{w:g}"]), name


def test_reference_free_target_is_what_english_alone_shows() -> None:
    """Without the reference the span and word models learn fluency, style and non-translation
    errors; with it every error (issue 19)."""
    script = _script()
    row = {"line": 7, "length": 40,
           "gold": [[0, 5, "major"], [6, 10, "minor"], [11, 20, "major"], [21, 30, "minor"],
                    [31, 35, "minor"]],
           "gold_categories": ["Accuracy/Mistranslation", "Fluency/Punctuation", "Style/Awkward",
                               "Terminology/Inappropriate", "Non_translation"]}
    assert script.gold_spans(row, "ref") == [tuple(g) for g in row["gold"]]
    assert script.gold_spans(row, "free") == [(6, 10, "minor"), (11, 20, "major"),
                                              (31, 35, "minor")]
    free, ref = script._gold(row, "free"), script._gold(row, "ref")
    assert list(free[:12]) == [0] * 6 + [1] * 4 + [0, 2] and free[25] == 0 and ref[25] == 1
    assert int((ref > 0).sum()) == 5 + 4 + 9 + 9 + 4 and int((free > 0).sum()) == 4 + 9 + 4
    # a feature file written before the categories were kept cannot give the free target
    with pytest.raises(ValueError, match="line 7: no 'gold_categories'.*--rebuild"):
        script.gold_spans({k: v for k, v in row.items() if k != "gold_categories"}, "free")


def _span_rows(rng: np.random.Generator) -> list[dict[str, object]]:
    """Lines with two grammar rules: 'agreement' findings sit on fluency errors, 'idiom'
    findings on mistranslations; half the fluency errors are major."""
    rows: list[dict[str, object]] = []
    for doc in range(24):
        for line in range(8):
            gold, cats, found = [], [], []
            for slot in range(4):
                s = 10 * slot
                kind = rng.integers(3)
                if kind == 0:
                    sev = "major" if rng.random() < 0.5 else "minor"
                    gold.append([s, s + 6, sev])
                    cats.append("Fluency/Grammar")
                    found.append([s, s + 6, "grammar", "agreement", sev,
                                  float(rng.uniform(0.3, 0.9))])
                elif kind == 1:
                    gold.append([s, s + 6, "major"])
                    cats.append("Accuracy/Mistranslation")
                    found.append([s, s + 6, "grammar", "idiom", "minor",
                                  float(rng.uniform(0.3, 0.9))])
            rows.append({"line": len(rows), "doc_id": f"d{doc}", "seg_id": f"{doc}-{line}",
                         "length": 40, "gold": gold, "gold_categories": cats,
                         "findings_free": found, "findings_ref": found})
    return rows


def test_span_fit_follows_each_sides_target() -> None:
    """The same findings, fitted reference-free, keep only the rule that finds what English
    shows; with the reference both rules find errors. Free majors need strong evidence."""
    script = _script()
    rows = _span_rows(np.random.default_rng(3))
    expected = [2.0] * len(rows)
    free, figs = script.fit_spans(rows, "free", expected)
    ref, _ = script.fit_spans(rows, "ref", expected)
    p_agree = free.probabilities("grammar", "agreement", 2.0, 0.6, False)
    p_idiom = free.probabilities("grammar", "idiom", 2.0, 0.6, False)
    assert p_agree[0] > 0.9 and p_idiom[0] < 0.1 and p_idiom[0] < free.keep < p_agree[0]
    assert ref.probabilities("grammar", "idiom", 2.0, 0.6, False)[0] > 0.9
    # the free fit drops the mistranslation rule's findings: its spans are all precise
    assert figs["held_out_precision_ignoring_severity"] == pytest.approx(1.0)
    assert figs["held_out_recall_ignoring_severity"] == pytest.approx(1.0)
    assert figs["held_out_all_recall"] < 0.7  # the mistranslations are left to the reference
    assert free.major >= script.FREE_MAJOR_MIN
    # a major error is an error: its probability never exceeds the error's
    for m in (free, ref):
        for cat in ("agreement", "idiom"):
            for conf in (0.1, 0.5, 0.9):
                pe, pm = m.probabilities("grammar", cat, 2.0, conf, True)
                assert pm <= pe
    pred = script.apply_span_model(rows, "free", expected, free)
    assert all(f.category == "agreement" and f.confidence >= free.keep for p in pred for f in p)
    _train, test, _ = script.split(rows)
    texts = ["x" * 40] * len(rows)
    bins = script.span_bins(rows, texts, test, pred, "free")
    assert sum(b.spans for b in bins) == sum(len(pred[k]) for k in test)
    assert all(b.precision == pytest.approx(1.0) for b in bins if b.spans)


def test_fit_side_reports_held_out_confidence_bins() -> None:
    """One side's word and span models fitted together: the held-out spans' confidences are
    binned against the side's gold and kept in the figures."""
    script = _script()
    rows, texts = _word_rows(np.random.default_rng(1))
    unit = fit_poisson([{"words": 8.0}] * 4, [1.0, 2.0, 1.0, 2.0])
    words, spans, bins = script.fit_side(rows, texts, "free", unit)
    _train, test, _ = script.split(rows)
    assert sum(b.spans for b in bins) >= len(test) * 0.8  # about one span per held-out line
    full = [b for b in bins if b.spans]
    assert full and all(b.precision > 0.8 for b in full)
    low = full[0].low
    assert spans.figures[f"held_out_bin{low:.1f}_precision"] == pytest.approx(full[0].precision)
    assert words.figures["held_out_f1"] == spans.figures["held_out_f1"] > 0.8
    table = script.render_bins("free", bins)
    assert "fluency, style, non-translation" in table and f"{low:.1f}-" in table


def test_a_calibration_fitted_on_another_language_model_is_refused(
        shipped: Calibration, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SmolLM2's shipped calibration is refused on Gemma's readings (the default model) and the
    default one (Gemma's) on SmolLM2's; each model's own file is picked by its name."""
    from mtqa.calibrate import lm_identity

    default = shipped
    shipped = load_calibration(lm_model="SmolLM2-135M-Instruct")
    assert default.fingerprint() != shipped.fingerprint()
    assert "model:gemma3-270m|" in str(default.provenance["signatures"]["fluency"])  # type: ignore[index]
    assert default.language_model_mismatch("fluency", "gemma3-270m") is None
    assert "SmolLM2-135M-Instruct" in (
        default.language_model_mismatch("fluency", "SmolLM2-135M-Instruct") or "")
    assert Checker(Settings()).calibration.fingerprint() == default.fingerprint()
    smol_picked = Checker(Settings(lm_model="SmolLM2-135M-Instruct")).calibration
    assert smol_picked.fingerprint() == shipped.fingerprint()

    def mismatch(checker: str, signature: str) -> str | None:
        return shipped.language_model_mismatch(checker, lm_identity(signature))

    fitted = shipped.provenance["signatures"]
    assert isinstance(fitted, dict)
    smol = str(fitted["fluency"])
    # the same model and weights: nothing to say, in either precision (bf16 ~ fp32 held out)
    assert mismatch("fluency", smol) is None
    assert mismatch("fluency", smol.replace("prec:bf16", "prec:fp32")) is None
    assert mismatch("reference", str(fitted["reference"])) is None
    gemma = ("fluency|model:gemma3-270m|rev:a5fd3b62230a|impl:native|prec:bf16|win:1024|ctx:256"
             "|scale:x|mtqa:0.1.0")
    why = mismatch("fluency", gemma)
    assert why is not None and "gemma3-270m@a5fd3b62230a" in why and "SmolLM2-135M-Instruct" in why
    ref = str(fitted["reference"]).replace("lm:SmolLM2-135M-Instruct@b179c9523d0e",
                                           "lm:gemma3-270m@a5fd3b62230a")
    assert "gemma3-270m@a5fd3b62230a" in (mismatch("reference", ref) or "")
    # a reference checker without its LM, a checker without one: nothing to compare
    assert mismatch("reference", ref.split("|lm:")[0] + "|lm:none") is None
    assert mismatch("structure", "structure|lang:en") is None
    # before loading, by the model's name alone: the fitted model's own name passes
    assert shipped.language_model_mismatch("fluency", "SmolLM2-135M-Instruct") is None
    assert "gemma3-270m" in (shipped.language_model_mismatch("fluency", "gemma3-270m") or "")
    # the pipeline refuses it: before loading anything when the settings name the model ...
    smol = tmp_path / "smol-calibration.json"
    smol.write_text(json.dumps(shipped.to_dict()), encoding="utf-8")
    # the default model (Gemma) with SmolLM2's calibration, and SmolLM2 with the default one
    with pytest.raises(ConfigError, match=r"fitted on the readings of SmolLM2.*gemma3-270m"):
        Checker(Settings(calibration=str(smol)))
    with pytest.raises(ConfigError, match=r"fitted on the readings of gemma3-270m.*SmolLM2"):
        Checker(Settings(lm_model="SmolLM2-135M-Instruct",
                         calibration=str(ROOT / "models" / "calibration.json")))
    with pytest.raises(ConfigError, match=r"fitted on the readings of SmolLM2.*gemma3-270m"):
        Checker(Settings(lm_model="gemma3-270m", calibration=str(smol)))
    with pytest.raises(ConfigError, match="gemma3-270m"):
        Checker(Settings(lm_model="gemma3-270m", checkers=("structure", "reference"),
                         ref_lm=True, calibration=str(smol)))
    no_lm = ("structure", "grammar")
    Checker(Settings(lm_model="gemma3-270m", checkers=no_lm, calibration=str(smol)))
    Checker(Settings(lm_model="gemma3-270m", checkers=("structure", "reference"),
                     calibration=str(smol)))
    # ... while the model's own shipped calibration is picked without being named
    own_shipped = Checker(Settings(lm_model="gemma3-270m")).calibration
    fitted_on = own_shipped.provenance["signatures"]
    assert isinstance(fitted_on, dict) and "model:gemma3-270m|" in str(fitted_on["fluency"])
    assert "lm:gemma3-270m@" in str(fitted_on["reference"])
    assert own_shipped.fingerprint() != shipped.fingerprint()
    # ... and with a calibration fitted on that model, it is applied
    data = json.loads(json.dumps(shipped.to_dict()))
    data["provenance"]["signatures"]["fluency"] = gemma
    own = tmp_path / "gemma-calibration.json"
    own.write_text(json.dumps(data), encoding="utf-8")
    Checker(Settings(lm_model="gemma3-270m", calibration=str(own)))
    # ... and once a checker is built, by its model and weights (any model: a path, an id)
    import mtqa.pipeline as pipeline

    class OnGemma:
        signature = gemma
        closed = False

        @classmethod
        def from_settings(cls, settings: Settings, models: object = None) -> OnGemma:
            return cls()

        def close(self) -> None:
            OnGemma.closed = True

    monkeypatch.setattr(pipeline, "load_checker_class", lambda name: OnGemma)
    # (a local directory: its name tells nothing before loading)
    checker = Checker(Settings(checkers=("fluency",), calibration=str(smol),
                               lm_model=str(tmp_path / "my-gemma")))
    with pytest.raises(ConfigError, match="not be calibrated for it"):
        checker._get("fluency")
    assert OnGemma.closed  # its model is freed
    with pytest.raises(ConfigError, match="not be calibrated for it"):
        checker.check("The talks went well.")


def test_calibrate_script_names_and_checks_the_model_its_features_were_read_with(
        tmp_path: Path) -> None:
    """scripts/calibrate.py takes the model from the feature file's fluency signature: a file
    read with SmolLM2 is refused for the default model (Gemma) instead of being written as
    Gemma's calibration, and accepted with --lm-model SmolLM2-135M-Instruct."""
    script = _script()
    smol = {"signatures": {"fluency": "fluency|model:SmolLM2-135M-Instruct|rev:b179c9523d0e|"
                                      "impl:native|prec:bf16|mtqa:0.1.0"}}
    gemma = {"signatures": {"fluency": "fluency|model:gemma3-270m|rev:a5fd3b62230a|"
                                       "impl:native|prec:bf16|mtqa:0.1.0"}}
    features = tmp_path / "features.jsonl"
    with pytest.raises(SystemExit, match="read with SmolLM2-135M-Instruct, not gemma3-270m"):
        script.features_model(smol, features, None)
    assert script.features_model(smol, features, "SmolLM2-135M-Instruct") == "SmolLM2-135M-Instruct"
    assert script.features_model(gemma, features, None) == "gemma3-270m"
    with pytest.raises(SystemExit, match="names no language model"):
        script.features_model({"signatures": {}}, features, None)
