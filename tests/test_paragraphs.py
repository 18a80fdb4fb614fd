"""Paragraph units from line-level MQM (issue 22): joined lines, summed penalties, shifted
spans, the same runs for every system, and ``mtqa evaluate --units paragraph``."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np

from conftest import FIXTURES
from mtqa import calibrate as cal
from mtqa.evaluate import PARAGRAPH_SIZES, MqmRecord, load_mqm, paragraph_units

SAMPLE = FIXTURES / "mqm_sample.jsonl"


def _mt_records() -> list[MqmRecord]:
    return [r for r in load_mqm(SAMPLE) if not r.system.startswith("ref-")]


def test_paragraphs_join_lines_and_keep_their_annotation() -> None:
    records = _mt_records()
    paras = paragraph_units(records)
    assert paras
    for p in paras:
        lines = [records[i] for i in p.lines]
        assert len({r.system for r in lines}) == 1 and len({r.doc_id for r in lines}) == 1
        assert p.record.mqm == sum(r.mqm for r in lines)
        # each line sits at its range, and its gold spans point at the same characters
        for r, (a, b) in zip(lines, p.ranges):
            assert p.record.hypothesis[a:b] == r.hypothesis
        shifted = [p.record.hypothesis[e.start:e.end] for e in p.record.errors]
        original = [r.hypothesis[e.start:e.end] for r in lines for e in r.errors]
        assert shifted == original
        # the reference is joined with the same separators: a parallel reference still pairs
        # line k with line k
        assert (len(p.record.hypothesis.splitlines()) == len(p.record.reference.splitlines()))


def test_every_system_gets_the_same_runs_of_two_to_eight_segments() -> None:
    records = _mt_records()
    paras = paragraph_units(records)
    runs: dict[str, set[tuple[str, ...]]] = defaultdict(set)
    for p in paras:
        segs = tuple(records[i].seg_id for i in p.lines)
        runs[p.record.system].add(segs)
        assert PARAGRAPH_SIZES[0] <= len(segs) <= PARAGRAPH_SIZES[1]
    assert len({frozenset(v) for v in runs.values()}) == 1  # one segmentation for all
    covered = sorted(s for run in next(iter(runs.values())) for s in run)
    assert covered == sorted({r.seg_id for r in records})  # every segment once
    # paragraph ids name the run, so within-segment figures compare systems on it
    by_id = defaultdict(set)
    for p in paras:
        by_id[p.record.seg_id].add(p.record.system)
    assert all(len(v) == 13 for v in by_id.values())


def test_runs_hold_two_to_eight_segments_on_the_whole_file_layout() -> None:
    """Documents of 4-17 segments (as WMT21 zh-en's): no run of one, none above eight."""
    from dataclasses import replace

    base = _mt_records()[0]
    for n in range(2, 40):
        records = [replace(base, doc_id=f"d{n}", seg_id=str(k), system=s)
                   for k in range(n) for s in ("a", "b")]
        sizes = [len(p.lines) for p in paragraph_units(records)]
        assert all(PARAGRAPH_SIZES[0] <= m <= PARAGRAPH_SIZES[1] for m in sizes), (n, sizes)
        assert sum(sizes) == 2 * n


def test_paragraphs_are_deterministic() -> None:
    records = _mt_records()
    a = [(p.record.seg_id, p.record.system, p.lines) for p in paragraph_units(records)]
    b = [(p.record.seg_id, p.record.system, p.lines) for p in paragraph_units(records)]
    assert a == b


def test_evaluate_paragraph_units_command() -> None:
    from typer.testing import CliRunner

    from mtqa.cli import app

    result = CliRunner().invoke(app, ["evaluate", str(SAMPLE), "--checkers", "structure",
                                      "--samples", "10", "--format", "json", "--reference",
                                      "--units", "paragraph"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["units"] == "paragraph"
    n = len(paragraph_units(_mt_records()))
    assert data["lines"] == n and data["segments"] == n // 13
    names = [m["name"] for m in data["metrics"]]
    assert "chrF" in names and names[0] == "mtqa score"
    text = CliRunner().invoke(app, ["evaluate", str(SAMPLE), "--checkers", "structure",
                                    "--samples", "10", "--units", "paragraph"])
    assert text.exit_code == 0 and f"{n} paragraphs" in text.stdout


def test_paragraph_ranking_term_has_the_gradient_it_claims() -> None:
    """The aggregate ranking term of ``fit_poisson``: analytic gradient = finite differences."""
    import scipy.optimize as so

    rng = np.random.default_rng(0)
    rows, target = [], []
    for _ in range(120):
        x = float(rng.normal())
        rows.append({"words": 20.0, "lm_words": 20.0, "lm_cost_sum": abs(x) * 10,
                     "lm_excess_sum": x, "lm_excess_pos_sum": abs(x), "lm_z0_max": x,
                     "lm_lm_sum": 60 + x, "lm_tokens": 25.0})
        target.append(float(rng.poisson(np.exp(0.5 * x))))
    aggs = [cal.Aggregate(tuple(range(k, k + 3)), f"g{k // 12}", sum(target[k:k + 3]), 3.0)
            for k in range(0, 120, 3)]
    seen = {}
    real = so.minimize

    def spy(f, w0, **kw):  # type: ignore[no-untyped-def]
        seen["f"], seen["n"] = f, len(w0)
        return real(f, w0, **kw)

    so.minimize = spy
    try:
        plain = cal.fit_poisson(rows, target, l2=1.0)
        ranked = cal.fit_poisson(rows, target, l2=1.0, rank_weight=30.0, aggregates=aggs)
    finally:
        so.minimize = real
    f = seen["f"]
    w = rng.normal(size=seen["n"]) * 0.3
    _, grad = f(w)
    eye = np.eye(len(w)) * 1e-6
    numeric = np.array([(f(w + e)[0] - f(w - e)[0]) / 2e-6 for e in eye])
    assert np.abs(numeric - grad).max() < 1e-5 * max(1.0, np.abs(grad).max())
    assert ranked.coef != plain.coef  # the term moves the fit
