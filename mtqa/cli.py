"""The ``mtqa`` command line. Thin: parse, build Settings, delegate, render, map errors to exit codes.

Exit codes: 0 every document passed (or no gate), 1 a document failed the gate,
2 usage or input error (the other records of a batch are still checked and reported).
An input error wins over a gate failure. 130: ``batch`` was interrupted (it resumes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Optional

import typer

from mtqa import __version__
from mtqa.batch import CHUNK_SIZE
from mtqa.config import Settings, load_settings
from mtqa.errors import ConfigError, InputError, MtqaError
from mtqa.render import MIN_CONFIDENCE
from mtqa.types import BadRecord, Document, DocumentReport, Report

__all__ = ["app", "main"]

EXIT_OK, EXIT_GATE_FAILED, EXIT_INPUT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130
_DEFAULTS = Settings()

app = typer.Typer(
    name="mtqa",
    help="Machine-translation quality checks for English news text.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class Split(str, enum.Enum):
    """Which documents ``evaluate`` scores."""

    all = "all"
    train = "train"
    held_out = "held-out"


class Format(str, enum.Enum):
    """Output formats of ``check``."""

    text = "text"
    json = "json"
    html = "html"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mtqa {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More logging.")] = 0,
    version: Annotated[Optional[bool], typer.Option(  # noqa: UP007 - typer needs Optional
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")] = None,
) -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


# Options shared by the commands that check documents.
ChecksOpt = Annotated[Optional[str], typer.Option(  # noqa: UP007 - typer needs Optional
    "--checkers", help="Comma-separated checkers to run (default: all of "
    f"{','.join(_DEFAULTS.checkers)}).")]
NoLmOpt = Annotated[bool, typer.Option("--no-lm", help="Skip the language-model checker.")]
LmModelOpt = Annotated[Optional[str], typer.Option(  # noqa: UP007
    help="Causal LM: Hugging Face id or local directory.")]
BatchSizeOpt = Annotated[
    int, typer.Option(help="LM batch size: windows per forward pass (at most 2,048 tokens).")
]
ThreadsOpt = Annotated[Optional[int], typer.Option(help="CPU threads for the LM.")]  # noqa: UP007
DeviceOpt = Annotated[str, typer.Option(help="cpu or cuda.")]
RefModeOpt = Annotated[str, typer.Option(help="auto, parallel or comparable.")]
LtUrlOpt = Annotated[Optional[str], typer.Option(  # noqa: UP007
    help="LanguageTool server URL for grammar checks.")]
PolicyOpt = Annotated[Optional[Path], typer.Option(  # noqa: UP007
    help="Gate policy TOML (default: the shipped policy).", exists=True, dir_okay=False)]
GateOpt = Annotated[bool, typer.Option(
    "--gate/--no-gate", help="Exit 1 when a document fails the policy.")]
CalibrationOpt = Annotated[Optional[Path], typer.Option(  # noqa: UP007
    help="Calibration file (default: the one shipped; env MTQA_CALIBRATION).",
    exists=True, dir_okay=False)]
ConfigOpt = Annotated[Optional[Path], typer.Option(  # noqa: UP007
    help="Settings TOML file (\\[mtqa] table).", exists=True, dir_okay=False)]


def _settings(config: Path | None, checkers: str | None = None, no_lm: bool = False,
              policy: Path | None = None, calibration: Path | None = None,
              **overrides: object) -> Settings:
    if calibration is not None:
        overrides["calibration"] = str(calibration)
    if checkers is not None:
        overrides["checkers"] = [c.strip() for c in checkers.split(",") if c.strip()]
    settings = load_settings(config_file=config,
                             overrides={**overrides, "policy": str(policy) if policy else None})
    return settings.without("fluency") if no_lm else settings


def _load_documents(mt: Path, refs: list[Path], max_bytes: int) -> tuple[list[Document], list[BadRecord]]:
    from mtqa.io import load, read_text

    ref_texts = tuple(read_text(r, max_bytes=max_bytes) for r in refs)
    docs: list[Document] = []
    bad: list[BadRecord] = []
    for item in load(mt, ref=ref_texts, max_bytes=max_bytes):
        (bad if isinstance(item, BadRecord) else docs).append(item)  # type: ignore[arg-type]
    return docs, bad


def _emit(text: str, out: Path | None) -> None:
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")
        typer.echo(f"wrote {out}", err=True)


def _render(report: Report, fmt: Format, out: Path | None, min_confidence: float = 0.0) -> str:
    if fmt is Format.json:
        from mtqa.render.json import render_json

        return render_json(report)
    if fmt is Format.html:
        from mtqa.render.html import render_html

        return render_html(report, min_confidence=min_confidence)
    from mtqa.render.terminal import render_terminal

    return render_terminal(report, color=out is None and sys.stdout.isatty(),
                           min_confidence=min_confidence)


def _exit_code(errors: int, failed: int, gate: bool) -> int:
    """Input errors win over gate failures: 2, then 1, then 0."""
    if errors:
        return EXIT_INPUT_ERROR
    return EXIT_GATE_FAILED if gate and failed else EXIT_OK


@app.command()
def check(
    mt: Annotated[Path, typer.Argument(help="Text, HTML, JSONL or CSV file to check.",
                                       exists=True, dir_okay=False)],
    ref: Annotated[Optional[list[Path]], typer.Option(  # noqa: UP007
        "--ref", help="Reference text (parallel translation or comparable article); repeatable.",
        exists=True, dir_okay=False)] = None,
    fmt: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.text,
    out: Annotated[Optional[Path], typer.Option(  # noqa: UP007
        "--out", "-o", help="Write the report here instead of stdout.")] = None,
    checkers: ChecksOpt = None,
    no_lm: NoLmOpt = False,
    lm_model: LmModelOpt = None,
    batch_size: BatchSizeOpt = _DEFAULTS.batch_size,
    threads: ThreadsOpt = None,
    device: DeviceOpt = _DEFAULTS.device,
    ref_mode: RefModeOpt = _DEFAULTS.ref_mode,
    languagetool_url: LtUrlOpt = None,
    policy: PolicyOpt = None,
    gate: GateOpt = True,
    calibration: CalibrationOpt = None,
    config: ConfigOpt = None,
    min_confidence: Annotated[float, typer.Option(
        "--min-confidence", min=0.0, max=1.0,
        help="Hide spans under this confidence in text and HTML output (JSON keeps all).")
    ] = MIN_CONFIDENCE,
) -> None:
    """Check MT (optionally against --ref) and print a report with the bad spans highlighted."""
    try:
        settings = _settings(config, checkers, no_lm, policy, calibration, lm_model=lm_model,
                             batch_size=batch_size, threads=threads, device=device,
                             ref_mode=ref_mode, languagetool_url=languagetool_url)
        docs, bad = _load_documents(mt, list(ref or []), settings.max_bytes)
        for b in bad:
            typer.echo(f"error: {b.message}", err=True)
        from mtqa.pipeline import Checker

        with Checker(settings) as checker:
            report = checker.check_many(docs)
        _emit(_render(report, fmt, out, min_confidence), out)
    except MtqaError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_INPUT_ERROR) from exc
    failed = sum(1 for d in report.documents if not d.verdict.passed)
    raise typer.Exit(_exit_code(len(bad), failed, gate))


@contextlib.contextmanager
def _progress(show: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A rich progress bar on stderr (documents, rate, ETA), or nothing."""
    if not show:
        yield None
        return
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task,
                               TextColumn, TimeElapsedColumn, TimeRemainingColumn)
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task: Task) -> Text:
            return Text("" if task.speed is None else f"{60 * task.speed:,.0f} docs/min")

    columns = (TextColumn("checking"), BarColumn(), MofNCompleteColumn(), Rate(),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True)) as progress:
        task = progress.add_task("checking", total=None)
        yield lambda done, total: progress.update(task, completed=done, total=total)


