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
