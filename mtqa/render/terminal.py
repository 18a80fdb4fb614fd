"""Human-readable terminal output: verdict, reasons, and every span highlighted in its context."""

from __future__ import annotations

import io
from collections import Counter

from rich.console import Console
from rich.markup import escape
from rich.text import Text

from mtqa.types import DocumentReport, Kind, Report, Severity

__all__ = ["render_terminal"]

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
    text.append(d.mt[left:start].replace("\n", " "))
    text.append(d.mt[start:end].replace("\n", " "), style=_STYLE[severity])
    text.append(d.mt[end:right].replace("\n", " "))
    if right < len(d.mt):
        text.append("…", style="dim")
    return text


def _document(console: Console, d: DocumentReport) -> None:
    verdict = "[bold green]PASS[/]" if d.verdict.passed else "[bold red]FAIL[/]"
    fluency = "—" if d.fluency is None else f"{d.fluency:.1f}"
    console.print(f"[bold]{escape(d.id)}[/]  score [bold]{d.score:.1f}[/]/100  "
                  f"fluency {fluency}  {verdict} [dim](policy {escape(d.verdict.policy)})[/]")
    for reason in d.verdict.reasons:
        console.print(f"  [red]✗[/] {escape(reason.rule)}: {escape(reason.message)}")
    for skip in d.skipped:
        console.print(f"  [yellow]skipped[/] {escape(skip.checker)}: {escape(skip.reason)}")
    body = sum(1 for s in d.sentences if s.kind is Kind.BODY)
    boiler = Counter(s.why or "boilerplate" for s in d.sentences if s.kind is Kind.BOILERPLATE)
    if boiler:
        what = ", ".join(f"{n} {escape(k)}" for k, n in sorted(boiler.items()))
        console.print(f"  {body} body sentences; boilerplate left out of scores: {what}")
    ref = d.reference
    if ref is not None:
        metrics = "  ".join(f"{escape(m.name)} {m.score:.1f}" for m in ref.metrics)
        cov = ("" if ref.mt_coverage is None else
               f"  coverage mt {ref.mt_coverage:.0%} / ref {(ref.ref_coverage or 0):.0%}")
        console.print(f"  reference ({escape(ref.mode)}): {metrics}{cov}")
    by_severity = Counter(s.severity.value for s in d.spans)
    counts = ", ".join(f"{by_severity[k.value]} {k.value}" for k in Severity if by_severity[k.value])
    console.print(f"  {len(d.spans)} span(s){': ' + counts if counts else ''}")
    for span in d.spans:
        head = Text("  ")
        head.append(f"{span.severity.value:8s}", style=_STYLE[span.severity])
        head.append(f" {span.category}/{span.rule or '-'} [{span.checker}] ", style="bold")
        head.append(f"{span.start}-{span.end} ", style="dim")
        head.append(span.message)
        console.print(head)
        console.print(_context(d, span.start, span.end, span.severity))


def render_terminal(report: Report, *, color: bool = True, width: int = 100) -> str:
    """The report as text for a terminal (ANSI colours when ``color``)."""
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=color, no_color=not color, width=width,
                      highlight=False, soft_wrap=True)
    for i, d in enumerate(report.documents):
        if i:
            console.print()
        _document(console, d)
    return buf.getvalue()
