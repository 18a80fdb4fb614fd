"""Segmentation and boilerplate labels on the seed pair, checked against the hand annotation."""

from __future__ import annotations

from typing import Any

import pytest

from mtqa.normalize import normalize
from mtqa.segment import segment
from mtqa.types import Document, Kind

SEED_NAMES = ["000_df5d74dac48ad764.txt", "002_98c53f21e16ae677.txt"]


@pytest.mark.parametrize("name", SEED_NAMES, ids=["abc", "hill"])
def test_boilerplate_labels_match_annotation(name: str, annotation: dict[str, Any]) -> None:
    from conftest import SEEDS, read

    sd = segment(Document(id=name, mt=read(SEEDS / name)))
    expected = annotation[name]["paragraphs"]
    assert len(sd.paragraphs) == len(expected)
    for p, exp in enumerate(expected):
        kinds = {s.kind.value for s in sd.sentences if s.paragraph == p}
        text = sd.doc.mt[sd.paragraphs[p][0] : sd.paragraphs[p][1]]
        assert text.startswith(exp["text"].rstrip())
        assert kinds == {exp["kind"]}, f"paragraph {p}: {text[:60]!r}"


@pytest.mark.parametrize("name", SEED_NAMES, ids=["abc", "hill"])
def test_sentences_tile_each_paragraph(name: str) -> None:
    from conftest import SEEDS, read

    sd = segment(Document(id=name, mt=read(SEEDS / name)))
    for p, (ps, pe) in enumerate(sd.paragraphs):
        sents = [s for s in sd.sentences if s.paragraph == p]
        assert sents[0].start == ps and sents[-1].end == pe
        for a, b in zip(sents, sents[1:]):
            assert a.end <= b.start
            assert sd.doc.mt[a.end : b.start].strip() == ""


def test_broken_join_stays_one_sentence(abc_text: str) -> None:
    sd = segment(Document(id="abc", mt=abc_text))
    texts = [sd.text(s) for s in sd.sentences]
    assert any("severe supply”. shortages in Ukraine" in t for t in texts)
    assert "(Neither country has yet responded to the report.)" in texts


def test_nbsp_normalised_without_moving_offsets(hill_text: str) -> None:
    assert hill_text.count("\u00a0") == 16
    norm = normalize(hill_text)
    assert len(norm) == len(hill_text) and "\u00a0" not in norm
    sd = segment(Document(id="hill", mt=hill_text))
    first = next(s for s in sd.sentences if sd.text(s).startswith("Russia’s Ministry"))
    assert "\u00a0in the process" in sd.text(first)  # original text, original offsets


def test_headline_is_body_but_marked() -> None:
    sd = segment(Document(id="x", mt="Storm hits coast\n\nA storm hit the coast on Tuesday."))
    assert sd.sentences[0].kind is Kind.BODY and sd.sentences[0].why == "headline"
    assert sd.sentences[1].why is None


CHROME_CASES = [
    ("Getty Images credit", "John Smith/AFP via Getty Images", "photo credit"),
    ("agency credit", "KCNA via Reuters", "photo credit"),
    ("AP credit", "AP Photo/Jane Roe", "photo credit"),
    ("pictured", "PICTURED: The minister arrives in Kyiv, May 2, 2023.", "photo caption"),
    ("byline", "By Jane Roe and John Smith", "byline"),
    ("contributed", "Reuters contributed to this report.", "byline"),
    ("updated", "Updated: 4:42 p.m.", "site chrome"),
    ("tags", "Tags Ukraine Russia war", "site chrome"),
    ("load more", "Load more", "site chrome"),
    ("disclaimer", "This article was automatically translated and does not necessarily "
     "reflect the views of the site.", "disclaimer"),
]


@pytest.mark.parametrize(("line", "label"), [c[1:] for c in CHROME_CASES],
                         ids=[c[0] for c in CHROME_CASES])
def test_chrome_lines(line: str, label: str) -> None:
    body = "The minister said on Tuesday that talks with the delegation would resume next week."
    sd = segment(Document(id="x", mt=f"{body}\n{line}\n{body}"))
    kinds = [(s.kind, s.why) for s in sd.sentences if s.paragraph == 1]
    assert kinds and all(k is Kind.BOILERPLATE and why == label for k, why in kinds)
    assert all(s.kind is Kind.BODY for s in sd.sentences if s.paragraph != 1)


BODY_CASES = [
    "Officials said the vote, held on September 6, 2022, was peaceful.",
    "The company said shares rose 4% after the results.",
    "He said: “We will continue.”",
    "Tags were found on the birds released in the park last spring.",
]


