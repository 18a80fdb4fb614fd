"""Spans an editor can trust (issue 19): names the text uses consistently are not flagged, the
word model's messages say what is true of the word, and --min-confidence hides weak spans in
text and HTML output while JSON keeps them all. Everything runs on the seed pair."""

from __future__ import annotations

from pathlib import Path

import json
import re

import numpy as np
import pytest
from typer.testing import CliRunner
from wordfreq import zipf_frequency

from conftest import ABC, HILL
from mtqa.aggregate import RARE_ZIPF, _word_reasons, aggregate, consistent_tokens
from mtqa.calibrate import load_calibration
from mtqa.checkers.structure import StructureChecker
from mtqa.cli import app
from mtqa.render.html import render_html
from mtqa.render.json import render_json
from mtqa.render.terminal import render_terminal
from mtqa.segment import segment
from mtqa.types import Document, Report

runner = CliRunner()


def _excused(mt: str, refs: tuple[str, ...] = ()) -> set[str]:
    sd = segment(Document("d", mt, ref=refs))
    return {mt[a:b] for a, b in consistent_tokens(sd, refs)}


def test_names_the_article_repeats_are_excused(abc_text: str) -> None:
    words = _excused(abc_text)
    # Kyiv (3 uses), Pentagon and Patel (2 each) are used consistently; Karine Jean-Pierre is a
    # run of capitalised words
    assert {"Kyiv", "Pentagon", "Patel", "Karine", "Jean", "Pierre"} <= words
    # a common word, a calque, a capital in mid-quote ("that At") and Biden (once) are not
    assert not {"sanctions", "rostrum", "At", "Biden", "watch"} & words


def test_the_reference_excuses_names_it_holds(abc_text: str, hill_text: str) -> None:
    assert "Biden" not in _excused(abc_text)
    words = _excused(abc_text, (hill_text,))
    assert "Biden" in words
    assert "rostrum" not in words and "At" not in words


def test_a_designation_is_a_name(hill_text: str, abc_text: str) -> None:
    # "Mohajer-6" and "Shahed-series": a capitalised word hyphened to a number or a word, each
    # used once in The Hill's article ('Shahed' and 'series' were minor word-model spans)
    sd = segment(Document("hill", hill_text))
    spans = {hill_text[a:b] for a, b in consistent_tokens(sd)}
    i = hill_text.index("Shahed-series")
    assert {(i, i + 6), (i + 7, i + 13)} <= set(consistent_tokens(sd))
    assert "Mohajer" in spans
    assert "experienced" not in spans and "drones" not in spans
    assert {"Soviet", "era"} <= _excused(abc_text)


def test_a_name_never_written_in_lower_case_counts_its_sentence_starts(hill_text: str) -> None:
    # "according to Biden administration officials" ... "Biden administration officials said":
    # both uses of the name are excused, the sentence-initial one too
    sd = segment(Document("hill", hill_text))
    excused = set(consistent_tokens(sd))
    uses = [i for i in range(len(hill_text)) if hill_text.startswith("Biden", i)]
    assert len(uses) == 2 and all((i, i + 5) in excused for i in uses)
    # a sentence-initial common word the text also writes in lower case is not
    the = hill_text.index("The U.S. anticipates")
    assert (the, the + 3) not in excused


def test_multiword_names_are_excused_whole(abc_text: str) -> None:
    sd = segment(Document("abc", abc_text))
    excused = set(consistent_tokens(sd))
    for name in ("Karine Jean-Pierre", "Vedant Patel", "Sergei Shoigu", "Valery Gerasimov",
                 "White House"):
        i = abc_text.index(name)
        parts = [(m.start() + i, m.end() + i) for m in re.finditer(r"\w+", name)]
        assert set(parts) <= excused, name


def _reason(word: str, **at: float) -> str:
    model = load_calibration().words["free"]
    x = np.asarray(model.center, dtype=np.float64).copy()
    for name, value in {"zipf": zipf_frequency(word.lower(), "en"), **at}.items():
        x[model.inputs.index(name)] = value
    share = model.contributions(x[None, :])[0]
    return _word_reasons(model, x, share, word)


@pytest.mark.parametrize("word", ["sanctions", "watch", "weapons", "fill", "Patel"])
def test_common_words_are_not_called_rare(word: str) -> None:
    assert zipf_frequency(word.lower(), "en") >= RARE_ZIPF
    assert "rare" not in _reason(word, lm=0.5)


def test_a_rare_word_is_called_rare() -> None:
    assert "'rostrum' is a rare word (wordfreq Zipf 2.6" in _reason("rostrum", lm=2.0)


def test_no_sentence_clause_in_word_messages() -> None:
    # a high expected penalty used to be said on every word of the sentence
    said = _reason("touted", lm=0.8, log_expected=3.0, log_expected_sq=9.0)
    assert "its sentence" not in said and "expected MQM penalty" not in said
    assert "the language model finds 'touted' surprising (8 nats)" in said


def test_a_word_only_its_sentence_raises_has_no_reason() -> None:
    # 'watch' (4 nats) in a sentence expected to hold errors: nothing about the word itself
    model = load_calibration().words["free"]
    lm = model.center[model.inputs.index("lm")]
    assert _reason("watch", lm=lm - 0.1, lm_rel=0.0, log_expected=3.0,
                   log_expected_sq=9.0) == ""


def _structure_report(mt: str) -> Report:
    doc = Document("000_df5d74dac48ad764", mt)
    sd = segment(doc)
    with StructureChecker() as structure:
        results = structure.check([sd])
    return Report((aggregate(sd, results),))


