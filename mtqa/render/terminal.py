"""Human-readable terminal output: verdict, reasons, and every span highlighted in its context.

``render_gate`` shows only the publish decision (every reason with its measured value, threshold
and spans); ``render_batch_summary`` is the table ``mtqa batch`` prints at the end of a run.

Every piece of user text (ids, article text, messages, paths) goes through ``safe_text`` first:
control characters other than newline and tab are shown as ``\\xNN`` escapes, so that an ESC or OSC
sequence in a scraped article cannot drive the terminal (retitle it, fake output, hide lines).
"""

from __future__ import annotations

import io
import re
import statistics
from collections import Counter
from collections.abc import Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from mtqa.render import hidden_spans
from mtqa.types import BadRecord, BatchSummary, DocumentReport, Kind, Reason, Report, Severity

__all__ = ["SCORE_BANDS", "render_batch_summary", "render_gate", "render_terminal", "safe_text"]

#: C0 controls but newline and tab, DEL, C1 controls
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def safe_text(text: str) -> str:
    """``text`` with every control character but newline and tab written as ``\\xNN``.

    For anything that echoes user text to a terminal (the CLI's ``error:`` lines too).
    """
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _esc(text: str) -> str:
    """User text for Rich markup: control characters escaped, then markup escaped."""
    return escape(safe_text(text))

#: score bands of the batch summary's distribution, as ``(low, high, label)``
SCORE_BANDS: tuple[tuple[float, float, str], ...] = (
    (90.0, 100.01, "90-100"), (70.0, 90.0, "70-90"), (50.0, 70.0, "50-70"), (0.0, 50.0, "0-50"))

_STYLE = {
    Severity.MINOR: "black on yellow",
    Severity.MAJOR: "bold white on red",
    Severity.CRITICAL: "bold white on magenta",
}
_CONTEXT = 50


def _context(d: DocumentReport, start: int, end: int, severity: Severity) -> Text:
    """The span highlighted inside the text around it (one line, newlines shown as spaces)."""
    left = max(0, start - _CONTEXT)
    right = min(len(d.mt), end + _CONTEXT)
    text = Text("    …" if left else "    ", style="dim")
    text.append(safe_text(d.mt[left:start].replace("\n", " ")))
    text.append(safe_text(d.mt[start:end].replace("\n", " ")), style=_STYLE[severity])
    text.append(safe_text(d.mt[end:right].replace("\n", " ")))
    if right < len(d.mt):
        text.append("…", style="dim")
    return text


def _value(v: float | str) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _reason(console: Console, d: DocumentReport, r: Reason) -> None:
    """A reason: rule, message, measured value against threshold, then the spans involved."""
    mark = "[red]✗[/]" if r.blocking else "[yellow]![/]"
    console.print(f"  {mark} {_esc(r.rule)}: {_esc(r.message)} "
                  f"[dim](measured {_esc(_value(r.value))}, threshold "
                  f"{_esc(_value(r.threshold))})[/]")
    for i in r.spans:
        if i >= len(d.spans):
            continue
        s = d.spans[i]
        line = Text(f"      #{i} ")
        line.append(safe_text(s.text.replace("\n", " ")), style=_STYLE[s.severity])
        line.append(safe_text(f" {s.severity.value} {s.category}/{s.rule or '-'}: {s.message}"),
                    style="dim")
        console.print(line)


def _document(console: Console, d: DocumentReport, min_confidence: float = 0.0) -> None:
    verdict = "[bold green]PASS[/]" if d.verdict.passed else "[bold red]FAIL[/]"
    fluency = "—" if d.fluency is None else f"{d.fluency:.1f}"
    expected = d.features.get("calibrated.expected_penalty")
    meaning = ("" if expected is None else
               f" [dim](expected MQM penalty {expected:.1f} per sentence)[/]")
    console.print(f"[bold]{_esc(d.id)}[/]  score [bold]{d.score:.1f}[/]/100{meaning}  "
                  f"fluency {fluency}  {verdict} [dim](policy {_esc(d.verdict.policy)})[/]")
    for reason in d.verdict.reasons:
        console.print(f"  [red]✗[/] {_esc(reason.rule)}: {_esc(reason.message)}")
    for skip in d.skipped:
        console.print(f"  [yellow]skipped[/] {_esc(skip.checker)}: {_esc(skip.reason)}")
    body = sum(1 for s in d.sentences if s.kind is Kind.BODY)
    boiler = Counter(s.why or "boilerplate" for s in d.sentences if s.kind is Kind.BOILERPLATE)
    if boiler:
        what = ", ".join(f"{n} {_esc(k)}" for k, n in sorted(boiler.items()))
        console.print(f"  {body} body sentences; boilerplate left out of scores: {what}")
    ref = d.reference
    if ref is not None:
        metrics = "  ".join(f"{_esc(m.name)} {m.score:.1f}" for m in ref.metrics)
        cov = ("" if ref.mt_coverage is None else
               f"  coverage mt {ref.mt_coverage:.0%} / ref {(ref.ref_coverage or 0):.0%}")
        console.print(f"  reference ({_esc(ref.mode)}): {metrics}{cov}")
    hidden = hidden_spans(d, min_confidence)
    shown = [s for i, s in enumerate(d.spans) if i not in hidden]
    by_severity = Counter(s.severity.value for s in shown)
    counts = ", ".join(f"{by_severity[k.value]} {k.value}" for k in Severity if by_severity[k.value])
    more = (f" [dim]({len(hidden)} more under confidence {min_confidence:g} hidden; "
            "--min-confidence 0 shows them)[/]" if hidden else "")
    console.print(f"  {len(shown)} span(s){': ' + counts if counts else ''}{more}")
    for span in shown:
        head = Text("  ")
        head.append(f"{span.severity.value:8s}", style=_STYLE[span.severity])
        head.append(safe_text(f" {span.category}/{span.rule or '-'} [{span.checker}] "), style="bold")
        head.append(f"{span.start}-{span.end} ", style="dim")
        head.append(safe_text(span.message))
        console.print(head)
        console.print(_context(d, span.start, span.end, span.severity))