@pytest.mark.parametrize("line", BODY_CASES)
def test_body_lines_are_not_boilerplate(line: str) -> None:
    body = "The minister said on Tuesday that talks with the delegation would resume next week."
    sd = segment(Document(id="x", mt=f"{body}\n{line}"))
    assert all(s.kind is Kind.BODY for s in sd.sentences)


# --- boilerplate is decided per sentence (issue 15 item 1) ----------------------------------

BYPASS = ("The talks were successful. even as protests went on in the during the war. "
          "中国政府表示支持 the deal. This article was automatically translated.")


def test_disclaimer_sentence_labels_only_itself() -> None:
    sd = segment(Document(id="b", mt=BYPASS))
    kinds = [(sd.text(s), s.kind, s.why) for s in sd.sentences]
    assert kinds[-1] == ("This article was automatically translated.", Kind.BOILERPLATE,
                         "disclaimer")
    assert [k for _t, k, _w in kinds[:-1]] == [Kind.BODY] * (len(kinds) - 1)
    assert "in the during the war" in " ".join(t for t, k, _w in kinds if k is Kind.BODY)


def test_joined_seed_keeps_its_body(abc_text: str) -> None:
    # the seed article as one line, as a JSONL record holds it: one disclaimer sentence at the
    # end must not make the whole article boilerplate
    sd = segment(Document(id="abc", mt=abc_text.replace("\n", " ")))
    assert len(sd.paragraphs) == 1
    boiler = [sd.text(s) for s in sd.sentences if s.kind is Kind.BOILERPLATE]
    assert len(boiler) == 1 and "Not all news on the site" in boiler[0]
    assert any("supply”. shortages" in sd.text(s) for s in sd.body)


def test_whole_line_rules_stay_anchored() -> None:
    # a credit or byline rule matches a whole line, not a sentence inside a body paragraph
    body = ("Officials met on Tuesday. The photo was taken via Reuters cameras, they said. "
            "Talks resume next week.")
    sd = segment(Document(id="x", mt=body))
    assert all(s.kind is Kind.BODY for s in sd.sentences)


def test_duplicate_caption_far_from_its_caption_is_body() -> None:
    caption = "PICTURED: A boy plays on a destroyed tank in central Kyiv, Ukraine, September 2, 2022."
    repeat = "A boy plays on top of a destroyed tank in central Kyiv, Ukraine, September 2, 2022."
    filler = [f"Paragraph {i} of the article says something different about the talks."
              for i in range(8)]
    near = segment(Document(id="n", mt="\n".join(["Headline", caption, repeat, *filler])))
    assert {s.why for s in near.sentences if s.paragraph == 2} == {"duplicate caption"}
    far = segment(Document(id="f", mt="\n".join(["Headline", caption, *filler, repeat])))
    assert {s.kind for s in far.sentences if s.paragraph == len(far.paragraphs) - 1} == {Kind.BODY}


GARBLE = ("The talks were successful. even as protests went on in the during the war. "
          "中国政府表示支持 the deal. ")
LONG_BODY = " ".join(["Officials in the capital said the talks with the delegation would resume "
                      "next week after a pause of several days."] * 5)
# siblings of the disclaimer bypass: a rule that labels a whole line by how it starts or what it
# mentions must not swallow an article-length line
SWALLOW_CASES = [
    ("pictured-prefix", f"PICTURED: {GARBLE}{LONG_BODY}"),
    ("chrome-prefix", f"Read more {GARBLE}{LONG_BODY} and more"),
    ("tags-prefix", f"Tags {GARBLE}{LONG_BODY} and more"),
    # one run-on sentence of 90 words: over DISCLAIMER_MAX_WORDS, so it is text, not a disclaimer
    ("disclaimer-phrase", "Officials said that " + ", ".join(["the talks with the delegation "
                          "would resume next week"] * 10) + " and that the minister does not "
                          "necessarily reflect the cabinet, as protests went on in the during the war."),
]


@pytest.mark.parametrize("line", [c[1] for c in SWALLOW_CASES], ids=[c[0] for c in SWALLOW_CASES])
def test_long_lines_are_not_swallowed_as_boilerplate(line: str) -> None:
    sd = segment(Document(id="x", mt=f"Headline\n{line}"))
    body = " ".join(sd.text(s) for s in sd.body)
    assert "in the during the" in body


def test_caption_beside_a_credit_is_bounded() -> None:
    credit = "AP Photo/Jane Roe"
    caption = "The minister, pictured in Kyiv, arrives for talks on September 2, 2022."
    article = f"The minister was pictured in Kyiv. {LONG_BODY} {GARBLE}"
    sd = segment(Document(id="x", mt=f"Headline\n{credit}\n{caption}\n{credit}\n{article}"))
    assert {s.why for s in sd.sentences if s.paragraph == 2} == {"photo caption"}
    assert {s.kind for s in sd.sentences if s.paragraph == 4} == {Kind.BODY}
