"""mtqa.facts: the facts a text states, and the ones a reference states differently."""

from __future__ import annotations

import pytest

from mtqa.facts import FACT_KINDS, FACT_LABELS, Fact, NameIndex, compare_facts, find_facts
from mtqa.normalize import normalize


def _facts(text: str) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(f.kind, f.text, f.value) for f in find_facts(text, normalize(text), 0, len(text), set())]


# (text, the facts found: kind, text, normalised value)
FIND_CASES = [
    ("The talks began on March 5, 2021 and ended on Friday.",
     [("date", "March 5, 2021", ("3", "5", "2021")), ("weekday", "Friday", ("friday",))]),
    ("One of them said no one came on 12th of June.",
     [("date", "12th of June", ("6", "12", ""))]),
    # a bare "May" is a month only after a cue word ("in", "since", ...)
    ("You may go. In May the rains came.", [("date", "May", ("5", "", ""))]),
    ("Prices rose 3.5 percent in 2019.",
     [("year", "2019", ("2019",)), ("number", "3.5 percent", ("3.5", "%"))]),
    # the scale word and the unit noun belong to the number, the noun singular
    ("Some 250 million people live there, officials said.",
     [("number", "250 million people", ("2.5e+08", "people"))]),
    ("Forty-five soldiers and twenty two civilians were hurt at 5:30.",
     [("number", "Forty-five soldiers", ("45", "soldier")),
      ("number", "twenty two civilians", ("22", "civilian")),
      ("number", "5:30", ("5:30", "time"))]),
    # ranges say little alone: neither end is a fact
    ("Five or six hundred people came.", []),
    ("Prices rose to $1,200 this year.", []),
    # names: the person after a title, a leading "The"/"Meanwhile" dropped, a possessive cut
    ("On Monday, British Transport Secretary Grant Shapps said the new rail line would open "
     "within six months of the vote.",
     [("weekday", "Monday", ("monday",)), ("number", "six months", ("6", "month")),
      ("name", "British Transport Secretary Grant Shapps", ("grant", "shapps"))]),
    ("Meanwhile, the U.S. Department of Defense said Russia's army had lost 6 tanks.",
     [("number", "6 tanks", ("6", "tank")),
      ("name", "U.S. Department of Defense", ("us", "department", "defense")),
      ("name", "Russia", ("russia",))]),
    # quotations, straight and curly
    ('He said \u201cwe will win\u201d and left. She said "this is not the end of it".',
     [("quote", "we will win", ()), ("quote", "this is not the end of it", ())]),
    # a Title Case headline marks no names
    ("Zhang Jike And Lin Xiaozhai Form A Team To Support Youth", []),
]


@pytest.mark.parametrize(("text", "expected"), FIND_CASES,
                         ids=["date-year-weekday", "day-of-month", "modal-may", "percent-year",
                              "scale-unit", "word-numbers-time", "range-words", "range-to",
                              "title-name", "organisation", "quotes", "headline"])
def test_find_facts(text: str, expected: list[tuple[str, str, tuple[str, ...]]]) -> None:
    assert _facts(text) == expected


def test_fact_offsets_index_the_original_text() -> None:
    text = "🚀 东京 officials said on \u201cTuesday\u201d that 6 people were hurt."
    found = find_facts(text, normalize(text), 0, len(text), set())
    assert [(f.kind, text[f.start:f.end]) for f in found] == [
        ("weekday", "Tuesday"), ("number", "6 people"), ("quote", "Tuesday")]
    assert all(f.text == text[f.start:f.end] for f in found)
    # a stretch of the text: only the facts that start inside it
    assert [f.text for f in find_facts(text, normalize(text), 30, len(text), set())] == ["6 people"]


# (candidate, reference, the candidate's facts the reference states differently: text, theirs)
COMPARE_CASES = [
    ("Talks resumed on July 5 in the capital.", "Talks resumed on July 10 in the capital.",
     [("July 5", "July 10")]),
    ("The storm killed six people and injured 40 more.",
     "The storm killed seven people and injured 40 more.", [("six people", "seven people")]),
    ("He arrived on Friday, officials said.", "He arrived on Thursday, officials said.",
     [("Friday", "Thursday")]),
    ("It happened in 2019, police said.", "It happened in 2018, police said.", [("2019", "2018")]),
    ("On Monday the spokesman for the ministry, Zhang Wei, told reporters that talks went well.",
     "On Monday the spokesman for the ministry, Zhang Wen, told reporters that talks went well.",
     [("Zhang Wei", "Zhang Wen")]),
    # the same person with the family name last is no mismatch
    ("On Monday the spokesman for the ministry, Zhang Wei, told reporters that talks went well.",
     "On Monday the ministry's spokesman Wei Zhang told reporters that the talks went well.", []),
    # a reference that also states the value, or a vaguer one, or another unit: no mismatch
    ("He arrived on Friday, officials said.", "He arrived on Friday or Thursday, officials said.", []),
    ("Talks resumed on July 5 in the capital.", "Talks resumed in July in the capital.", []),
    ("The project will cost 2 billion dollars.", "The project will cost 3 billion euros.", []),
]


@pytest.mark.parametrize(("mt", "ref", "expected"), COMPARE_CASES,
                         ids=["date", "number", "weekday", "year", "name", "name-order",
                              "value-in-ref", "vaguer-date", "other-unit"])
def test_compare_facts(mt: str, ref: str, expected: list[tuple[str, str]]) -> None:
    names = NameIndex(normalize(mt), [normalize(ref)], {})
    mine = find_facts(mt, normalize(mt), 0, len(mt), names.known)
    theirs = [find_facts(ref, normalize(ref), 0, len(ref), names.known)]
    found = compare_facts(mine, theirs, names, quotes=False)
    assert [(f.text, value) for f, value in found] == expected
    assert all(f.kind in FACT_KINDS and f.kind in FACT_LABELS for f, _ in found)


def test_quotations_are_compared_only_when_asked() -> None:
    mt = '"We are having difficulty on the sustainment front," Ryder said.'
    ref = '"We\'re having some challenges on the sustainment front," Ryder said.'
    names = NameIndex(normalize(mt), [normalize(ref)], {})
    mine = find_facts(mt, normalize(mt), 0, len(mt), names.known)
    theirs = [find_facts(ref, normalize(ref), 0, len(ref), names.known)]
    found = compare_facts(mine, theirs, names, quotes=True)
    assert [(mt[f.start:f.end], value) for f, value in found] == [("difficulty", "some challenges")]
    assert compare_facts(mine, theirs, names, quotes=False) == []


def test_name_answers_are_kept_for_the_batch() -> None:
    answers: dict[tuple[str, tuple[str, ...], tuple[str, ...]], bool] = {}
    names = NameIndex("Zhang Wei spoke.", ["Zhang Wen spoke."], answers)
    assert names.related(("zhang", "wei"), ("zhang", "wen"))
    assert answers == {("_related", ("zhang", "wei"), ("zhang", "wen")): True}
    # a second index of the batch reads the answer instead of computing it again
    answers[("_related", ("zhang", "wei"), ("zhang", "wen"))] = False
    assert not NameIndex("Zhang Wei spoke.", ["Zhang Wen spoke."], answers).related(
        ("zhang", "wei"), ("zhang", "wen"))


def test_fact_is_frozen() -> None:
    f = Fact("number", 0, 1, "6", ("6", ""))
    with pytest.raises(AttributeError):
        f.start = 2  # type: ignore[misc]
