"""Meta-evaluation figures: known values on small tables, and the MQM sample cut from shared/data."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from conftest import FIXTURES
from mtqa.errors import InputError
from mtqa.evaluate import (
    baselines,
    kendall,
    load_mqm,
    pairwise_accuracy,
    span_scores,
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
