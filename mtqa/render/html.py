"""Self-contained HTML reports: one file each, inline CSS, a few lines of inline JS, no assets.

A document page shows the verdict and every reason at the top, the skipped checkers, then the
article with each span in a ``<mark>`` (classes ``sev-<severity>`` and ``cat-<category>``, a
tooltip with message, checker and confidence), sentences shaded by fluency and boilerplate greyed.
With a reference, the two articles stand side by side and aligned sentences link to each other
(anchors, and hovering one highlights its counterparts). ``render_index`` is a batch's index page.

Every piece of user text goes through ``html.escape``; the page's Content-Security-Policy allows
only its own inline style and script (by hash), so nothing else could run even if it got in.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
from collections.abc import Sequence
from urllib.parse import quote

from mtqa.render import hidden_spans
from mtqa.types import (
    BatchRow,
    DocumentReport,
    Kind,
    Reason,
    ReferenceResult,
    Report,
    Severity,
    Span,
)

__all__ = ["FLUENCY_BANDS", "render_html", "render_index"]

#: lower bounds of the fluency shading bands, best first: band i is ``fl-i``
FLUENCY_BANDS: tuple[float, ...] = (80.0, 60.0, 40.0, 20.0, 0.0)

_CSS = """
:root { --minor: #f6d743; --major: #f08a5d; --critical: #c0392b; --fg: #1d1d1f; --muted: #7a7a7a; }
* { box-sizing: border-box; }
body { font: 15px/1.55 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg);
       margin: 0 auto; max-width: 1400px; padding: 1rem 1.5rem 3rem; }
