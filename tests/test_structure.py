"""The structure checker: rule table, the seed pair's annotated garbles, offsets."""

from __future__ import annotations

from typing import Any

import pytest

from mtqa.checkers.structure import StructureChecker
from mtqa.segment import segment
from mtqa.types import Document, Finding, Severity


@pytest.fixture(scope="module")
def checker() -> StructureChecker:
    return StructureChecker()


def findings(checker: StructureChecker, text: str) -> list[Finding]:
    return list(checker.check([segment(Document(id="t", mt=text))])[0].findings)


# (id, text, rule, expected span text)
POSITIVE = [
    ("join-quote", "The army continues to suffer from severe supply”. shortages in Ukraine.",
     "broken-join", "supply”. shortages"),
    ("join-plain", "Sanctions have proven successful. even as the White House resisted.",
     "broken-join", "successful. even"),
    ("stray-period", "He said it would “understand the situation.” . Officials declined.",
     "stray-punctuation", ".” ."),
    ("double-comma", "The minister,, who arrived late, spoke briefly.", "stray-punctuation", ",,"),
    ("capital", "He said that At a time of competition, we will watch closely.",
     "capital-mid-sentence", "that At"),
    ("collide", "Systems developed in the during the same period were compatible.",
     "colliding-function-words", "in the during the"),
    ("repeat", "The the minister arrived on Monday.", "repeated-word", "The the"),
    ("repeat-prep", "He was taken in in the church.", "repeated-word", "in in"),
    ("lower-start", "The talks ended.\nand the delegates went home without a deal.",
     "lowercase-start", "and"),
    ("truncated", "The ministry said it would release the.", "truncated", "the."),
    ("unbalanced", "He said (without giving details that the talks failed.", "unbalanced", "("),
    ("mojibake", "The minister said itâ€™s time to act on the budget.", "mojibake", "itâ€™s"),
    ("untranslated-run", "The spokesman said 我们将继续努力 during the briefing.", "untranslated",
     "我们将继续努力"),
    ("untranslated-sentence", "The talks ended. Die Regierung hat die Verhandlungen gestern "
     "endgültig abgebrochen und will nicht weiter reden.", "untranslated",
     "Die Regierung hat die Verhandlungen gestern endgültig abgebrochen und will nicht weiter "
     "reden."),
]


@pytest.mark.parametrize(("text", "rule", "span"), [c[1:] for c in POSITIVE],
                         ids=[c[0] for c in POSITIVE])
def test_rule_finds_garble(checker: StructureChecker, text: str, rule: str, span: str) -> None:
    got = [(f.rule, text[f.start : f.end]) for f in findings(checker, text)]
    assert (rule, span) in got


NEGATIVE = [
    ("abbrev-us", "A U.S. official said the talks ended at 4 p.m. on Tuesday."),
    ("abbrev-etc", "They bought rockets, shells, etc. and other supplies."),
    ("had-had", "The company had had enough of the delays."),
    ("names", "The actress Ni Ni starred in the film."),
    ("pronoun-this", "Nobody expected this to happen so soon."),
    ("the-hill", "A U.S. official told The Hill on Tuesday that the talks failed."),
    ("quote-para", "“We will continue to watch Russia and China very closely."),
    ("brand", "The minister said iPhone sales rose sharply last year."),
    ("hyphen", "After learning about their over-loaded daily training, parents complained."),
    ("apostrophe", "Products of Yan'an in the last two years were sold abroad."),
    # WMT21 zh-en: the lite language-ID model calls this English sentence Spanish (p=.89)
    ("english-not-spanish", "In order to ensure the safe relocation of the Tibetan antelope herd, "
     "the reporter learned that the Kekexili Management Office of the Yangtze River Source Park "
     "has arranged staff to continue to carry out video surveillance."),
]


@pytest.mark.parametrize("text", [c[1] for c in NEGATIVE], ids=[c[0] for c in NEGATIVE])
def test_rule_leaves_clean_text_alone(checker: StructureChecker, text: str) -> None:
    got = [(f.rule, text[f.start : f.end]) for f in findings(checker, text)]
    assert got == []


def _overlaps(f: Finding, g: dict[str, Any]) -> bool:
    return f.start < g["end"] and g["start"] < f.end


def test_seed_abc_structural_garbles_found(checker: StructureChecker, abc_text: str,
                                          annotation: dict[str, Any]) -> None:
    found = findings(checker, abc_text)
    gold = annotation["000_df5d74dac48ad764.txt"]["garbles"]
    structural = [g for g in gold if g["structural"]]
    assert len(structural) >= 6
    missed = [g["text"] for g in structural if not any(_overlaps(f, g) for f in found)]
    assert missed == []
    false = [abc_text[f.start : f.end] for f in found if not any(_overlaps(f, g) for g in gold)]
    assert false == []


def test_seed_hill_body_has_no_major(checker: StructureChecker, hill_text: str) -> None:
    found = findings(checker, hill_text)
    assert [f for f in found if f.severity is not Severity.MINOR] == []


def test_offsets_exact_with_emoji_and_cjk(checker: StructureChecker, emoji_text: str) -> None:
    found = findings(checker, emoji_text)
    got = {(f.rule, emoji_text[f.start : f.end]) for f in found}
    assert {("repeated-word", "the the"), ("broken-join", "postponed. even"),
            ("capital-mid-sentence", "that At"), ("stray-punctuation", ".” ."),
            ("untranslated", "任务")} <= got


def test_results_one_per_document_in_order(checker: StructureChecker) -> None:
    docs = [segment(Document(id=str(i), mt=t)) for i, t in
            enumerate(["Clean text here.", "The the garble.", "Another clean one."])]
    results = checker.check(docs)
    assert [r.doc_id for r in results] == ["0", "1", "2"]
    assert [len(r.findings) for r in results] == [0, 1, 0]


def test_rules_run_on_the_body_of_a_paragraph_with_a_disclaimer(checker: StructureChecker) -> None:
    # issue 15 item 1: a disclaimer sentence no longer hides the rest of its paragraph
    text = ("The talks were successful. even as protests went on in the during the war. "
            "中国政府表示支持 the deal. This article was automatically translated.")
    got = {(f.rule, text[f.start:f.end]) for f in findings(checker, text)}
    assert ("broken-join", "successful. even") in got
    assert ("colliding-function-words", "in the during the") in got
    assert ("untranslated", "中国政府表示支持") in got
    assert all("automatically" not in span for _rule, span in got)


def test_dedupe_drops_nested_findings_of_one_rule(checker: StructureChecker) -> None:
    text = "He said it in the during the talks, and again in the during the vote."
    spans = [(f.rule, text[f.start:f.end]) for f in findings(checker, text)]
    assert spans.count(("colliding-function-words", "in the during the")) == 2
