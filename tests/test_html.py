"""HTML reports, checked as text and in a real headless Chromium (driven by Playwright).

The browser tests skip, with the reason printed by ``-rs``, when Chromium or Playwright is missing;
CI installs both (see scripts/setup.sh), so they run there.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from html.parser import HTMLParser
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from conftest import ABC, FIXTURES, HILL
from mtqa.batch import run_batch
from mtqa.cli import app
from mtqa.config import Settings
from mtqa.pipeline import Checker
from mtqa.render.html import render_html, render_index
from mtqa.render.json import document_from_dict, document_to_dict
from mtqa.segment import segment
from mtqa.types import (
    AlignmentLink,
    Document,
    DocumentReport,
    Kind,
    Metric,
    ReferenceResult,
    Report,
)

STRUCTURE = Settings(checkers=("structure",))
CHROMIUM = os.environ.get("MTQA_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
INJECTION = ("<script>window.__pwned = 1; document.title = 'pwned'; alert(1)</script>"
             "<img src=x onerror=\"window.__pwned = 2\">")


def _check(text: str, doc_id: str = "doc", ref: tuple[str, ...] = ()) -> DocumentReport:
    with Checker(STRUCTURE) as checker:
        return checker.check_many([Document(doc_id, text, ref=ref)]).documents[0]


@pytest.fixture(scope="module")
def abc() -> DocumentReport:
    return _check(ABC.read_text(encoding="utf-8"), ABC.stem)


def _seed_reference(report: DocumentReport) -> DocumentReport:
    """The seed pair with the hand alignment of fixtures/seed_alignment.json as its reference."""
    hill = HILL.read_text(encoding="utf-8")
    gold = json.loads((FIXTURES / "seed_alignment.json").read_text(encoding="utf-8"))
    ref_sents = segment(Document("hill", hill)).sentences
    mt = report.mt
    links = []
    for link in gold["links"]:
        refs = tuple(s["ref"] for s in link["sure"])
        mt_sent = report.sentences[link["mt"]]
        # the annotation carries the texts: keep only links that still match the segmentation
        if refs and mt[mt_sent.start : mt_sent.end] == link["mt_text"]:
            links.append(AlignmentLink(link["mt"], refs, 0.8))
    reference = ReferenceResult(
        mode="comparable", metrics=(Metric("chrF", 31.2),), sentences=ref_sents,
        alignment=tuple(links), mt_coverage=0.6, ref_coverage=0.7,
        unsupported=tuple(u["mt"] for u in gold["unsupported"]),
        missed=tuple(m["ref"] for m in gold["missed"]))
    return dataclasses.replace(report, reference=reference, ref=(hill,))


# -- as text ----------------------------------------------------------------------------------


def test_one_self_contained_file(abc: DocumentReport) -> None:
    page = render_html(Report((abc,)))
    assert page.startswith("<!DOCTYPE html>") and page.count("<html") == 1
    assert not re.search(r"<(link|img|iframe)\b|\bsrc=|@import|url\(", page)
    assert "Content-Security-Policy" in page and "default-src 'none'" in page


def test_user_text_is_escaped_everywhere() -> None:
    evil = "<b>x</b>\"'&"
    report = _check(f"The talks were successful. even as {INJECTION} went on.", doc_id=evil)
    report = dataclasses.replace(report, meta={"title": evil, "url": "javascript:alert(1)"})
    page = render_html(Report((report,)))
    assert "<script>window" not in page and "<img" not in page and "<b>x</b>" not in page
    assert "&lt;script&gt;window.__pwned" in page and "&lt;b&gt;x&lt;/b&gt;&quot;&#x27;&amp;" in page
    assert 'href="javascript:' not in page


class _Nesting(HTMLParser):
    """Records every mark's text by data-span and fails on badly nested tags."""

    VOID = {"meta", "br", "img", "link"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[tuple[str, str | None]] = []
        self.marks: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in self.VOID:
            self.stack.append((tag, dict(attrs).get("data-span")))

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1][0] == tag, (tag, self.stack[-3:])
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        for tag, span in self.stack:
            if tag == "mark" and span:
                self.marks[span] = self.marks.get(span, "") + data