def test_min_confidence_hides_spans_in_text_and_html_only(abc_text: str) -> None:
    report = _structure_report(abc_text)
    (d,) = report.documents
    weak = [s for s in d.spans if s.confidence < 0.8]
    assert weak and len(weak) < len(d.spans)
    text = render_terminal(report, color=False, width=200, min_confidence=0.8)
    assert f"{len(d.spans) - len(weak)} span(s)" in text
    assert f"({len(weak)} more under confidence 0.8 hidden" in text
    assert render_terminal(report, color=False, width=200).count("/stray-") >= 1
    html = render_html(report, min_confidence=0.8)
    assert f"{len(weak)} span(s) under confidence 0.8 hidden" in html
    assert html.count('class="sev-') < render_html(report).count('class="sev-')
    assert len(json.loads(render_json(report))["documents"][0]["spans"]) == len(d.spans)


def test_cli_min_confidence_option(tmp_path: object) -> None:
    args = ["check", str(ABC), "--checkers", "structure", "--no-gate"]
    shown = runner.invoke(app, [*args, "--min-confidence", "0"])
    hidden = runner.invoke(app, [*args, "--min-confidence", "0.99"])
    assert shown.exit_code == 0 and hidden.exit_code == 0, shown.stderr
    assert "hidden" not in shown.stdout and "hidden" in hidden.stdout
    full = json.loads(runner.invoke(app, [*args, "--format", "json",
                                          "--min-confidence", "0.99"]).stdout)
    assert len(full["documents"][0]["spans"]) >= 7
    assert runner.invoke(app, [*args, "--min-confidence", "2"]).exit_code == 2


@pytest.mark.slow
@pytest.mark.model
def test_seed_word_spans_are_true() -> None:
    from mtqa.config import Settings
    from mtqa.pipeline import Checker

    abc, hill = (p.read_text(encoding="utf-8") for p in (ABC, HILL))
    with Checker(Settings(checkers=("structure", "fluency", "grammar"))) as checker:
        report = checker.check_many([Document("abc", abc), Document("hill", hill)])
    for d in report.documents:
        for s in d.spans:
            assert "its sentence is likely" not in s.message
            assert "sanctions' is a rare" not in s.message
            assert s.text not in ("Kyiv", "Pentagon", "Mohajer")
    hill_majors = [s for s in report.documents[1].spans if s.severity.value != "minor"]
    assert hill_majors == []


def test_the_model_expectation_is_said_once_with_the_lm_reason() -> None:
    model = load_calibration().words["free"]
    x = np.asarray(model.center, dtype=np.float64).copy()
    for name, value in {"zipf": zipf_frequency("rostrum", "en"), "lm": 2.0, "lm_rel": 1.5}.items():
        x[model.inputs.index(name)] = value
    share = model.contributions(x[None, :])[0]
    said = _word_reasons(model, x, share, "rostrum", ("podium", "Chinese", "ro"))
    # 'ro' is where the word itself starts: not an alternative
    assert "where it expected 'podium' or 'Chinese'" in said
    assert said.count("where it expected") == 1
    assert "where it expected" not in _word_reasons(model, x, share, "rostrum", ())


def test_structure_messages_name_the_words(abc_text: str) -> None:
    (d,) = _structure_report(abc_text).documents
    by_text = {s.text: s.message for s in d.spans}
    assert by_text["supply”. shortages"] == (
        "sentence broken in two: a full stop between 'supply' and a lower-case 'shortages'")
    assert by_text["statute. powerful"].endswith("between 'statute' and a lower-case 'powerful'")
    assert by_text["that At"] == "capitalised 'At' after 'that', in the middle of a sentence"
    assert "'in the during the'" in by_text["in the during the"]


@pytest.mark.slow
@pytest.mark.model
def test_seed_messages_name_the_evidence(tmp_path: Path) -> None:
    """With every checker and the Hill reference: word spans say what the model expected, and
    a diff stretch over a whole sentence is not repeated on each span it touches.

    The shipped reference-free word model is conservative (issue 19: on the seed it flags no
    word at all); its threshold is lowered here so that its messages can be read."""
    from importlib import resources

    from mtqa.config import Settings
    from mtqa.pipeline import Checker

    shipped = resources.files("mtqa") / "data" / "calibration.json"
    data = json.loads(shipped.read_text(encoding="utf-8"))
    data["words"]["free"]["keep"] = 0.05
    loose = tmp_path / "calibration.json"
    loose.write_text(json.dumps(data), encoding="utf-8")
    abc, hill = (p.read_text(encoding="utf-8") for p in (ABC, HILL))
    with Checker(Settings(calibration=loose)) as checker:
        (d,) = checker.check_many([Document("abc", abc, ref=(hill,))]).documents
    lm_spans = [s for s in d.spans if "language model finds" in s.message]
    assert len(lm_spans) >= 5
    assert sum("where it expected '" in s.message for s in lm_spans) >= 0.8 * len(lm_spans)
    # a word model span at 'shortages' (the second half of a broken sentence) says the model
    # expected a new sentence there (Gemma-3-270M: 10 nats; SmolLM2: 16)
    said = [s for s in d.spans if "finds 'shortages' surprising" in s.message]
    assert said and all(re.search(r"finds 'shortages' surprising \(\d+ nats\), where it expected "
                                  r"'The'", s.message) for s in said)
    clauses = [c.split("(also ")[-1] for s in d.spans for c in s.message.split("; ")
               if "differs from the reference" in c]
    assert clauses and max(clauses.count(c) for c in clauses) <= 2
    assert all(s.text not in ("Kyiv", "Biden", "Karine Jean-Pierre") for s in d.spans)