def render_terminal(report: Report, *, color: bool = True, width: int = 100,
                    min_confidence: float = 0.0) -> str:
    """The report as text for a terminal (ANSI colours when ``color``); spans under
    ``min_confidence`` are counted but not listed, unless a gate reason names them."""
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=color, no_color=not color, width=width,
                      highlight=False, soft_wrap=True)
    for i, d in enumerate(report.documents):
        if i:
            console.print()
        _document(console, d, min_confidence)
    return buf.getvalue()


def render_gate(report: Report, errors: Sequence[BadRecord] = (), *, failed_only: bool = False,
                color: bool = True, width: int = 100) -> str:
    """The publish decision for each document, with every reason, then the counts."""
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=color, no_color=not color, width=width,
                      highlight=False, soft_wrap=True)
    for d in report.documents:
        if failed_only and d.verdict.passed:
            continue
        verdict = "[bold green]PASS[/]" if d.verdict.passed else "[bold red]FAIL[/]"
        fluency = "—" if d.fluency is None else f"{d.fluency:.1f}"
        console.print(f"{verdict} [bold]{_esc(d.id)}[/]  score {d.score:.1f}  fluency {fluency}  "
                      f"[dim]policy {_esc(d.verdict.policy)}[/]")
        for r in d.verdict.reasons:
            _reason(console, d, r)
    for b in errors:
        console.print(f"[bold red]ERROR[/] {_esc(b.message)}")
    passed = sum(1 for d in report.documents if d.verdict.passed)
    failed = len(report.documents) - passed
    console.print(f"{len(report.documents)} document(s): {passed} passed, {failed} failed; "
                  f"{len(errors)} error(s)")
    return buf.getvalue()


def render_batch_summary(summary: BatchSummary, *, color: bool = True, width: int = 100) -> str:
    """The end-of-run table: counts, score distribution, errors and outputs."""
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=color, no_color=not color, width=width,
                      highlight=False, soft_wrap=True)
    rows = summary.rows
    scores = [r.score for r in rows if r.score is not None]
    counts = Table(title="mtqa batch", show_header=False, title_justify="left")
    counts.add_column("what")
    counts.add_column("n", justify="right")
    rate = 60.0 * summary.scored / summary.seconds if summary.seconds > 0 else 0.0
    for label, n in (("inputs", len(rows)), ("checked in this run", summary.scored),
                     ("reused from the store", summary.reused), ("[green]passed[/]", summary.passed),
                     ("[red]failed the gate[/]", summary.failed),
                     ("[red]input errors[/]", len(summary.errors))):
        counts.add_row(label, str(n))
    counts.add_row("time", f"{summary.seconds:.1f}s ({rate:.0f} documents/min checked)")
    console.print(counts)
    if scores:
        dist = Table(title=f"scores (policy {_esc(summary.policy)})", title_justify="left")
        dist.add_column("score")
        dist.add_column("documents", justify="right")
        dist.add_column("")
        top = max(1, max(sum(1 for x in scores if lo <= x < hi) for lo, hi, _ in SCORE_BANDS))
        for lo, hi, label in SCORE_BANDS:
            n = sum(1 for x in scores if lo <= x < hi)
            dist.add_row(label, str(n), "█" * round(20 * n / top))
        console.print(dist)
        console.print(f"min {min(scores):.1f}  median {statistics.median(scores):.1f}  "
                      f"mean {statistics.fmean(scores):.1f}  max {max(scores):.1f}")
    errors = summary.errors
    for r in errors[:10]:
        console.print(f"[red]error[/] {_esc(r.error or '')}")
    if len(errors) > 10:
        console.print(f"[red]... and {len(errors) - 10} more error(s)[/] (see the outputs)")
    for path in summary.outputs:
        console.print(f"wrote {_esc(path)}")
    return buf.getvalue()