def test_span_across_a_sentence_edge_is_split_but_well_nested() -> None:
    report = _check("The talks were successful. even as protests went on.")
    (span,) = report.spans
    assert span.text == "successful. even"
    cut = span.start + 5  # a sentence edge inside the span
    split = dataclasses.replace(report, sentences=(
        dataclasses.replace(report.sentences[0], end=cut),
        dataclasses.replace(report.sentences[0], start=cut)))
    page = render_html(Report((split,)))
    parser = _Nesting()
    parser.feed(page)
    assert parser.stack == [] and parser.marks == {"d0-s0": "successful. even"}
    assert page.count('data-span="d0-s0"') == 2 and page.count('id="d0-s0"') == 1


def test_report_round_trips_through_json(abc: DocumentReport) -> None:
    report = _seed_reference(abc)
    back = document_from_dict(document_to_dict(report), mt=report.mt, ref=report.ref)
    assert document_to_dict(back) == document_to_dict(report)
    assert back.spans == report.spans and back.verdict == report.verdict
    with pytest.raises(Exception, match="does not match the text"):
        document_from_dict(document_to_dict(report), mt="x" + report.mt)


def test_check_format_html(tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    result = CliRunner().invoke(app, ["check", str(ABC), "-f", "html", "-o", str(out),
                                      "--checkers", "structure"])
    assert result.exit_code == 1
    page = out.read_text(encoding="utf-8")
    assert page.count('class="sent body') > 10 and "supply”. shortages</mark>" in page


# -- in a browser -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"browser tests need Chromium at {CHROMIUM} "
                    "(apt-get install -y chromium, or set MTQA_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("browser tests need Playwright (pip install playwright; no browser download)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    pg = context.new_page()
    pg.dialogs = []
    pg.on("dialog", lambda d: (pg.dialogs.append(d.message), d.dismiss()))
    yield pg
    context.close()


def _open(page: Any, path: Path, html: str) -> None:
    path.write_text(html, encoding="utf-8")
    page.goto(path.as_uri())


def test_spans_highlighted_at_their_text_with_tooltips(page: Any, abc: DocumentReport,
                                                       tmp_path: Path) -> None:
    _open(page, tmp_path / "abc.html", render_html(Report((abc,))))
    assert len(abc.spans) >= 6
    for i, span in enumerate(abc.spans):
        marks = page.locator(f'mark[data-span="d0-s{i}"]')
        assert "".join(marks.all_text_contents()) == span.text
        first = marks.first
        classes = first.get_attribute("class").split()
        assert f"sev-{span.severity.value}" in classes
        assert "cat-" + re.sub(r"[^a-z0-9]+", "-", span.category.lower()) in classes
        tip = first.get_attribute("data-tip")
        assert span.message in tip and span.checker in tip and f"{span.confidence:.2f}" in tip
    join = page.locator('mark[data-span="d0-s0"]').first
    join.hover()
    after = page.evaluate("el => getComputedStyle(el, '::after').content", join.element_handle())
    assert abc.spans[0].message[:40] in after
    assert page.evaluate("el => getComputedStyle(el).backgroundColor", join.element_handle()) \
        != "rgba(0, 0, 0, 0)"


def test_verdict_reasons_and_skipped_at_the_top(page: Any, abc: DocumentReport, tmp_path: Path) -> None:
    _open(page, tmp_path / "abc.html", render_html(Report((abc,))))
    assert page.title() == f"mtqa: {abc.id} — FAIL {abc.score:.1f}"
    rows = page.locator("table.reasons tr").all()[1:]
    assert len(rows) == len(abc.verdict.reasons) >= 1
    for row, reason in zip(rows, abc.verdict.reasons):
        cells = row.locator("td").all_text_contents()
        assert cells[0] == reason.rule and reason.message == cells[3]
        assert float(cells[1]) == pytest.approx(float(reason.value), abs=0.01)
        assert float(cells[2]) == pytest.approx(float(reason.threshold))
        for i in reason.spans:
            assert abc.spans[i].text in cells[4]
    skipped = page.locator(".skipped li").all_text_contents()
    assert skipped == [f"{s.checker}: {s.reason}" for s in abc.skipped] and skipped
    header = page.locator("header.verdict").bounding_box()
    article = page.locator("article.mt").bounding_box()
    assert header["y"] < article["y"]


def test_script_in_article_text_is_shown_not_run(page: Any, tmp_path: Path) -> None:
    text = f"The talks were successful. even as {INJECTION} went on.\nA second paragraph."
    report = _check(text, doc_id="<script>window.__pwned = 3</script>")
    _open(page, tmp_path / "evil.html", render_html(Report((report,))))
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert page.dialogs == []
    verdict = "PASS" if report.verdict.passed else "FAIL"
    assert page.title() == f"mtqa: <script>window.__pwned = 3</script> — {verdict} {report.score:.1f}"
    assert page.locator("script").count() == 0  # no reference, so not even our own script
    assert page.locator("img").count() == 0
    assert INJECTION in page.locator("article.mt .text").text_content()
    assert page.locator("h1").text_content().endswith("<script>window.__pwned = 3</script>")


def test_boilerplate_greyed_and_fluency_shading(page: Any, abc: DocumentReport, tmp_path: Path) -> None:
    body = [i for i, s in enumerate(abc.sentences) if s.kind is Kind.BODY]
    scores = {body[0]: 95.0, body[1]: 50.0, body[2]: 5.0}
    shaded = dataclasses.replace(abc, sentences=tuple(
        dataclasses.replace(s, fluency=scores.get(i)) for i, s in enumerate(abc.sentences)))
    _open(page, tmp_path / "fl.html", render_html(Report((shaded,))))

    def background(i: int) -> str:
        return page.evaluate("id => getComputedStyle(document.getElementById(id)).backgroundColor",
                             f"d0-m{i}")

    assert background(body[0]) == "rgba(0, 0, 0, 0)"  # fluent: no shading
    assert len({background(body[1]), background(body[2]), background(body[0])}) == 3
    assert background(body[3]) == "rgba(0, 0, 0, 0)"  # not scored
    s1 = abc.sentences[body[1]]
    assert s1.score is not None and s1.expected_penalty is not None
    assert page.get_attribute(f"#d0-m{body[1]}", "title") == (
        f"fluency 50.0; score {s1.score:.1f} (expected MQM penalty {s1.expected_penalty:.1f})")
    assert page.get_attribute(f"#d0-m{body[3]}", "title").startswith("fluency not scored; score ")
    boiler = [i for i, s in enumerate(abc.sentences) if s.kind is Kind.BOILERPLATE]
    assert boiler
    for i in boiler:
        el = page.locator(f"#d0-m{i}")
        assert el.text_content() == abc.mt[abc.sentences[i].start : abc.sentences[i].end]
        assert page.evaluate("el => getComputedStyle(el).color", el.element_handle()) \
            == "rgb(154, 154, 154)"
        assert "boilerplate" in el.get_attribute("title")


def test_unscored_fluency_is_said_in_the_legend(page: Any, abc: DocumentReport, tmp_path: Path) -> None:
    _open(page, tmp_path / "abc.html", render_html(Report((abc,))))
    assert "not scored" in page.locator(".legend").text_content()


def test_reference_side_by_side_with_linked_sentences(page: Any, abc: DocumentReport,
                                                      tmp_path: Path) -> None:
    report = _seed_reference(abc)
    assert report.reference is not None and len(report.reference.alignment) >= 8
    _open(page, tmp_path / "pair.html", render_html(Report((report,))))
    left = page.locator("article.mt").bounding_box()
    right = page.locator("article.ref").bounding_box()
    assert right["x"] >= left["x"] + left["width"] and abs(right["y"] - left["y"]) < 5
    hill = report.ref[0]
    own_text = "el => { const c = el.cloneNode(true); c.querySelectorAll('sup.al')" \
               ".forEach(x => x.remove()); return c.textContent; }"
    for j, s in enumerate(report.reference.sentences):
        # anchors to the mt side are appended to linked sentences; the text itself is intact
        assert page.locator(f"#d0-r{j}").evaluate(own_text) == hill[s.start : s.end]
    for i, s in enumerate(report.sentences):
        assert page.locator(f"#d0-m{i}").evaluate(own_text) == report.mt[s.start : s.end]
    link = next(a for a in report.reference.alignment if len(a.ref) == 2)
    page.hover(f"#d0-m{link.mt}")
    for j in link.ref:
        assert "hl" in page.get_attribute(f"#d0-r{j}", "class").split()
    assert "hl" in page.get_attribute(f"#d0-m{link.mt}", "class").split()
    page.mouse.move(0, 0)
    assert "hl" not in page.get_attribute(f"#d0-r{link.ref[0]}", "class").split()
    page.click(f'#d0-m{link.mt} sup.al a[href="#d0-r{link.ref[0]}"]')
    assert page.evaluate("location.hash") == f"#d0-r{link.ref[0]}"
    assert page.evaluate("document.querySelector(':target').id") == f"d0-r{link.ref[0]}"
    missed = page.locator("article.ref .missed").count()
    assert missed == len(report.reference.missed)


def test_batch_index_sorted_by_score_links_to_pages(page: Any, tmp_path: Path) -> None:
    records = tmp_path / "in.jsonl"
    paras = [p for p in ABC.read_text(encoding="utf-8").split("\n") if len(p) > 150][:8]
    records.write_text("\n".join(json.dumps({"id": f"p{i}", "mt": t}) for i, t in enumerate(paras))
                       + "\n{oops\n", encoding="utf-8")
    html_dir = tmp_path / "html"
    summary = run_batch([records], tmp_path / "r.jsonl", STRUCTURE, html_dir=html_dir)
    page.goto((html_dir / "index.html").as_uri())
    scores = [float(x) for x in page.locator("table.index td.score").all_text_contents()]
    assert len(scores) == len(paras) and scores == sorted(scores) and scores[0] < scores[-1]
    assert page.locator("table.errors tr").count() == 2
    expected = sorted((r for r in summary.rows if r.error is None), key=lambda r: (r.score, r.id))
    links = page.locator("table.index a").all()
    assert [a.text_content() for a in links] == [r.id for r in expected]
    for a in links:
        assert (html_dir / a.get_attribute("href")).exists()
    links[0].click()
    page.wait_for_load_state()
    assert page.locator("h1").text_content().endswith(expected[0].id or "")
    assert expected[0].score is not None and expected[0].score < 100.0
    distinct = page.evaluate("new Set([...document.querySelectorAll('mark[data-span]')]"
                             ".map(m => m.dataset.span)).size")
    assert distinct == sum(expected[0].spans) >= 1


def test_index_escapes_ids(tmp_path: Path) -> None:
    from mtqa.types import BatchRow

    page = render_index([BatchRow(origin="x:1", id="<script>x</script>", score=50.0, passed=False,
                                  page="00000-a b.html"),
                         BatchRow(origin="<b>o</b>", id=None, error="<i>bad</i>")])
    assert "<script>x" not in page and "<b>o" not in page and "<i>bad" not in page
    assert 'href="00000-a%20b.html"' in page


@pytest.mark.model
def test_real_fluency_scores_shade_sentences(page: Any, tmp_path: Path) -> None:
    settings = Settings(checkers=("structure", "fluency"))
    with Checker(settings) as checker:
        report = checker.check_many([Document(ABC.stem, ABC.read_text(encoding="utf-8"))]).documents[0]
    if any(s.checker == "fluency" for s in report.skipped):
        pytest.skip(f"fluency checker unavailable: {report.skipped}")
    _open(page, tmp_path / "lm.html", render_html(Report((report,))))
    for i, s in enumerate(report.sentences):
        got = page.get_attribute(f"#d0-m{i}", "data-fluency")
        assert (got is None) == (s.fluency is None)
        if s.fluency is not None:
            assert float(got) == pytest.approx(s.fluency, abs=0.01)


@pytest.mark.model
def test_real_reference_alignment_links_both_ways(page: Any, tmp_path: Path) -> None:
    settings = Settings(checkers=("structure", "reference"))
    doc = Document(ABC.stem, ABC.read_text(encoding="utf-8"), ref=(HILL.read_text(encoding="utf-8"),))
    with Checker(settings) as checker:
        report = checker.check_many([doc]).documents[0]
    if report.reference is None:
        pytest.skip(f"reference checker unavailable: {report.skipped}")
    assert report.reference.alignment
    _open(page, tmp_path / "pair.html", render_html(Report((report,))))
    for link in report.reference.alignment:
        mt_id = f"d0-m{link.mt}"
        assert set(page.get_attribute(f"#{mt_id}", "data-links").split()) >= \
            {f"d0-r{j}" for j in link.ref}
        for j in link.ref:
            assert mt_id in page.get_attribute(f"#d0-r{j}", "data-links").split()
    first = report.reference.alignment[0]
    page.hover(f"#d0-r{first.ref[0]}")
    assert "hl" in page.get_attribute(f"#d0-m{first.mt}", "class").split()
