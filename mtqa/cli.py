"""The ``mtqa`` command line. Thin: parse, build Settings, delegate, render, map errors to exit codes.

Exit codes: 0 every document passed (or no gate), 1 a document failed the gate,
2 usage or input error (the other records of a batch are still checked and reported).
"""

from __future__ import annotations

import enum
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from mtqa import __version__
from mtqa.config import Settings, load_settings
from mtqa.errors import MtqaError
from mtqa.types import BadRecord, Document, Report

__all__ = ["app", "main"]

EXIT_OK, EXIT_GATE_FAILED, EXIT_INPUT_ERROR = 0, 1, 2
_DEFAULTS = Settings()

app = typer.Typer(
    name="mtqa",
    help="Machine-translation quality checks for English news text.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class Format(str, enum.Enum):
    """Output formats of ``check``."""

    text = "text"
    json = "json"


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


def _settings(config: Path | None, **overrides: object) -> Settings:
    settings = load_settings(config_file=config, overrides=overrides)
    return settings


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


def _render(report: Report, fmt: Format, out: Path | None) -> str:
    if fmt is Format.json:
        from mtqa.render.json import render_json

        return render_json(report)
    from mtqa.render.terminal import render_terminal

    return render_terminal(report, color=out is None and sys.stdout.isatty())


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
    no_lm: Annotated[bool, typer.Option("--no-lm", help="Skip the language-model checker.")] = False,
    lm_model: Annotated[Optional[str], typer.Option(  # noqa: UP007
        help="Causal LM: Hugging Face id or local directory.")] = None,
    batch_size: Annotated[int, typer.Option(help="LM batch size.")] = _DEFAULTS.batch_size,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for the LM.")] = None,  # noqa: UP007
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = _DEFAULTS.device,
    ref_mode: Annotated[str, typer.Option(help="auto, parallel or comparable.")] = _DEFAULTS.ref_mode,
    languagetool_url: Annotated[Optional[str], typer.Option(  # noqa: UP007
        help="LanguageTool server URL for grammar checks.")] = None,
    policy: Annotated[Optional[Path], typer.Option(  # noqa: UP007
        help="Gate policy TOML (default: the shipped policy).", exists=True, dir_okay=False)] = None,
    gate: Annotated[bool, typer.Option(
        "--gate/--no-gate", help="Exit 1 when a document fails the policy.")] = True,
    config: Annotated[Optional[Path], typer.Option(  # noqa: UP007
        help="Settings TOML file ([mtqa] table).", exists=True, dir_okay=False)] = None,
) -> None:
    """Check MT (optionally against --ref) and print a report with the bad spans highlighted."""
    try:
        settings = _settings(config, lm_model=lm_model, batch_size=batch_size, threads=threads,
                             device=device, ref_mode=ref_mode, languagetool_url=languagetool_url,
                             policy=str(policy) if policy else None)
        if no_lm:
            settings = settings.without("fluency")
        docs, bad = _load_documents(mt, list(ref or []), settings.max_bytes)
        for b in bad:
            typer.echo(f"error: {b.message}", err=True)
        from mtqa.pipeline import Checker

        with Checker(settings) as checker:
            report = checker.check_many(docs)
        _emit(_render(report, fmt, out), out)
    except MtqaError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_INPUT_ERROR) from exc
    if bad:
        raise typer.Exit(EXIT_INPUT_ERROR)
    if gate and not all(d.verdict.passed for d in report.documents):
        raise typer.Exit(EXIT_GATE_FAILED)


def main() -> None:
    """Console-script entry point."""
    app()
