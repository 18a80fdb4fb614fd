"""Paragraph units from line-level MQM (issue 22): joined lines, summed penalties, shifted
spans, the same runs for every system, and ``mtqa evaluate --units paragraph``."""

from __future__ import annotations

import json
import math
from collections import defaultdict

import numpy as np
import pytest

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


def _context_rows(rng: np.random.Generator, n: int, in_context: float) -> list[dict[str, float]]:
    rows = []
    for _ in range(n):
        x, e = float(rng.normal()), float(rng.normal())  # independent readings
        rows.append({"words": 20.0, "lm_words": 20.0, "lm_cost_sum": 10 + e,
                     "lm_excess_sum": 20 * e, "lm_excess_pos_sum": 20 * abs(e), "lm_z0_max": x,
                     "lm_lm_sum": 60 + e, "lm_tokens": 25.0, "in_context": in_context})
    return rows


def test_context_inputs_fit_paragraphs_and_leave_sentences_as_they_were() -> None:
    """Issue 22: the context inputs are fitted on top of the sentence model (its weights
    fixed), so a unit without context scores exactly as the sentence model scores it, while
    units of a document with other body text get the weights their own data asks for."""
    rng = np.random.default_rng(3)
    sentences = _context_rows(rng, 600, 0.0)
    target = [float(rng.poisson(np.exp(0.2 + 0.6 * r["lm_z0_max"]))) for r in sentences]
    base = cal.fit_poisson(sentences, target, l2=1.0)
    assert not any(cal.is_context_input(k) for k in base.inputs)
    # in context the same reading means less: half the slope, a lower level
    units = _context_rows(rng, 900, 1.0)
    y = [float(rng.poisson(np.exp(-0.3 + 0.3 * r["lm_z0_max"]))) for r in units]
    model = cal.fit_poisson(units, y, l2=1.0, weights=[1.0] * len(units), base=base)
    assert model.inputs[: len(base.inputs)] == base.inputs
    assert "ctx" in model.inputs and "ctx*lm_z0_max" in model.inputs
    assert not any(k.startswith("ctx*structure") for k in model.inputs)  # counts: no context
    for r in sentences[:50]:
        assert model.expected_penalty(r) == base.expected_penalty(r)
        assert model.expected_penalty({k: v for k, v in r.items() if k != "in_context"}) == \
            base.expected_penalty(r)
    slope = dict(zip(model.inputs, (c / s for c, s in zip(model.coef, model.scale))))
    assert slope["lm_z0_max"] + slope["ctx*lm_z0_max"] == pytest.approx(0.3, abs=0.12)
    low, high = ({**units[0], "lm_z0_max": v} for v in (-1.0, 1.0))
    ratio = model.expected_penalty(high) / model.expected_penalty(low)
    assert ratio == pytest.approx(math.exp(0.6), rel=0.3)  # the context slope, not the base's
    with pytest.raises(ValueError, match="already has context inputs"):
        cal.fit_poisson(units, y, l2=1.0, base=model)
    again = cal.UnitModel.from_dict(json.loads(json.dumps(model.to_dict())))
    assert again.expected_penalty(units[5]) == pytest.approx(model.expected_penalty(units[5]),
                                                             rel=1e-4)


def test_a_unit_is_in_context_when_its_document_has_other_body_text() -> None:
    """``in_context``: the unit shares its document with other body text (captions and
    credits do not count), so the context inputs apply; a lone sentence, or the whole body
    scored as one unit, is not."""
    from mtqa.calibrate import unit_features
    from mtqa.segment import segment
    from mtqa.types import Document, Kind

    sd = segment(Document("d", "Photo: Reuters\n\nThe minister spoke on Monday. "
                               "She said the talks would go on. Nobody else spoke."))
    kinds = [s.kind for s in sd.sentences]
    assert kinds[0] is Kind.BOILERPLATE and kinds.count(Kind.BODY) == 3
    body = [i for i, k in enumerate(kinds) if k is Kind.BODY]
    assert [unit_features(sd, [], [i])["in_context"] for i in body] == [1.0, 1.0, 1.0]
    assert unit_features(sd, [], body[:2])["in_context"] == 1.0
    assert unit_features(sd, [], body)["in_context"] == 0.0  # the whole body as one unit
    captioned = segment(Document("c", "Photo: Reuters\n\nThe minister spoke on Monday."))
    assert [s.kind for s in captioned.sentences].count(Kind.BODY) == 1
    only = [i for i, s in enumerate(captioned.sentences) if s.kind is Kind.BODY]
    assert unit_features(captioned, [], only)["in_context"] == 0.0


def test_the_fit_scores_lines_as_the_pipeline_does_and_refuses_old_feature_files() -> None:
    """``scripts/calibrate.py``: a line of two sentences is two units in context, scored by
    their summed expected penalty; a one-sentence line keeps the base model's score through a
    context fit; a feature file without per-line units is refused with the way out."""
    import sys

    sys.path.insert(0, str(FIXTURES.parent / "scripts"))
    import calibrate as script  # type: ignore[import-not-found]

    rng = np.random.default_rng(5)

    def unit(start: int, in_context: float) -> dict[str, object]:
        raw = _context_rows(rng, 1, in_context)[0]
        return {"sentences": 1, "range": [start, start + 40], "raw": raw}

    rows = []
    for seg in range(40):
        for system in range(4):
            two = system % 2 == 1
            units = [unit(0, 1.0), unit(41, 1.0)] if two else [unit(0, 0.0)]
            mqm = float(rng.poisson(4.0 if two else 1.0))
            rows.append({"doc_id": f"d{seg % 8}", "seg_id": seg, "system": f"s{system}",
                         "mqm": mqm, "length": 81 if two else 40, "units_free": units,
                         "units_ref": units})
    lines = script.ParagraphSet(script.line_documents(rows), "free", True, "lm-free", 25.0,
                                lines=True)
    singles = [k for k, r in enumerate(rows) if len(r["units_free"]) == 1]
    base = cal.fit_poisson([rows[k]["units_free"][0]["raw"] for k in singles],
                           [rows[k]["mqm"] for k in singles], l2=1.0)
    model = script._fit_context(base, [(lines, list(range(len(rows))))], (1.0, 10.0, 10.0))
    assert "ctx" in model.inputs
    scored = lines.scores(model, list(range(len(rows))))
    for k in singles[:10]:
        assert scored[k] == -base.expected_penalty(rows[k]["units_free"][0]["raw"])
    k = next(k for k, r in enumerate(rows) if len(r["units_free"]) == 2)
    assert scored[k] == pytest.approx(-sum(model.expected_penalty(u["raw"])
                                           for u in rows[k]["units_free"]))
    assert script._fit_context(base, [(lines, [0, 1])], (0.0, 0.0, 10.0)) is base
    old = [{k: v for k, v in r.items() if k not in ("units_free", "units_ref")} for r in rows]
    with pytest.raises(SystemExit, match="rebuild it with --rebuild"):
        script.line_documents(old)
