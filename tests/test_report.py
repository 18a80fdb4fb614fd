"""Aggregation, the JSON contract (golden file), the gate, and the Python API."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import FIXTURES
from mtqa.aggregate import merge_findings, penalty_score
from mtqa.config import Settings
from mtqa.errors import ConfigError
from mtqa.gate import Policy, decide, load_policy
from mtqa.pipeline import Checker
from mtqa.render.json import render_json
from mtqa.types import Document, Finding, Severity

STRUCTURE_ONLY = Settings(checkers=("structure",))
GOLDEN = FIXTURES / "golden" / "emoji_structure.json"


def test_merge_overlapping_findings_keeps_most_severe_and_raises_confidence() -> None:
    mt = "They developed in the during the same period."
    a = Finding(15, 32, "structure", Severity.MAJOR, "structure", "collide", 0.9, "colliding")
    b = Finding(19, 32, "garbled", Severity.MINOR, "fluency", "odd words", 0.5)
    c = Finding(5, 14, "reference-mismatch", Severity.MINOR, "reference", "differs", 0.3)
    spans = merge_findings(mt, [b, a, c])
    assert [s.text for s in spans] == ["developed", "in the during the"]
    merged = spans[1]
    assert merged.severity is Severity.MAJOR and merged.checker == "structure+fluency"
    assert merged.confidence == pytest.approx(1 - 0.1 * 0.5)
    assert "fluency: odd words" in merged.message


def test_reference_evidence_never_decides_severity() -> None:
    mt = "The talks ended on Tuesday."
    ev = Finding(19, 26, "reference-mismatch", Severity.MAJOR, "reference", "ref: Monday", 0.4)
    fl = Finding(19, 26, "garbled", Severity.MINOR, "fluency", "odd", 0.5)
    (span,) = merge_findings(mt, [ev, fl])
    assert span.category == "garbled" and span.confidence == pytest.approx(1 - 0.6 * 0.5)


def test_comparable_evidence_alone_is_not_a_span() -> None:
    mt = "The talks ended on Tuesday in the capital."
    ev = Finding(0, 9, "reference-mismatch", Severity.MINOR, "reference", "differs", 0.3)
    assert merge_findings(mt, [ev], standalone_evidence=False) == []
    assert [s.text for s in merge_findings(mt, [ev])] == ["The talks"]


def test_evidence_does_not_chain_two_spans() -> None:
    mt = "It was successful. even as they resisted new measures. sanctions followed."
    i, j = mt.index("successful. even"), mt.index("measures. sanctions")
    a = Finding(i, i + 16, "structure", Severity.MAJOR, "structure", "join 1", 0.9, "broken-join")
    b = Finding(j, j + 19, "structure", Severity.MAJOR, "structure", "join 2", 0.9, "broken-join")
    ev = Finding(10, 60, "reference-mismatch", Severity.MINOR, "reference", "differs", 0.3)
    spans = merge_findings(mt, [a, b, ev])
    assert [s.text for s in spans] == ["successful. even", "measures. sanctions"]
    assert all(s.checker == "structure+reference" for s in spans)


def test_penalty_score_monotone() -> None:
    mt = "x"
    minor = merge_findings(mt, [Finding(0, 1, "s", Severity.MINOR, "c", "m")])
    major = merge_findings(mt, [Finding(0, 1, "s", Severity.MAJOR, "c", "m")])
    assert penalty_score([], 100) == 100.0
    assert 100.0 > penalty_score(minor, 100) > penalty_score(major, 100) > 0.0


def test_every_span_text_matches_offsets_with_emoji(emoji_text: str) -> None:
    with Checker(STRUCTURE_ONLY) as checker:
        doc = checker.check(emoji_text, id="emoji")
    assert len(doc.spans) >= 4
    for s in doc.spans:
        assert s.text == emoji_text[s.start : s.end]


def test_json_report_matches_golden(emoji_text: str) -> None:
    with Checker(STRUCTURE_ONLY) as checker:
        report = checker.check_many([Document("emoji", emoji_text)])
    text = render_json(report)
    if os.environ.get("MTQA_REGEN_GOLDEN"):  # regenerate deliberately, then review the diff
        GOLDEN.write_text(text, encoding="utf-8")
    assert json.loads(text) == json.loads(GOLDEN.read_text(encoding="utf-8"))


def test_checker_is_reusable_and_deterministic(abc_text: str) -> None:
    with Checker(STRUCTURE_ONLY) as checker:
        first = checker.check(abc_text)
        second = checker.check(abc_text)
    assert first == second


def test_default_policy_loads_and_explains() -> None:
    policy = load_policy()
    assert policy.name == "default" and "untranslated" in policy.blocking_categories
    with Checker(STRUCTURE_ONLY, policy=policy) as checker:
        doc = checker.check("The spokesman said 我们将继续努力 during the briefing on Monday.")
    assert not doc.verdict.passed
    rules = {r.rule for r in doc.verdict.reasons}
    assert "blocking_category:untranslated" in rules
    reason = next(r for r in doc.verdict.reasons if r.rule == "blocking_category:untranslated")
    assert doc.spans[reason.spans[0]].text == "我们将继续努力"


def test_policy_errors(tmp_path: Path) -> None:
    bad = tmp_path / "p.toml"
    bad.write_text('min_score = "high"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="min_score must be a number"):
        load_policy(bad)
    bad.write_text("min_score = [\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_policy(bad)


def test_empty_policy_passes_everything(abc_text: str) -> None:
    with Checker(STRUCTURE_ONLY, policy=Policy(name="none")) as checker:
        doc = checker.check(abc_text)
    assert doc.spans and decide(doc, Policy()).passed


def test_settings_round_trip() -> None:
    s = Settings(checkers=("structure", "grammar"), batch_size=4, disabled_rules=("X",))
    assert Settings.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    with pytest.raises(ConfigError, match="unknown setting"):
        Settings.from_dict({"batch": 3})
    with pytest.raises(ConfigError, match="unknown checker"):
        Settings(checkers=("spelling",))


# -- issue 15: renderers on hostile text ------------------------------------------------------

HOSTILE_ID = "\x1b]0;pwned\x07\x1b[31mred\x9b2J"
HOSTILE_MT = "Text with \x1b[2J a clear-screen and \x9b31m a C1 sequence.\rOverwritten."


def _hostile_report() -> object:
    with Checker(STRUCTURE_ONLY) as checker:
        return checker.check_many([Document(id=HOSTILE_ID, mt=HOSTILE_MT)])


@pytest.mark.parametrize("which", ["terminal", "gate"])
def test_terminal_output_carries_no_control_characters(which: str) -> None:
    from mtqa.render.terminal import render_gate, render_terminal
    from mtqa.types import BadRecord

    report = _hostile_report()
    text = (render_terminal(report, color=False) if which == "terminal"  # type: ignore[arg-type]
            else render_gate(report, [BadRecord("x", "x:1: bad \x1b[8m hidden")], color=False))  # type: ignore[arg-type]
    assert not {c for c in text if (ord(c) < 32 and c not in "\n\t") or 0x7F <= ord(c) <= 0x9F}
    assert "\\x1b]0;pwned\\x07" in text


def test_safe_text_keeps_newlines_tabs_and_unicode() -> None:
    from mtqa.render.terminal import safe_text

    assert safe_text("a\tb\nc — 中文 😀") == "a\tb\nc — 中文 😀"
    assert safe_text("\x1b[0m\x00\x7f\x85\r") == "\\x1b[0m\\x00\\x7f\\x85\\x0d"


def test_json_report_is_strict_json_with_separators_escaped() -> None:
    import math

    from mtqa.render.json import render_json, render_jsonl_line, to_json

    with Checker(STRUCTURE_ONLY) as checker:
        report = checker.check_many([Document(id="a\u2028b", mt="One\u2029two\u0085three.",
                                              meta={"x": math.nan, "y": [math.inf]})])
    for text in (render_json(report), render_jsonl_line(report.documents[0])):
        assert not set(text) & {"\u2028", "\u2029", "\u0085"}

        def refuse(name: str) -> object:
            raise ValueError(name)

        data = json.loads(text, parse_constant=refuse)
        doc = data["documents"][0] if "documents" in data else data
        assert doc["id"] == "a\u2028b" and doc["meta"] == {"x": None, "y": [None]}
    assert to_json({"s": "\ud800"}) == '{"s": "\\ud800"}'  # a lone surrogate cannot be UTF-8


def test_a_sentence_long_diff_corroborates_spans_without_repeating_itself() -> None:
    # issue 19: a diff stretch over a whole sentence said "differs from the reference (...)"
    # on every word span inside it; it still raises their confidence
    mt = "The army continues to suffer from supply shortages in the east today."
    ev = Finding(0, len(mt) - 1, "reference-mismatch", Severity.MINOR, "reference",
                 'differs from the reference ("according")', 0.3)
    i, j, k = mt.index("army"), mt.index("suffer"), mt.index("east")
    a = Finding(i, i + 4, "garbled", Severity.MINOR, "fluency", "odd army", 0.5)
    b = Finding(j, j + 6, "garbled", Severity.MINOR, "fluency", "odd suffer", 0.5)
    near = Finding(k, k + 4, "reference-mismatch", Severity.MINOR, "reference", "ref: now", 0.3)
    c = Finding(k, k + 4, "garbled", Severity.MINOR, "fluency", "odd east", 0.5)
    spans = merge_findings(mt, [ev, a, b, near, c])
    assert [s.text for s in spans] == ["army", "suffer", "east"]
    assert [s.message for s in spans[:2]] == ["odd army", "odd suffer"]
    assert all(s.checker == "fluency+reference" for s in spans)
    assert spans[0].confidence == pytest.approx(1 - 0.5 * 0.7)
    # evidence about this span's own words is still said
    assert spans[2].message == "odd east (also reference: ref: now)"
