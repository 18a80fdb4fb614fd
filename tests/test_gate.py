"""The publish gate fails closed: body words, checkers that did not run, policy validation."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import HILL, ROOT
from mtqa.cli import app
from mtqa.checkers.structure import StructureChecker
from mtqa.config import Settings
from mtqa.errors import ConfigError
from mtqa.gate import KNOWN_CATEGORIES, Policy, decide, load_policy
from mtqa.pipeline import Checker, check
from mtqa.types import (CheckResult, Document, DocumentReport, SegmentedDocument, Severity,
                        Skipped, Span)

runner = CliRunner()
STRUCTURE = Settings(checkers=("structure",))
BNC = ROOT.parent / "shared" / "data" / "roundtrip_bnc_dev.jsonl"
#: issue 15's bypass: a disclaimer sentence made the whole one-line record boilerplate
BYPASS = ("The talks were successful. even as protests went on in the during the war. "
          "中国政府表示支持 the deal. This article was automatically translated.")


def _rules(verdict_reasons: Sequence[object]) -> set[str]:
    return {r.rule for r in verdict_reasons}  # type: ignore[attr-defined]


# --- body words -----------------------------------------------------------------------------


def test_boilerplate_only_document_does_not_pass_and_says_why() -> None:
    with Checker(STRUCTURE) as checker:
        doc = checker.check("This article was automatically translated.")
    assert not doc.verdict.passed
    (reason,) = [r for r in doc.verdict.reasons if r.rule == "min_body_words"]
    assert reason.value == 0 and reason.threshold == 5 and reason.blocking
    assert "labelled boilerplate (disclaimer)" in reason.message


def test_disclaimer_bypass_record_fails_the_gate(tmp_path: Path) -> None:
    path = tmp_path / "b.jsonl"
    path.write_text(json.dumps({"id": "b", "mt": BYPASS}, ensure_ascii=False) + "\n",
                    encoding="utf-8")
    result = runner.invoke(app, ["check", str(path), "-f", "json", "--checkers", "structure"])
    assert result.exit_code == 1, result.stdout + result.stderr
    (doc,) = json.loads(result.stdout)["documents"]
    assert doc["verdict"]["passed"] is False
    # whichever way the labeller reads it: too little body, or the untranslated text is found
    assert _rules_json(doc) & {"min_body_words", "blocking_category:untranslated"}


def test_empty_text_through_the_api_does_not_pass() -> None:
    doc = check("", checkers=["structure"])
    assert not doc.verdict.passed and "min_body_words" in _rules(doc.verdict.reasons)


@pytest.mark.skipif(not BNC.exists(), reason=f"{BNC} is not there (CI lays out ../shared/data)")
def test_real_one_sentence_documents_pass_the_body_words_rule() -> None:
    """Every BNC round-trip sentence (8-40 words), one per document, has enough body words."""
    docs = [Document(id=r["id"], mt=r["text"]) for r in map(json.loads, BNC.open(encoding="utf-8"))]
    assert len(docs) > 1000
    with Checker(STRUCTURE) as checker:
        report = checker.check_many(docs)
    short = [(d.id, r.message) for d in report.documents for r in d.verdict.reasons
             if r.rule == "min_body_words"]
    assert short == []


def test_boilerplate_share_warns_without_blocking() -> None:
    text = ("Photo: Reuters\nCredit: AFP / Getty Images\n"
            "Subscribe to our newsletter for more news\nThe minister said on Monday that the talks would resume next week in Geneva.")
    with Checker(STRUCTURE, policy=Policy(warn_boilerplate_share=0.2)) as checker:
        doc = checker.check(text)
    (warning,) = doc.verdict.reasons
    assert warning.rule == "warn_boilerplate_share" and not warning.blocking
    assert 0.2 < float(warning.value) < 1 and doc.verdict.passed


# --- checkers that did not run ----------------------------------------------------------------


def _rules_json(doc: dict[str, object]) -> set[str]:
    return {r["rule"] for r in doc["verdict"]["reasons"]}  # type: ignore[index]


CJK = ("The talks were successful. Protests went on during the war. "
       "中国政府表示支持 the deal. Officials said the 协议 was signed on Monday and 双方同意 the terms.")


@pytest.mark.parametrize("args", [["--checkers", ","], ["--checkers", "fluency", "--no-lm"]],
                         ids=["empty-list", "no-lm-removes-the-only-checker"])
def test_nothing_to_run_is_a_config_error(tmp_path: Path, args: list[str]) -> None:
    path = tmp_path / "a.txt"
    path.write_text(CJK, encoding="utf-8")
    result = runner.invoke(app, ["check", str(path), *args])
    assert result.exit_code == 2, result.stdout
    assert result.stderr.startswith("error: ") and "PASS" not in result.stdout


def test_unavailable_language_model_blocks_with_its_reason(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text(CJK, encoding="utf-8")
    result = runner.invoke(app, ["check", str(path), "-f", "json", "--checkers", "fluency",
                                    "--lm-model", str(tmp_path / "nonexistent")])
    assert result.exit_code == 1, result.stderr
    (doc,) = json.loads(result.stdout)["documents"]
    assert {"required_checker:structure", "checker_unavailable:fluency"} <= _rules_json(doc)
    reasons = doc["verdict"]["reasons"]
    reason = next(r for r in reasons if r["rule"] == "checker_unavailable:fluency")
    assert "nonexistent" in reason["message"]


class _Broken(StructureChecker):
    """Raises on documents that mention a hurricane, like a native backend that crashes."""

    def check(self, docs: Sequence[SegmentedDocument]) -> list[CheckResult]:
        if any("hurricane" in d.doc.mt for d in docs):
            raise RuntimeError("backend crashed")
        return super().check(docs)


def test_checker_that_failed_on_the_document_blocks_only_that_document() -> None:
    docs = [Document("ok", "The minister said on Monday that the talks would resume next week."),
            Document("bad", "The hurricane reached the coast on Monday; the talks were delayed.")]
    with Checker(STRUCTURE, policy=Policy(), checkers={"structure": _Broken()}) as checker:
        ok, bad = checker.check_many(docs).documents
    assert ok.verdict.passed
    assert not bad.verdict.passed
    (reason,) = bad.verdict.reasons
    assert reason.rule == "checker_failed:structure" and "failed on this document" in reason.message


def test_required_checker_turned_off_blocks_but_other_skips_do_not() -> None:
    text = "The minister said on Monday that the talks would resume next week in Geneva."
    with Checker(Settings(checkers=("grammar",), grammar_backend="harper"),
                 policy=Policy(required_checkers=("structure",))) as checker:
        doc = checker.check(text)
    assert _rules(doc.verdict.reasons) == {"required_checker:structure"}
    # fluency and reference were turned off on purpose: that is not a reason to block
    assert decide(doc, Policy()).passed


def test_a_backend_fallback_is_not_a_checker_that_did_not_run() -> None:
    with Checker(STRUCTURE, policy=Policy()) as checker:
        doc = checker.check("The minister said on Monday that the talks would resume next week.")
    fell_back = dataclasses.replace(doc, skipped=(
        *doc.skipped, Skipped("grammar:languagetool", "no server; Harper used")))
    assert decide(fell_back, load_policy()).passed == decide(doc, load_policy()).passed
    unavailable = dataclasses.replace(doc, skipped=(*doc.skipped, Skipped("grammar", "no backend")))
    assert "checker_unavailable:grammar" in _rules(decide(unavailable, Policy()).reasons)


def test_required_reference_blocks_a_document_without_one() -> None:
    # the reference checker is on, but it only runs on documents that have a reference
    settings = Settings(checkers=("structure", "reference"))
    with Checker(settings, policy=Policy(required_checkers=("reference",))) as checker:
        doc = checker.check("The minister said on Monday that the talks would resume next week.")
    (reason,) = doc.verdict.reasons
    assert reason.rule == "required_checker:reference" and "no reference" in reason.message


def test_hill_still_passes_the_default_policy() -> None:
    with Checker(STRUCTURE) as checker:
        doc = checker.check(HILL.read_text(encoding="utf-8"))
    assert doc.verdict.passed, doc.verdict.reasons


# --- major spans in short documents ---------------------------------------------------------

SENTENCE = "The minister said on Monday that the talks would resume next week in Geneva."


def _with_majors(doc: DocumentReport, words: Sequence[str]) -> DocumentReport:
    """``doc`` with a major ``garbled`` span on each of ``words`` (found in its text)."""
    spans = tuple(Span(start=doc.mt.index(w), end=doc.mt.index(w) + len(w), text=w,
                       category="garbled", severity=Severity.MAJOR, checker="fluency",
                       message="test", confidence=0.9) for w in words)
    return dataclasses.replace(doc, spans=spans)


def test_one_major_span_in_a_sentence_passes_within_the_allowance() -> None:
    """14 words: one span is 7.1 per 100 words, over any rate, yet allowed; two are not."""
    with Checker(STRUCTURE) as checker:
        doc = checker.check(SENTENCE)
    rate_only = Policy(max_major_per_100_words=0.5)
    allowing = Policy(max_major_per_100_words=0.5, major_spans_allowed=1)
    one, two = _with_majors(doc, ["Monday"]), _with_majors(doc, ["Monday", "Geneva"])
    assert _rules(decide(one, rate_only).reasons) == {"max_major_per_100_words"}
    assert decide(one, allowing).passed
    verdict = decide(two, allowing)
    (reason,) = verdict.reasons
    assert not verdict.passed and reason.value == round(200 / 14, 2) and reason.spans == (0, 1)
    assert "at most 0.5, and 1 in any document" in reason.message


def test_allowance_does_not_excuse_a_long_document_over_the_rate() -> None:
    """In 1,400 words, 8 major spans (0.57 per 100) break a 0.5 rate whatever the allowance."""
    with Checker(STRUCTURE) as checker:
        doc = checker.check(" ".join([SENTENCE] * 100))
    starts = [i * (len(SENTENCE) + 1) + SENTENCE.index("Monday") for i in range(8)]
    spans = tuple(Span(start=s, end=s + 6, text="Monday", category="garbled",
                       severity=Severity.MAJOR, checker="fluency", message="test",
                       confidence=0.9) for s in starts)
    doc = dataclasses.replace(doc, spans=spans)
    policy = Policy(max_major_per_100_words=0.5, major_spans_allowed=1)
    assert _rules(decide(doc, policy).reasons) == {"max_major_per_100_words"}
    assert decide(dataclasses.replace(doc, spans=spans[:7]), policy).passed


# --- policy validation ------------------------------------------------------------------------

BAD_POLICIES = [
    ('blocking_categories = "untranslated"', "blocking_categories must be a list of strings"),
    ('blocking_categories = ["untranslatd"]', "unknown 'untranslatd'; known: structure"),
    ("blocking_categories = [5]", "blocking_categories must be a list of strings"),
    ("min_score = nan", "min_score must be a number from 0 to 100, not nan"),
    ("min_score = inf", "min_score must be a number from 0 to 100"),
    ("min_score = -1", "min_score must be a number from 0 to 100"),
    ("min_score = 101", "min_score must be a number from 0 to 100"),
    ('min_score = "high"', "min_score must be a number"),
    ("max_critical = true", "max_critical must be a whole number of at least 0, not True"),
    ("max_critical = 1.5", "max_critical must be a whole number"),
    ("max_critical = -1", "max_critical must be a whole number of at least 0"),
    ("max_major_per_100_words = -0.5", "max_major_per_100_words must be a number of at least 0"),
    ("min_ref_coverage = 30", "min_ref_coverage must be a number from 0 to 1"),
    ("min_fluency = false", "min_fluency must be a number"),
    ('name = ["a"]', "name must be a non-empty string"),
    ('name = ""', "name must be a non-empty string"),
    ("min_body_words = -3", "min_body_words must be a whole number of at least 0"),
    ("major_spans_allowed = 1.5", "major_spans_allowed must be a whole number of at least 0"),
    ("major_spans_allowed = -1", "major_spans_allowed must be a whole number of at least 0"),
    ("warn_boilerplate_share = 1.5", "warn_boilerplate_share must be a number from 0 to 1"),
    ('required_checkers = ["spelling"]', "required_checkers: unknown 'spelling'"),
    ('required_checkers = "structure"', "required_checkers must be a list of strings"),
]


@pytest.mark.parametrize("line, message", BAD_POLICIES, ids=[b[0] for b in BAD_POLICIES])
def test_bad_policy_value_names_file_and_key(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(line + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_policy(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)


def test_bad_policy_is_exit_2_on_the_command_line(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text('blocking_categories = "untranslated"\n', encoding="utf-8")
    result = runner.invoke(app, ["check", str(HILL), "--no-lm", "--policy", str(path)])
    assert result.exit_code == 2
    assert f"{path}: blocking_categories must be a list" in result.stderr


def test_policy_built_in_python_is_validated_too() -> None:
    with pytest.raises(ConfigError, match="min_score"):
        Policy(min_score=float("nan"))
    with pytest.raises(ConfigError, match="blocking_categories"):
        Policy(blocking_categories="untranslated")  # type: ignore[arg-type]


def test_valid_lists_load_as_tuples(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text('blocking_categories = ["untranslated"]\nrequired_checkers = []\n'
                    "max_critical = 2\nmin_score = 70\n", encoding="utf-8")
    policy = load_policy(path)
    assert policy.blocking_categories == ("untranslated",) and policy.required_checkers == ()
    assert (policy.max_critical, policy.min_score) == (2, 70)


def test_known_categories_cover_what_the_checkers_report(abc_text: str, emoji_text: str) -> None:
    from mtqa.checkers.grammar import CATEGORIES

    assert set(CATEGORIES) <= set(KNOWN_CATEGORIES)
    with Checker(STRUCTURE) as checker:
        report = checker.check_many([Document("abc", abc_text), Document("emoji", emoji_text),
                                     Document("cjk", CJK), Document("moji", "The cafÃ© opened.")])
    seen = {s.category for d in report.documents for s in d.spans}
    assert {"structure", "untranslated", "mojibake"} <= seen <= set(KNOWN_CATEGORIES)


# --- the Python API says what it expects ------------------------------------------------------


@pytest.mark.parametrize("mt, expected", [
    (b"The talks resumed.", "mt must be a str, not bytes (decode it first"),
    (None, "mt must be a str, not NoneType"),
    (5, "mt must be a str, not int"),
], ids=["bytes", "none", "int"])
def test_check_rejects_what_is_not_text(mt: object, expected: str) -> None:
    with pytest.raises(TypeError, match=expected.replace("(", r"\(")):
        check(mt, checkers=["structure"])  # type: ignore[arg-type]


def test_checker_methods_reject_what_is_not_a_document() -> None:
    with Checker(STRUCTURE) as checker:
        with pytest.raises(TypeError, match="ref must be a str, not int"):
            checker.check("The talks resumed on Monday.", ref=[5])  # type: ignore[list-item]
        with pytest.raises(TypeError, match="check_many expects Document items; item 1 is int"):
            checker.check_many([Document("a", "The talks resumed."), 5])  # type: ignore[list-item]
        with pytest.raises(TypeError, match="item 0: mt must be a str, not bytes"):
            checker.check_many([Document("a", b"x")])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Checker expects Settings"):
        Checker({"checkers": ["structure"]})  # type: ignore[arg-type]