h1 { font-size: 1.35rem; margin: .2rem 0; word-break: break-word; }
h2 { font-size: 1rem; margin: .4rem 0; color: var(--muted); text-transform: uppercase; }
.doc { border-top: 3px solid #ddd; padding-top: .8rem; margin-top: 1.2rem; }
.verdict { padding: .6rem .9rem; border-radius: 6px; margin-bottom: .8rem; }
.verdict.pass { background: #eaf7ee; border: 1px solid #9bd3ad; }
.verdict.fail { background: #fdecea; border: 1px solid #e8a39b; }
.badge { display: inline-block; font-weight: 700; padding: 0 .5rem; border-radius: 4px;
         color: #fff; margin-right: .5rem; }
.pass .badge, .badge.pass { background: #2e8b57; }
.fail .badge, .badge.fail { background: #c0392b; }
.figures span { margin-right: 1.2rem; }
table { border-collapse: collapse; margin: .4rem 0; font-size: .9rem; }
th, td { text-align: left; padding: .2rem .6rem; border-bottom: 1px solid #e3e3e3; vertical-align: top; }
th { background: #f5f5f5; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.skipped li, .meta li { color: #555; }
.legend { font-size: .85rem; color: #555; margin: .4rem 0; }
.legend mark, .legend .sent { padding: 0 .3rem; }
.cols { display: grid; gap: 1.5rem; grid-template-columns: 1fr; }
.cols.two { grid-template-columns: 1fr 1fr; }
.text { white-space: pre-wrap; overflow-wrap: anywhere; }
.sent { border-radius: 3px; }
.sent:target, .sent.hl { outline: 2px solid #3b7dd8; background: #e3eefc; }
.fl-1 { background: #fdf3d0; } .fl-2 { background: #fbe0b8; }
.fl-3 { background: #f8c9b3; } .fl-4 { background: #f3a6a0; }
.boilerplate { color: #9a9a9a; }
.boilerplate mark { opacity: .6; }
.unsupported, .missed { text-decoration: underline dotted #888; text-underline-offset: 5px; }
sup.al { font-size: .65rem; margin-left: .1rem; }
sup.al a { color: #3b7dd8; text-decoration: none; }
mark { position: relative; border-radius: 2px; padding: 0 1px; color: inherit; }
mark.sev-minor { background: var(--minor); }
mark.sev-major { background: var(--major); }
mark.sev-critical { background: var(--critical); color: #fff; }
mark.cat-reference-mismatch { background: none; border-bottom: 2px dashed #3b7dd8; }
mark[data-tip]:hover::after { content: attr(data-tip); position: absolute; left: 0; top: 1.6em;
  z-index: 10; width: max-content; max-width: 28rem; white-space: pre-wrap; background: #222;
  color: #fff; font-size: .8rem; line-height: 1.35; padding: .35rem .5rem; border-radius: 4px;
  box-shadow: 0 2px 8px rgba(0,0,0,.3); }
mark:target { outline: 2px solid #3b7dd8; }
.spanlist td.text { font-family: ui-monospace, monospace; }
a { color: #2060b0; }
""".strip()

# NOTE: the only script: hovering a sentence highlights the sentences it is aligned with. It reads
# element ids from data-links attributes and never touches text.
_JS = """
document.querySelectorAll('[data-links]').forEach(function (el) {
  function set(on) {
    el.classList.toggle('hl', on);
    el.getAttribute('data-links').split(' ').forEach(function (id) {
      var other = document.getElementById(id);
      if (other) { other.classList.toggle('hl', on); }
    });
  }
  el.addEventListener('mouseenter', function () { set(true); });
  el.addEventListener('mouseleave', function () { set(false); });
});
""".strip()


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode() + "'"


_CSP = (f"default-src 'none'; style-src {_csp_hash(_CSS)}; script-src {_csp_hash(_JS)}; "
        "img-src data:; base-uri 'none'; form-action 'none'")


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def _num(value: float | str | None, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _band(fluency: float | None) -> str:
    if fluency is None:
        return "fl-na"
    for i, low in enumerate(FLUENCY_BANDS):
        if fluency >= low:
            return f"fl-{i}"
    return f"fl-{len(FLUENCY_BANDS) - 1}"


def _tip(s: Span) -> str:
    rule = f"/{s.rule}" if s.rule else ""
    return (f"{s.severity.value} · {s.category}{rule}\n{s.message}\n"
            f"checker: {s.checker} · confidence {s.confidence:.2f}")


def _page(title: str, body: str, *, script: bool) -> str:
    js = f"\n<script>{_JS}</script>" if script else ""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{_CSP}\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"{body}{js}\n</body>\n</html>\n"
    )


def _text(
    text: str,
    sentences: Sequence[tuple[int, int, str, str]],
    spans: Sequence[Span],
    prefix: str,
    hidden: frozenset[int] = frozenset(),
) -> str:
    """``text`` with sentences as ``<span>`` and spans as ``<mark>`` (split at sentence edges).

    ``sentences`` holds ``(start, end, opening tag, closing extra)`` for each sentence, in order.
    """
    cuts = {0, len(text)}
    for start, end, _, _ in sentences:
        cuts.update((start, end))
    for i, s in enumerate(spans):
        if i not in hidden:
            cuts.update((s.start, s.end))
    points = sorted(c for c in cuts if 0 <= c <= len(text))
    # the most severe span wins where (hand-made) spans overlap; merged spans never do
    order = sorted((i for i in range(len(spans)) if i not in hidden),
                   key=lambda i: -spans[i].severity.rank)
    out: list[str] = []
    open_sent: int | None = None
    open_mark: int | None = None
    marked: set[int] = set()
    si = 0
    for a, b in zip(points, points[1:]):
        while si < len(sentences) and sentences[si][1] <= a:
            si += 1
        sent = si if si < len(sentences) and sentences[si][0] <= a < sentences[si][1] else None
        mark = next((i for i in order if spans[i].start <= a < spans[i].end), None)
        if open_mark is not None and (mark != open_mark or sent != open_sent):
            out.append("</mark>")
            open_mark = None
        if sent != open_sent:
            if open_sent is not None:
                out.append(sentences[open_sent][3] + "</span>")
            if sent is not None:
                out.append(sentences[sent][2])
            open_sent = sent
        if mark is not None and open_mark is None:
            s = spans[mark]
            anchor = "" if mark in marked else f' id="{prefix}-s{mark}"'
            marked.add(mark)
            out.append(f'<mark{anchor} class="sev-{s.severity.value} cat-{_slug(s.category)}" '
                       f'data-span="{prefix}-s{mark}" data-tip="{_e(_tip(s))}">')
            open_mark = mark
        out.append(_e(text[a:b]))
    if open_mark is not None:
        out.append("</mark>")
    if open_sent is not None:
        out.append(sentences[open_sent][3] + "</span>")
    return "".join(out)


def _links(ref: ReferenceResult | None) -> tuple[dict[int, tuple[int, ...]], dict[int, list[int]]]:
    """Aligned sentences: mt index → ref indices, and ref index → mt indices."""
    mt_to_ref: dict[int, tuple[int, ...]] = {}
    ref_to_mt: dict[int, list[int]] = {}
    if ref is not None:
        for link in ref.alignment:
            mt_to_ref[link.mt] = tuple(dict.fromkeys(mt_to_ref.get(link.mt, ()) + link.ref))
            for j in link.ref:
                ref_to_mt.setdefault(j, []).append(link.mt)
    return mt_to_ref, ref_to_mt


def _anchors(prefix: str, side: str, indices: Sequence[int]) -> str:
    if not indices:
        return ""
    links = " ".join(f'<a href="#{prefix}-{side}{j}">{side}{j}</a>' for j in indices)
    return f'<sup class="al">{links}</sup>'


def _mt_sentences(d: DocumentReport, prefix: str, linked: dict[int, tuple[int, ...]],
                  unsupported: set[int]) -> list[tuple[int, int, str, str]]:
    out = []
    for i, s in enumerate(d.sentences):
        classes = ["sent", s.kind.value]
        if s.kind is Kind.BOILERPLATE:
            title = f"boilerplate: {s.why or 'page furniture'} (left out of every score)"
        else:
            classes.append(_band(s.fluency))
            title = ("fluency not scored" if s.fluency is None else f"fluency {s.fluency:.1f}")
            if s.score is not None and s.expected_penalty is not None:
                title += (f"; score {s.score:.1f} (expected MQM penalty "
                          f"{s.expected_penalty:.1f})")
        if i in unsupported:
            classes.append("unsupported")
            title += "; no counterpart in the reference"
        refs = linked.get(i, ())
        attrs = f' data-links="{" ".join(f"{prefix}-r{j}" for j in refs)}"' if refs else ""
        fl = "" if s.fluency is None else f' data-fluency="{s.fluency:.2f}"'
        out.append((s.start, s.end,
                    f'<span class="{" ".join(classes)}" id="{prefix}-m{i}" data-i="{i}"{fl}'
                    f'{attrs} title="{_e(title)}">',
                    _anchors(prefix, "r", refs)))
    return out


def _ref_sentences(r: ReferenceResult, prefix: str,
                   linked: dict[int, list[int]]) -> list[tuple[int, int, str, str]]:
    out = []
    missed = set(r.missed)
    for j, s in enumerate(r.sentences):
        classes = ["sent", s.kind.value] + (["missed"] if j in missed else [])
        mts = linked.get(j, [])
        attrs = f' data-links="{" ".join(f"{prefix}-m{i}" for i in mts)}"' if mts else ""
        title = "not covered by the translation" if j in missed else f"reference sentence {j}"
        out.append((s.start, s.end,
                    f'<span class="{" ".join(classes)}" id="{prefix}-r{j}"{attrs} '
                    f'title="{_e(title)}">', _anchors(prefix, "m", mts)))
    return out


def _reason_row(r: Reason, d: DocumentReport, prefix: str) -> str:
    spans = ", ".join(
        f'<a href="#{prefix}-s{i}">#{i} “{_e(d.spans[i].text)}”</a>' if i < len(d.spans) else f"#{i}"
        for i in r.spans)
    kind = "" if r.blocking else " (warning)"
    return (f"<tr><td><code>{_e(r.rule)}</code>{kind}</td><td class=\"num\">{_e(_num(r.value, 2))}"
            f"</td><td class=\"num\">{_e(_num(r.threshold, 2))}</td><td>{_e(r.message)}</td>"
            f"<td>{spans or '—'}</td></tr>")


def _header(d: DocumentReport, prefix: str, hidden: frozenset[int] = frozenset()) -> str:
    v = d.verdict
    state = "pass" if v.passed else "fail"
    penalty = d.features.get("calibrated.expected_penalty")
    expected = ("" if penalty is None else
                f' <small>(expected MQM penalty {penalty:.1f} per sentence)</small>')
    parts = [f'<header class="verdict {state}">',
             f'<h1><span class="badge">{state.upper()}</span>{_e(d.id)}</h1>',
             '<p class="figures">'
             f'<span>score <b class="score">{d.score:.1f}</b>/100{expected}</span>'
             f'<span>fluency <b class="fluency">{_num(d.fluency)}</b></span>'
             f'<span>{len(d.spans) - len(hidden)} span(s)'
             f'{f" ({len(hidden)} hidden)" if hidden else ""}</span>'
             f'<span>policy <code>{_e(v.policy or "—")}</code></span></p>']
    title = d.meta.get("title")
    url = d.meta.get("url")
    meta = []
    if isinstance(title, str):
        meta.append(f"<li>title: {_e(title)}</li>")
    if isinstance(url, str):
        # NOTE: only http(s) links become clickable: a javascript: URL would run on click
        shown = (f'<a href="{_e(url)}" rel="noreferrer">{_e(url)}</a>'
                 if url.startswith(("http://", "https://")) else _e(url))
        meta.append(f"<li>url: {shown}</li>")
    if meta:
        parts.append(f'<ul class="meta">{"".join(meta)}</ul>')
    if v.reasons:
        rows = "".join(_reason_row(r, d, prefix) for r in v.reasons)
        parts.append('<table class="reasons"><tr><th>rule</th><th>measured</th><th>threshold</th>'
                     f"<th>why</th><th>spans involved</th></tr>{rows}</table>")
    if d.skipped:
        items = "".join(f"<li><b>{_e(s.checker)}</b>: {_e(s.reason)}</li>" for s in d.skipped)
        parts.append(f'<div class="skipped">Skipped checkers:<ul>{items}</ul></div>')
    r = d.reference
    if r is not None:
        metrics = ", ".join(f"{_e(m.name)} {m.score:.1f}" for m in r.metrics) or "no metrics"
        cov = "" if r.mt_coverage is None else (
            f"; coverage: {r.mt_coverage:.0%} of translation sentences supported, "
            f"{(r.ref_coverage or 0.0):.0%} of reference sentences covered")
        parts.append(f'<p class="refinfo">Reference ({_e(r.mode)}): {metrics}{cov}</p>')
    parts.append("</header>")
    return "".join(parts)


def _legend(d: DocumentReport) -> str:
    sev = " ".join(f'<mark class="sev-{s.value}">{s.value}</mark>' for s in Severity)
    scored = any(s.fluency is not None for s in d.sentences)
    fl = (" · sentence fluency: " + " ".join(
        f'<span class="sent fl-{i}">≥{low:g}</span>' for i, low in enumerate(FLUENCY_BANDS))
          if scored else " · sentence fluency: not scored (no language model ran)")
    ref = ""
    if d.reference is not None:
        ref = (' · <mark class="cat-reference-mismatch">differs from the reference</mark> · '
               '<span class="unsupported">no counterpart</span> · hover a sentence to see its '
               "counterparts")
    return (f'<p class="legend">spans: {sev}{fl} · '
            f'<span class="boilerplate">boilerplate (greyed, not scored)</span>{ref}</p>')


def _span_table(d: DocumentReport, prefix: str, hidden: frozenset[int] = frozenset(),
                min_confidence: float = 0.0) -> str:
    note = (f'<p class="hidden-spans">{len(hidden)} span(s) under confidence '
            f"{min_confidence:g} hidden (the JSON report keeps every span).</p>" if hidden else "")
    if len(d.spans) == len(hidden):
        return '<p class="nospans">No problems found.</p>' + note
    rows = "".join(
        f'<tr><td><a href="#{prefix}-s{i}">#{i}</a></td><td>{s.severity.value}</td>'
        f"<td>{_e(s.category)}{'/' + _e(s.rule) if s.rule else ''}</td><td>{_e(s.checker)}</td>"
        f'<td class="num">{s.confidence:.2f}</td><td class="text">{_e(s.text)}</td>'
        f"<td>{_e(s.message)}</td></tr>"
        for i, s in enumerate(d.spans) if i not in hidden)
    return note + ('<table class="spanlist"><tr><th>#</th><th>severity</th><th>category/rule</th>'
            '<th>checker</th><th>confidence</th><th>text</th><th>message</th></tr>'
            f"{rows}</table>")


def _document(d: DocumentReport, k: int, min_confidence: float = 0.0) -> str:
    prefix = f"d{k}"
    hidden = hidden_spans(d, min_confidence)
    r = d.reference
    mt_links, ref_links = _links(r)
    unsupported = set(r.unsupported) if r is not None else set()
    mt_html = _text(d.mt, _mt_sentences(d, prefix, mt_links, unsupported), d.spans, prefix,
                    hidden)
    columns = [f'<article class="mt"><h2>Translation</h2><div class="text">{mt_html}</div></article>']
    if r is not None and d.ref:
        ref_html = _text(d.ref[0], _ref_sentences(r, prefix, ref_links), (), prefix)
        columns.append(f'<article class="ref"><h2>Reference</h2><div class="text">{ref_html}</div>'
                       "</article>")
    elif d.ref:
        columns.append(f'<article class="ref"><h2>Reference</h2><div class="text">{_e(d.ref[0])}'
                       "</div></article>")
    layout = "two" if len(columns) == 2 else "one"
    return (f'<section class="doc" id="{prefix}">{_header(d, prefix, hidden)}{_legend(d)}'
            f'<div class="cols {layout}">{"".join(columns)}</div>'
            f"<h2>Spans</h2>{_span_table(d, prefix, hidden, min_confidence)}</section>")


def render_html(report: Report, *, min_confidence: float = 0.0) -> str:
    """The report as one self-contained HTML page (all documents, one section each); spans
    under ``min_confidence`` are not marked or listed (a note says how many), unless a gate
    reason names them."""
    docs = report.documents
    if len(docs) == 1:
        d = docs[0]
        title = f"mtqa: {d.id} — {'PASS' if d.verdict.passed else 'FAIL'} {d.score:.1f}"
    else:
        title = f"mtqa report: {len(docs)} documents"
    toc = ""
    if len(docs) > 1:
        items = "".join(f'<li><a href="#d{k}">{_e(d.id)}</a> {d.score:.1f} '
                        f"{'PASS' if d.verdict.passed else 'FAIL'}</li>" for k, d in enumerate(docs))
        toc = f'<nav><h1>{len(docs)} documents</h1><ol start="0">{items}</ol></nav>'
    body = toc + "".join(_document(d, k, min_confidence) for k, d in enumerate(docs))
    return _page(title, body, script=any(d.reference is not None for d in docs))


def render_index(rows: Sequence[BatchRow], *, title: str = "mtqa batch report") -> str:
    """A batch's index page: documents sorted by score (worst first), links to their pages."""
    docs = sorted((r for r in rows if r.error is None and r.score is not None),
                  key=lambda r: (r.score, r.id or ""))
    errors = [r for r in rows if r.error is not None]
    passed = sum(1 for r in docs if r.passed)
    body = [f"<h1>{_e(title)}</h1>",
            f'<p class="figures"><span>{len(rows)} input(s)</span><span class="n-passed">{passed} '
            f'passed</span><span class="n-failed">{len(docs) - passed} failed</span>'
            f'<span class="n-errors">{len(errors)} error(s)</span></p>']
    lines = []
    for r in docs:
        state = "pass" if r.passed else "fail"
        name = _e(r.id or r.origin)
        link = f'<a href="{_e(quote(r.page))}">{name}</a>' if r.page else name
        reasons = ", ".join(_e(x.rule) for x in r.reasons) or "—"
        lines.append(
            f'<tr class="{state}"><td>{link}</td><td class="num score">{_num(r.score)}</td>'
            f'<td class="num">{_num(r.fluency)}</td><td><span class="badge {state}">'
            f'{state.upper()}</span></td><td class="num">{r.spans[0]}</td>'
            f'<td class="num">{r.spans[1]}</td><td class="num">{r.spans[2]}</td><td>{reasons}</td></tr>')
    body.append('<table class="index"><tr><th>document</th><th>score</th><th>fluency</th>'
                '<th>verdict</th><th>minor</th><th>major</th><th>critical</th><th>reasons</th></tr>'
                f'{"".join(lines)}</table>')
    if errors:
        items = "".join(f"<tr><td>{_e(r.origin)}</td><td>{_e(r.error)}</td></tr>" for r in errors)
        body.append('<h2>Input errors</h2><table class="errors"><tr><th>where</th><th>error</th>'
                    f"</tr>{items}</table>")
    return _page(title, "\n".join(body), script=False)
