"""Meta-evaluation figures: known values on small tables, and the MQM sample cut from shared/data."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from conftest import FIXTURES
from mtqa.errors import InputError
from mtqa.evaluate import (
    VISIBLE_GOLD,
    VISIBLE_TAG,
    baselines,
    confidence_bins,
    evaluate,
    evaluation_to_dict,
    kendall,
    load_mqm,
    pairwise_accuracy,
    render_evaluation,
    span_scores,
    visible_without_reference,
    within_segment_kendall,
)

SAMPLE = FIXTURES / "mqm_sample.jsonl"


def test_kendall_known_values() -> None:
    assert kendall([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall([1, 2, 3, 4], [40, 30, 20, 10]) == pytest.approx(-1.0)
    assert math.isnan(kendall([1, 1, 1], [1, 2, 3]))


def test_within_segment_averages_per_segment() -> None:
    metric = [1, 2, 3, 3, 2, 1]
    human = [1, 2, 3, 1, 2, 3]
    assert within_segment_kendall(metric, human, ["a"] * 3 + ["b"] * 3) == pytest.approx(0.0)
    assert within_segment_kendall(metric, human, ["a"] * 6) == pytest.approx(kendall(metric, human))


def test_pairwise_accuracy_counts_metric_ties_half() -> None:
    human = [3, 2, 1]
    assert pairwise_accuracy([3, 2, 1], human, ["s"] * 3) == pytest.approx(1.0)
    assert pairwise_accuracy([1, 1, 1], human, ["s"] * 3) == pytest.approx(0.5)
    assert pairwise_accuracy([1, 2, 3], human, ["s"] * 3) == pytest.approx(0.0)


def test_span_scores_severity_mismatch_counts_half() -> None:
    text = "abcdefghij"
    gold = [[(0, 4, "major")]]
    exact = span_scores([text], [[(0, 4, "major")]], gold)
    assert (exact.precision, exact.recall, exact.f1) == pytest.approx((1.0, 1.0, 1.0))
    half = span_scores([text], [[(0, 4, "minor")]], gold)
    assert (half.precision, half.recall) == pytest.approx((0.5, 0.5))
    over = span_scores([text], [[(0, 8, "major")]], gold)
    assert over.precision == pytest.approx(0.5) and over.recall == pytest.approx(1.0)
    assert over.major_precision == pytest.approx(0.5)
    ignored = span_scores([text], [[(0, 4, "minor")]], gold, ignore_severity=True)
    assert ignored.f1 == pytest.approx(1.0)


def test_load_sample_and_baselines() -> None:
    records = load_mqm(SAMPLE)
    assert len({r.seg_id for r in records}) == 4
    assert all(r.hypothesis[e.start : e.end] for r in records for e in r.errors)
    base = baselines(records, with_reference=True)
    assert set(base) == {"-length", "sentence BLEU", "chrF", "-TER"}
    assert all(len(v) == len(records) for v in base.values())
    assert all(0.0 <= v <= 100.0 for v in base["chrF"]) and max(base["chrF"]) > 30.0
    assert base["-length"][0] == -len(records[0].hypothesis)
    # the baselines are sacreBLEU's own sentence scores (TER from the batched shift search)
    import sacrebleu

    for k, r in enumerate(records):
        assert base["-TER"][k] == -sacrebleu.sentence_ter(r.hypothesis, [r.reference]).score
        assert base["chrF"][k] == sacrebleu.sentence_chrf(r.hypothesis, [r.reference]).score


def test_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "m.jsonl"
    bad.write_text(SAMPLE.read_text(encoding="utf-8").splitlines()[0] + '\n{"doc_id": 1}\n',
                   encoding="utf-8")
    with pytest.raises(InputError, match=r"m\.jsonl:2: not an MQM record"):
        load_mqm(bad)


def test_evaluate_command_json() -> None:
    import json

    from typer.testing import CliRunner

    from mtqa.cli import app

    result = CliRunner().invoke(app, ["evaluate", str(SAMPLE), "--checkers", "structure",
                                      "--samples", "10", "--format", "json", "--reference"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["schema"] == "mtqa.evaluation/1" and data["with_reference"] is True
    names = [m["name"] for m in data["metrics"]]
    assert names[0] == "mtqa score" and {"chrF", "-length", "sentence BLEU", "-TER"} <= set(names)
    assert data["lines"] == 52  # the two human translations of each segment are left out
    floor = data["spans"]["flag everything (severity ignored)"]
    assert floor["recall"] == 1.0 and 0 < floor["precision"] < 1


def test_evaluate_split_by_calibration_documents() -> None:
    import json

    from typer.testing import CliRunner

    from mtqa.cli import app

    # the sample's one document is among the calibration's training documents
    args = ["evaluate", str(SAMPLE), "--checkers", "structure", "--samples", "10",
            "--format", "json"]
    train = CliRunner().invoke(app, [*args, "--split", "train"])
    assert train.exit_code == 0, train.stderr
    data = json.loads(train.stdout)
    assert data["split"] == "train" and data["lines"] == 52
    held = CliRunner().invoke(app, [*args, "--split", "held-out"])
    assert held.exit_code == 2
    assert "no line belongs to the calibration's held-out documents" in held.stderr
    assert "mqm_sample.jsonl" in held.stderr


def test_identical_hypotheses_are_checked_once_and_reported_under_each_id() -> None:
    import dataclasses

    from mtqa.config import Settings
    from mtqa.evaluate import score_records

    sample = load_mqm(SAMPLE)
    records = sample[:4]
    elsewhere = next(r.reference for r in sample if r.reference != records[0].reference)
    # a fifth system that wrote what the first wrote, and one that only shares its words
    twin = dataclasses.replace(records[0], system="twin")
    other_ref = dataclasses.replace(records[0], system="other", reference=elsewhere)
    rows = [*records, twin, other_ref]
    ticks: list[int] = []
    settings = Settings(checkers=("structure", "grammar", "reference"), grammar_backend="harper")
    reports, _ = score_records(rows, settings, with_reference=True, chunk=2, progress=ticks.append)
    assert sum(ticks) == len(rows)  # progress counts records, copies included
    assert [r.id for r in reports] == [f"{r.seg_id}:{r.system}" for r in rows]
    assert dataclasses.replace(reports[4], id=reports[0].id) == reports[0]
    assert reports[5].ref == (elsewhere,) and reports[5].reference != reports[0].reference


# -- issue 15: every bad MQM file is an InputError naming file and line ------------------------

_GOOD = ('{"doc_id": "d", "seg_id": 1, "system": "s1", "hypothesis": "Hello world.", '
         '"reference": "Hi world.", "mqm": 1.0, "errors": [{"start": 0, "end": 5, '
         '"severity": "Major", "category": "Fluency", "side": "target"}]}')
BAD_MQM = [
    ("binary", b"\x00\x01\x02\x03binary", ": binary data"),
    ("latin1", '{"hypothesis": "caf\xe9"}\n'.encode("latin1"), ":1: not UTF-8"),
    ("empty", b"", ": empty input"),
    ("array-line", f"{_GOOD}\n[1, 2]\n".encode(), ":2: not an MQM record: expected a JSON object"),
    ("error-not-object", _GOOD.replace('"errors": [{', '"errors": [5, {').encode(),
     ":1: not an MQM record: errors[0] must be a JSON object"),
    ("errors-not-list", _GOOD.replace('"errors": [{', '"errors": {"x": [{').replace("}]}", "}]}}").encode(),
     ":1: not an MQM record: field 'errors' must be a list"),
    ("offsets-beyond-text", _GOOD.replace('"end": 5', '"end": 99').encode(),
     ":1: not an MQM record: errors[0]: offsets 0-99 are outside the hypothesis"),
    ("offsets-reversed", _GOOD.replace('"start": 0', '"start": 9').encode(), "outside the hypothesis"),
    ("offset-string", _GOOD.replace('"start": 0', '"start": "0"').encode(), "must be integers"),
    ("negative-mqm", _GOOD.replace('"mqm": 1.0', '"mqm": -3').encode(), "an MQM penalty is 0"),
    ("nan-mqm", _GOOD.replace('"mqm": 1.0', '"mqm": NaN').encode(), "'mqm' must be a finite number"),
    ("bool-mqm", _GOOD.replace('"mqm": 1.0', '"mqm": true').encode(), "'mqm' must be a finite number"),
    ("null-hypothesis", _GOOD.replace('"hypothesis": "Hello world."', '"hypothesis": null').encode(),
     "'hypothesis' must be a string, not null"),
    ("missing-system", _GOOD.replace('"system": "s1", ', "").encode(), "'system' must be"),
    ("bad-side", _GOOD.replace('"side": "target"', '"side": 3').encode(), "side must be"),
]


@pytest.mark.parametrize(("data", "message"), [c[1:] for c in BAD_MQM], ids=[c[0] for c in BAD_MQM])
def test_bad_mqm_files_are_input_errors_naming_file_and_line(data: bytes, message: str,
                                                             tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_bytes(data)
    with pytest.raises(InputError) as info:
        load_mqm(path)
    assert str(info.value).startswith(str(path)) and message in str(info.value)


def test_good_mqm_line_and_unlocated_errors_load(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text(_GOOD.replace('"errors": [{', '"errors": [{"start": null, "end": null}, {')
                    + "\n", encoding="utf-8")
    [r] = load_mqm(path)
    assert (r.seg_id, r.mqm, [(e.start, e.end, e.severity) for e in r.errors]) == ("1", 1.0, [(0, 5, "major")])


@pytest.mark.parametrize("case", ["all-human", "binary"])
def test_evaluate_command_exits_2_without_traceback(case: str, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from mtqa.cli import app

    path = tmp_path / "m.jsonl"
    if case == "all-human":
        path.write_text(_GOOD.replace('"s1"', '"ref-A"') + "\n", encoding="utf-8")
    else:
        path.write_bytes(b"\x00\x01binary")
    result = CliRunner().invoke(app, ["evaluate", str(path), "--checkers", "structure", "--samples", "2"])
    assert result.exit_code == 2, result.exception
    assert f"error: {path}" in result.stderr
    if case == "all-human":
        assert "--include-human" in result.stderr


VISIBLE = [
    ("Fluency/Punctuation", True), ("Fluency/Grammar", True), ("fluency/spelling", True),
    ("Style/Awkward", True), ("Non_translation", True), ("Non-translation!", True),
    ("Accuracy/Untranslated", True), ("Accuracy/Mistranslation", False),
    ("Accuracy/Addition", False), ("Terminology/Inappropriate", False),
    ("Locale_convention/Name", False), ("", False),
]


@pytest.mark.parametrize(("category", "visible"), VISIBLE, ids=[c or "empty" for c, _ in VISIBLE])
def test_visible_without_reference(category: str, visible: bool) -> None:
    assert visible_without_reference(category) is visible


def test_confidence_bins_compare_confidence_with_observed_precision() -> None:
    text = "x" * 40
    gold = [[(0, 10, "major"), (20, 24, "minor")]]
    pred = [[(0, 10, 0.95), (10, 20, 0.1), (20, 28, 0.5), (30, 32, 0.45)]]
    bins = confidence_bins([text], pred, gold)
    assert [b.low for b in bins] == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8])
    assert [b.high for b in bins] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert [b.spans for b in bins] == [1, 0, 2, 0, 1]
    low, _, mid, _, high = bins
    assert (low.precision, low.overlap, low.confidence) == pytest.approx((0.0, 0.0, 0.1))
    assert mid.chars == 10 and mid.precision == pytest.approx(4 / 10)
    assert mid.confidence == pytest.approx((8 * 0.5 + 2 * 0.45) / 10)
    assert mid.overlap == pytest.approx(0.5)
    assert high.precision == pytest.approx(1.0) and high.overlap == pytest.approx(1.0)
    assert math.isnan(bins[1].precision) and bins[1].shown_spans == 3
    # what --min-confidence LOW shows: every span at or above the bin's lower edge
    assert bins[2].shown_spans == 3 and bins[2].shown_precision == pytest.approx(14 / 20)
    assert bins[0].shown_spans == 4 and bins[0].shown_precision == pytest.approx(14 / 30)
    assert confidence_bins([text], [[(0, 4, 1.0)]], gold)[-1].spans == 1  # 1.0 is in the last bin


def test_spans_are_scored_against_the_errors_english_shows_too() -> None:
    """On the real MQM sample: spans exactly on the visible (fluency, style) errors are fully
    precise against that gold and recall only part of all errors."""
    records = load_mqm(SAMPLE)
    visible = [[(e.start, e.end, e.severity) for e in r.errors
                if visible_without_reference(e.category)] for r in records]
    hidden = [[(e.start, e.end, e.severity) for e in r.errors
               if not visible_without_reference(e.category)] for r in records]
    assert sum(map(len, visible)) == 14 + 7 + 2 + 17 and sum(map(len, hidden)) == 72 + 5 + 4
    conf = [[(s, e, 0.9) for s, e, _v in v] for v in visible]
    result = evaluate(records, {}, {"exact": visible}, data="sample", with_reference=False,
                      seconds=0.0, signature="", samples=2, confidences=conf)
    ours = result.spans[f"exact {VISIBLE_TAG}"]
    assert (ours.precision, ours.recall) == pytest.approx((1.0, 1.0))
    every = result.spans["exact"]
    assert every.recall < 0.5 and every.precision > 0.9  # visible errors overlap a few others
    assert every.gold_chars > ours.gold_chars
    top = result.bins[VISIBLE_GOLD][-1]
    assert top.spans == sum(map(len, visible)) and top.precision == pytest.approx(1.0)
    assert sum(b.spans for b in result.bins["all errors"]) == top.spans
    text = render_evaluation(result)
    assert f"span confidence vs precision, gold: {VISIBLE_GOLD} (the span model target" in text
    assert "0.8-1.0" in text and f"exact {VISIBLE_TAG}" in text
    data = evaluation_to_dict(result)
    assert data["confidence_bins"][VISIBLE_GOLD][-1]["precision"] == 1.0  # type: ignore[index]


def test_evaluate_command_prints_confidence_bins() -> None:
    from typer.testing import CliRunner

    from mtqa.cli import app

    result = CliRunner().invoke(app, ["evaluate", str(SAMPLE), "--checkers", "structure,grammar",
                                      "--grammar-backend", "harper", "--samples", "5"])
    assert result.exit_code == 0, result.stderr
    assert "span confidence vs precision, gold: all errors" in result.stdout
    assert f"span confidence vs precision, gold: {VISIBLE_GOLD} (the span model" in result.stdout
    assert f"mtqa spans {VISIBLE_TAG}" in result.stdout