@app.command()
def batch(
    inputs: Annotated[list[Path], typer.Argument(
        help="JSONL/CSV record files, text/HTML files, or directories of them "
             "(NAME.ref.txt beside NAME.txt is its reference).", exists=True)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Results JSONL (one line per input).")],
    store: Annotated[Optional[Path], typer.Option(  # noqa: UP007
        help="SQLite result store that makes runs resumable (default: OUT-stem.store.sqlite).",
        dir_okay=False)] = None,
    csv_out: Annotated[Optional[Path], typer.Option(  # noqa: UP007
        "--csv", help="Also write a CSV summary (one row per input).", dir_okay=False)] = None,
    html_dir: Annotated[Optional[Path], typer.Option(  # noqa: UP007
        "--html", help="Also write an HTML page per document and index.html here.",
        file_okay=False)] = None,
    ref_map: Annotated[Optional[Path], typer.Option(  # noqa: UP007
        help="JSON {id: ref path(s)} or CSV (id,ref) adding references by document id.",
        exists=True, dir_okay=False)] = None,
    chunk_size: Annotated[int, typer.Option(
        help="Documents checked and committed together.")] = CHUNK_SIZE,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar, no table.")] = False,
    checkers: ChecksOpt = None,
    no_lm: NoLmOpt = False,
    lm_model: LmModelOpt = None,
    batch_size: BatchSizeOpt = _DEFAULTS.batch_size,
    threads: ThreadsOpt = None,
    device: DeviceOpt = _DEFAULTS.device,
    ref_mode: RefModeOpt = _DEFAULTS.ref_mode,
    languagetool_url: LtUrlOpt = None,
    policy: PolicyOpt = None,
    gate: GateOpt = True,
    calibration: CalibrationOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Check many documents, resumably; write JSONL (and CSV, HTML) and print a summary."""
    from mtqa.batch import run_batch
    from mtqa.render.terminal import render_batch_summary

    try:
        settings = _settings(config, checkers, no_lm, policy, calibration, lm_model=lm_model,
                             batch_size=batch_size, threads=threads, device=device,
                             ref_mode=ref_mode, languagetool_url=languagetool_url)
        with _progress(not quiet and sys.stderr.isatty()) as on_progress:
            summary = run_batch(inputs, out, settings, store=store, csv_out=csv_out,
                                html_dir=html_dir, ref_map=ref_map, chunk_size=chunk_size,
                                on_progress=on_progress)
    except MtqaError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_INPUT_ERROR) from exc
    except KeyboardInterrupt:
        typer.echo("interrupted: every finished chunk is kept in the store; run the same command "
                   "again to continue", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if not quiet:
        typer.echo(render_batch_summary(summary, color=sys.stderr.isatty()), err=True, nl=False)
    raise typer.Exit(_exit_code(len(summary.errors), summary.failed, gate))


@app.command("gate")
def gate_command(
    results: Annotated[list[Path], typer.Argument(
        help="Results of 'mtqa batch' (JSONL) or 'mtqa check --format json'.",
        exists=True, dir_okay=False)],
    failed_only: Annotated[bool, typer.Option(
        "--failed-only", help="List only the documents that failed.")] = False,
) -> None:
    """Show the publish decision of checked documents, every reason explained; exit 0/1/2."""
    from mtqa.batch import read_results
    from mtqa.render.terminal import render_gate

    docs: list[DocumentReport] = []
    bad: list[BadRecord] = []
    try:
        for path in results:
            for item in read_results(path):
                (bad if isinstance(item, BadRecord) else docs).append(item)  # type: ignore[arg-type]
    except MtqaError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_INPUT_ERROR) from exc
    text = render_gate(Report(tuple(docs)), bad, failed_only=failed_only,
                       color=sys.stdout.isatty())
    typer.echo(text, nl=False)
    failed = sum(1 for d in docs if not d.verdict.passed)
    raise typer.Exit(_exit_code(len(bad), failed, True))


@app.command()
def evaluate(
    data: Annotated[Path, typer.Argument(help="MQM-annotated JSONL (format: mtqa.evaluate docs).",
                                         exists=True, dir_okay=False)],
    reference: Annotated[bool, typer.Option(
        "--reference/--no-reference", help="Give mtqa each line's reference.")] = False,
    limit: Annotated[Optional[int], typer.Option(help="Only the first N lines.")] = None,  # noqa: UP007
    include_human: Annotated[bool, typer.Option(
        help="Keep the human translations (systems ref-*) as candidates.")] = False,
    samples: Annotated[int, typer.Option(help="Bootstrap resamples for the 95% CIs.")] = 200,
    split: Annotated[Split, typer.Option(
        help="Lines of the calibration's training or held-out documents only (WMT21 zh-en "
             "MQM, whose documents the calibration file names), or all.")] = Split.all,
    fmt: Annotated[Format, typer.Option("--format", "-f", help="text or json.")] = Format.text,
    out: Annotated[Optional[Path], typer.Option("--out", "-o")] = None,  # noqa: UP007
    checkers: ChecksOpt = None,
    no_lm: NoLmOpt = False,
    lm_model: LmModelOpt = None,
    batch_size: BatchSizeOpt = _DEFAULTS.batch_size,
    threads: ThreadsOpt = None,
    calibration: CalibrationOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Correlate mtqa with MQM human judgments, beside sacreBLEU and length baselines."""
    import json
    import time

    from mtqa import evaluate as ev

    if fmt is Format.html:
        typer.echo("error: evaluate writes --format text or json", err=True)
        raise typer.Exit(EXIT_INPUT_ERROR)
    try:
        settings = _settings(config, checkers, no_lm, None, calibration, lm_model=lm_model,
                             batch_size=batch_size, threads=threads)
        if not reference:
            settings = settings.without("reference")
        records = [r for r in ev.load_mqm(data, limit=limit)
                   if include_human or not r.system.startswith("ref-")]
        if split is not Split.all:
            from mtqa.calibrate import load_calibration

            calib = load_calibration(None if settings.calibration is None
                                     else Path(settings.calibration))
            held = calib.provenance.get("held_out_docs")
            if not isinstance(held, list) or not held:
                raise ConfigError(f"{calib.path}: names no held-out documents; use --split all")
            records = ev.split_records(records, [str(d) for d in held], split.value)
            if not records:
                raise InputError(f"{data}: no line belongs to the calibration's {split.value} "
                                 f"documents (it was fitted on {calib.provenance.get('data')})")
        t0 = time.perf_counter()
        with _progress(sys.stderr.isatty()) as on_progress:
            done = [0]

            def tick(n: int) -> None:
                done[0] += n
                if on_progress is not None:
                    on_progress(done[0], len(records))

            reports, _ = ev.score_records(records, settings, with_reference=reference,
                                          progress=tick)
        result = ev.evaluate_reports(records, reports, data=str(data), with_reference=reference,
                                     seconds=time.perf_counter() - t0, samples=samples)
        result = dataclasses.replace(result, split=split.value)
    except MtqaError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_INPUT_ERROR) from exc
    text = (json.dumps(ev.evaluation_to_dict(result), ensure_ascii=False, sort_keys=True, indent=2)
            + "\n" if fmt is Format.json else ev.render_evaluation(result))
    _emit(text, out)


def main() -> None:
    """Console-script entry point."""
    app()
