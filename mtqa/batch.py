"""Batch scoring: many inputs, one Checker, results kept in a resumable SQLite store.

``run_batch`` loads every input (JSONL/CSV records, text and HTML files, directories of them),
checks the documents in chunks with one ``Checker`` (models load once) and commits each chunk's
reports to the store before going on. The store is keyed by the content (``mt``, ``ref``, ``src``)
and by the settings that change scores, so a run that was interrupted (Ctrl-C, ``kill -9``)
continues where it stopped, and a document already scored under the same settings is never
scored again, whatever its id or position.

The store is the source of truth; the outputs are written from it, in input order, on every
run: the JSONL output grows in ``OUT.partial`` (flushed after every chunk) and replaces ``OUT``
when the run ends, so it never holds a document twice. The gate policy is applied when the
outputs are written, not stored, so re-gating a finished batch with another policy re-scores
nothing.

Outputs never overwrite inputs: an output that is an input file, or that a later run would read
back from an input directory, is refused before anything runs. A run holds an exclusive lock on
``OUT.lock`` (with its pid in it), so a second run on the same ``OUT`` stops at once and says
which process holds it. A stored result that cannot be read back is scored again (with a
warning naming the store and the document); a store SQLite cannot read is an error that says
how to start afresh.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import errno
import fcntl
import hashlib
import io
import json
import logging
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TextIO

from mtqa.config import Settings
from mtqa.errors import ConfigError, InputError, MtqaError
from mtqa.gate import Policy, decide
from mtqa.io import (
    MAX_BYTES,
    RECORD_SUFFIXES,
    TEXT_SUFFIXES,
    iter_json_lines,
    iter_records,
    load_text,
    lone_surrogate,
    read_text,
    write_text_atomic,
)
from mtqa.encoders import embedder_precision
from mtqa.models import lm_precision
from mtqa.pipeline import Checker
from mtqa.render.csv import render_csv
from mtqa.render.html import render_html, render_index
from mtqa.render.json import (
    document_from_dict,
    document_to_dict,
    render_error_line,
    render_jsonl_line,
    to_json,
)
from mtqa.types import (
    SCHEMA,
    BadRecord,
    BatchRow,
    BatchSummary,
    Document,
    DocumentReport,
    Report,
    Severity,
)
from mtqa.version import __version__

__all__ = [
    "CHUNK_SIZE",
    "ResultStore",
    "config_signature",
    "content_key",
    "default_store",
    "iter_inputs",
    "load_ref_map",
    "read_results",
    "run_batch",
]

logger = logging.getLogger(__name__)

#: documents checked (and committed to the store) together
CHUNK_SIZE = 32
_STORE_VERSION = 1
_REF_STEM = re.compile(r"^(?P<name>.+)\.ref\d*$")
ProgressCallback = Callable[[int, int], None]


# -- inputs -----------------------------------------------------------------------------------


def load_ref_map(path: Path) -> dict[str, tuple[Path, ...]]:
    """Document id → reference files, from JSON (``{"id": "ref.txt" | [...]}``) or CSV (``id,ref``).

    Relative paths are relative to the map file.

    Raises:
        ConfigError: the file is not such a mapping.
    """
    text = read_text(path)
    base = path.parent
    out: dict[str, list[Path]] = {}
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            err = f"{path}:{exc.lineno}: malformed JSON in the reference map: {exc.msg}"
            raise ConfigError(err) from exc
        if not isinstance(data, dict):
            err = f"{path}: the reference map must be a JSON object {{\"id\": \"ref path\"}}"
            raise ConfigError(err)
        for key, value in data.items():
            refs = value if isinstance(value, list) else [value]
            if not all(isinstance(r, str) for r in refs):
                err = f"{path}: reference map entry {key!r} must be a path or a list of paths"
                raise ConfigError(err)
            out[str(key)] = [base / r for r in refs]
    else:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if reader.fieldnames is None or not {"id", "ref"} <= set(reader.fieldnames):
            err = f"{path}:1: the reference map needs 'id' and 'ref' columns"
            raise ConfigError(err)
        for row in reader:
            if not row.get("id") or not row.get("ref"):
                err = f"{path}:{reader.line_num}: empty 'id' or 'ref'"
                raise ConfigError(err)
            out.setdefault(row["id"], []).append(base / row["ref"])
    return {k: tuple(v) for k, v in out.items()}


def _walk(root: Path) -> tuple[list[Path], list[BadRecord]]:
    """Files with a text suffix under ``root`` (sorted), and a BadRecord per unreadable directory.

    Symbolic links to directories are not followed (as ``Path.rglob`` does not): no loops.
    """
    unreadable: list[BadRecord] = []

    def failed(exc: OSError) -> None:
        where = exc.filename or root
        unreadable.append(BadRecord(str(where), f"{where}: cannot read this directory: "
                                                f"{exc.strerror or exc}; its files were not checked"))

    files: list[Path] = []
    for top, dirs, names in os.walk(root, onerror=failed):
        dirs.sort()
        files.extend(Path(top, n) for n in names if Path(n).suffix.lower() in TEXT_SUFFIXES
                     and not Path(top, n).is_dir())
    return sorted(files), sorted(unreadable, key=lambda b: b.origin)


def _directory(root: Path, max_bytes: int) -> Iterator[Document | BadRecord]:
    """Text and HTML files under ``root`` (sorted); ``NAME.ref.txt`` is the reference of ``NAME.txt``.

    An unreadable subdirectory, and a directory with no text or HTML file at all, are BadRecords.
    """
    files, unreadable = _walk(root)
    yield from unreadable
    refs: dict[Path, list[Path]] = {}
    texts: list[Path] = []
    for p in files:
        match = _REF_STEM.match(p.stem)
        if match:
            refs.setdefault(p.parent / match["name"], []).append(p)
        else:
            texts.append(p)
    stems = {p.parent / p.stem for p in texts}
    if not texts and not unreadable:
        suffixes = ", ".join(sorted(TEXT_SUFFIXES))
        what = "only reference files" if refs else "no file"
        yield BadRecord(str(root), f"{root}: the directory holds {what} to check (looked for "
                                   f"{suffixes}, recursively)")
    for orphan in sorted(set(refs) - stems):
        logger.warning("%s: reference file(s) with no translation beside them: %s", root,
                       ", ".join(str(p) for p in refs[orphan]))
    for p in texts:
        doc_id = p.relative_to(root).with_suffix("").as_posix()
        try:
            ref = tuple(load_text(r, max_bytes=max_bytes).mt for r in refs.get(p.parent / p.stem, ()))
            yield load_text(p, doc_id=doc_id, ref=ref, max_bytes=max_bytes)
        except InputError as exc:
            yield BadRecord(str(p), str(exc))


def _single(path: Path, max_bytes: int) -> Iterator[Document | BadRecord]:
    yield load_text(path, max_bytes=max_bytes)  # NOTE: a generator, so errors come out of the loop


def iter_inputs(
    paths: Sequence[Path],
    *,
    ref_map: Mapping[str, Sequence[Path]] | None = None,
    max_bytes: int = MAX_BYTES,
) -> Iterator[Document | BadRecord]:
    """Documents (or BadRecords) from files and directories, in order; a bad one never stops it.

    ``ref_map`` adds references by document id, after those the record or file name gives.
    """
    ref_map = ref_map or {}
    used: set[str] = set()
    for path in paths:
        if path.is_dir():
            items: Iterator[Document | BadRecord] = _directory(path, max_bytes)
        elif path.suffix.lower() in RECORD_SUFFIXES:
            items = iter_records(path, max_bytes=max_bytes)
        else:
            items = _single(path, max_bytes)
        try:
            for item in items:
                if isinstance(item, Document) and item.id in ref_map:
                    used.add(item.id)
                    try:
                        extra = tuple(load_text(r, max_bytes=max_bytes).mt for r in ref_map[item.id])
                    except InputError as exc:
                        yield BadRecord(item.origin, f"{item.origin}: reference: {exc}")
                        continue
                    item = dataclasses.replace(item, ref=item.ref + extra)
                yield item
        except InputError as exc:
            yield BadRecord(str(path), str(exc))
    unused = sorted(set(ref_map) - used)
    if unused:
        logger.warning("reference map entries matching no document: %s", ", ".join(unused[:10]))


# -- the store --------------------------------------------------------------------------------


def content_key(doc: Document) -> str:
    """sha256 of what is checked: ``mt``, every ``ref`` and ``src`` (not the id or metadata)."""
    data = json.dumps([doc.mt, list(doc.ref), doc.src], ensure_ascii=False)
    # NOTE: surrogatepass: a Document built in Python may hold a lone surrogate; hash it anyway
    return hashlib.sha256(data.encode("utf-8", "surrogatepass")).hexdigest()


def config_signature(settings: Settings, calibration: str = "") -> str:
    """The settings that can change a report's numbers, the mtqa version and the calibration's
    fingerprint (a re-fitted file under the same path changes scores), as JSON.

    The gate policy is left out: verdicts are recomputed whenever outputs are written. The
    precision is resolved as each model reads it: ``precision``, the one the language model
    runs in (``mtqa.models.lm_precision``), and ``embedder_precision``, the reference checker's
    sentence encoder's (``mtqa.encoders.embedder_precision``): ``auto`` reads bf16 on a machine
    with native bfloat16 and fp32 on another, and their reports differ; ``auto`` and what it
    resolves to share results. A run that reads with neither keeps neither.
    """
    data = settings.to_dict()
    data.pop("policy", None)
    data.pop("precision", None)
    if settings.reads_with_lm:  # NOTE: else the LM's precision changes nothing
        data["precision"] = lm_precision(settings.lm_model, device=settings.device,
                                         backend=settings.lm_backend, precision=settings.precision)
    if "reference" in settings.checkers:  # the sentence encoder reads the same setting
        data["embedder_precision"] = embedder_precision(settings.precision, settings.device)
    return json.dumps({"mtqa": __version__, "settings": data, "calibration": calibration},
                      sort_keys=True)


def default_store(out: Path) -> Path:
    """The store beside an output file: ``results.jsonl`` → ``results.store.sqlite``."""
    return out.with_name(out.stem + ".store.sqlite")


def _damaged(path: Path, exc: sqlite3.Error) -> ConfigError:
    why = str(exc)
    if "locked" in why.lower():
        err = (f"{path}: the result store is locked by another process ({why}); wait for it to "
               f"finish, or give another --store")
    elif "full" in why.lower():
        err = f"{path}: cannot write the result store: {why}; free some space and run again"
    else:
        err = (f"{path}: the result store cannot be used: {why}. Move the file away or delete "
               f"it to start afresh (its results are scored again), or give another --store")
    return ConfigError(err)


class ResultStore:
    """Reports by (content key, configuration key) in SQLite (WAL: a killed run keeps its commits).

    Every SQLite failure (a damaged file, a full disk) is a ConfigError naming the store.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            if path.is_file() and path.stat().st_size == 0:
                logger.warning("%s: the result store is empty (0 bytes): it holds no results, so "
                               "every document is scored again", path)
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            err = f"{path}: cannot create the result store: {exc.strerror or exc}"
            raise ConfigError(err) from exc
        try:
            self._db = sqlite3.connect(path, timeout=60.0)
        except sqlite3.Error as exc:
            raise _damaged(path, exc) from exc
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            # NOTE: NORMAL is durable against a crashed or killed process in WAL mode; only a
            # power cut can lose the last commits, which the next run then re-scores.
            self._db.execute("PRAGMA synchronous=NORMAL")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, _STORE_VERSION):
                err = (f"{path}: store format {version} is not {_STORE_VERSION}; "
                       f"use another --store path")
                raise ConfigError(err)
            with self._db:
                self._db.execute("CREATE TABLE IF NOT EXISTS configs (config TEXT PRIMARY KEY, "
                                 "signature TEXT NOT NULL)")
                self._db.execute(
                    "CREATE TABLE IF NOT EXISTS results (content TEXT NOT NULL, config TEXT NOT NULL, "
                    "doc_id TEXT, report TEXT NOT NULL, seconds REAL, created REAL, "
                    "PRIMARY KEY (content, config)) WITHOUT ROWID")
                self._db.execute(f"PRAGMA user_version = {_STORE_VERSION}")
        except sqlite3.DatabaseError as exc:
            self._db.close()
            err = f"{path}: cannot use this file as an mtqa result store: {exc}"
            raise ConfigError(err) from exc
        except BaseException:
            self._db.close()
            raise

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise _damaged(self.path, exc) from exc

    def config(self, signature: str) -> str:
        """The key of a configuration signature, registered in the store."""
        key = hashlib.sha256(signature.encode("utf-8")).hexdigest()[:16]
        with self._guard(), self._db:
            self._db.execute("INSERT OR IGNORE INTO configs VALUES (?, ?)", (key, signature))
        return key

    def get(self, config: str, contents: Sequence[str]) -> dict[str, str]:
        """Stored report JSON by content key, for the keys that have one under ``config``.

        A row whose report is not text (a damaged row) is left out, with a warning: its document
        is then scored again and the row replaced.
        """
        out: dict[str, str] = {}
        unique = list(dict.fromkeys(contents))
        with self._guard():
            for i in range(0, len(unique), 500):
                part = unique[i : i + 500]
                marks = ",".join("?" * len(part))
                rows = self._db.execute(
                    f"SELECT content, report, doc_id FROM results WHERE config = ? "
                    f"AND content IN ({marks})", (config, *part))
                for content, report, doc_id in rows:
                    if isinstance(report, str):
                        out[content] = report
                    else:
                        logger.warning("%s: the stored result of %r (content %s) is not text; "
                                       "scoring it again", self.path, doc_id, str(content)[:12])
        return out

    def put(self, config: str, rows: Sequence[tuple[str, str, str, float]]) -> None:
        """Commit ``(content, doc_id, report JSON, seconds)`` rows in one transaction."""
        now = time.time()
        with self._guard(), self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?)",
                [(c, config, i, r, s, now) for c, i, r, s in rows])

    def count(self, config: str | None = None) -> int:
        """How many reports the store holds (under one configuration, or in all)."""
        with self._guard():
            if config is None:
                return int(self._db.execute("SELECT COUNT(*) FROM results").fetchone()[0])
            return int(self._db.execute("SELECT COUNT(*) FROM results WHERE config = ?",
                                        (config,)).fetchone()[0])

    def close(self) -> None:
        """Close the database; calling it twice is harmless."""
        self._db.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the run ----------------------------------------------------------------------------------


def _score(checker: Checker, docs: list[Document]) -> list[DocumentReport | str]:
    """Reports for a chunk; a document that makes the pipeline fail gets an error message."""
    try:
        return list(checker.check_many(docs).documents)
    except ConfigError:
        raise  # the settings are wrong for every document, not this one
    except Exception as exc:  # NOTE: one bad document must not stop a batch of thousands
        if len(docs) == 1:
            logger.exception("checking %s failed", docs[0].origin or docs[0].id)
            return [f"{docs[0].origin or docs[0].id}: checking failed: {type(exc).__name__}: {exc}"]
        logger.warning("a chunk failed (%s); checking its documents one at a time", exc)
    return [r for d in docs for r in _score(checker, [d])]


def _report_json(report: DocumentReport) -> str:
    """A report as the store keeps it (both engines write this)."""
    return to_json(document_to_dict(report))


#: (input position, stored report JSON or None, error message or None, seconds) per document
Scored = list[tuple[int, str | None, str | None, float]]
#: an engine checks the pending ``(position, document)`` pairs and yields each chunk it has
#: checked, in any order (``_run`` commits each and writes the outputs in input order)
Engine = Callable[[list[tuple[int, Document]]], Iterator[Scored]]


def _local_engine(checker: Checker, chunk_size: int) -> Engine:
    """Chunks of ``chunk_size`` checked in this process, in order."""
    def score(pending: list[tuple[int, Document]]) -> Iterator[Scored]:
        for start in range(0, len(pending), chunk_size):
            chunk = pending[start : start + chunk_size]
            c0 = time.perf_counter()
            results = _score(checker, [doc for _, doc in chunk])
            seconds = (time.perf_counter() - c0) / len(chunk)
            yield [(i, None, r, seconds) if isinstance(r, str) else (i, _report_json(r), None, seconds)
                   for (i, _), r in zip(chunk, results)]
    return score


def _counts(d: DocumentReport) -> tuple[int, int, int]:
    n = [0, 0, 0]
    for s in d.spans:
        n[s.severity.rank] += 1
    return (n[Severity.MINOR.rank], n[Severity.MAJOR.rank], n[Severity.CRITICAL.rank])


def _page_name(position: int, doc_id: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", doc_id).strip("-.")[:60] or "doc"
    return f"{position:05d}-{slug}.html"


def _cannot_write(path: Path, exc: OSError) -> InputError:
    full = " (the disk is full)" if exc.errno == errno.ENOSPC else ""
    return InputError(f"{path}: cannot write: {exc.strerror or exc}{full}")


class _Outputs:
    """The output files of a run, written in input order as results become available.

    Every write error (no permission, a full disk) is an InputError naming the file; ``OUT``
    and the CSV are replaced only by complete files, so a failed run leaves the previous ones.
    """

    def __init__(self, out: Path, html_dir: Path | None, policy: Policy) -> None:
        self.out = out
        self.partial = out.with_name(out.name + ".partial")
        try:
            self._jsonl: TextIO = self.partial.open("w", encoding="utf-8")
        except OSError as exc:
            raise _cannot_write(self.partial, exc) from exc
        self.html_dir = html_dir
        if html_dir is not None:
            try:
                html_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                self._jsonl.close()
                raise _cannot_write(html_dir, exc) from exc
        self.policy = policy
        self.rows: list[BatchRow] = []

    def _write(self, line: str) -> None:
        try:
            self._jsonl.write(line)
        except OSError as exc:
            raise _cannot_write(self.partial, exc) from exc

    def error(self, origin: str, message: str, doc_id: str | None = None) -> None:
        row = BatchRow(origin=origin, id=doc_id, error=message)
        self.rows.append(row)
        self._write(render_error_line(row))

    def document(self, position: int, doc: Document, stored: str) -> None:
        report = _stored_report(stored, doc)
        report = dataclasses.replace(report, verdict=decide(report, self.policy))
        page = None
        if self.html_dir is not None:
            page = _page_name(position, doc.id)
            write_text_atomic(self.html_dir / page, render_html(Report((report,))))
        self.rows.append(BatchRow(
            origin=doc.origin, id=doc.id, score=report.score, fluency=report.fluency,
            passed=report.verdict.passed, spans=_counts(report), reasons=report.verdict.reasons,
            page=page))
        self._write(render_jsonl_line(report))

    def flush(self) -> None:
        try:
            self._jsonl.flush()
        except OSError as exc:
            raise _cannot_write(self.partial, exc) from exc

    def finish(self, csv_out: Path | None) -> list[str]:
        """Close the files and move them into place; the paths written."""
        try:
            self._jsonl.close()
            os.replace(self.partial, self.out)
        except OSError as exc:
            raise _cannot_write(self.out, exc) from exc
        written = [str(self.out)]
        if csv_out is not None:
            try:
                csv_out.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise _cannot_write(csv_out, exc) from exc
            write_text_atomic(csv_out, render_csv(self.rows))
            written.append(str(csv_out))
        if self.html_dir is not None:
            index = self.html_dir / "index.html"
            write_text_atomic(index, render_index(self.rows, title=f"mtqa batch: {self.out.name}"))
            written.append(str(index))
        return written

    def abandon(self) -> None:
        with contextlib.suppress(OSError):  # NOTE: the error that made the run stop is the news
            self._jsonl.close()


def _stored_report(stored: str, doc: Document) -> DocumentReport:
    """The stored report of ``doc``, under its id and metadata (InputError when unreadable)."""
    try:
        data = json.loads(stored)
    except (json.JSONDecodeError, RecursionError) as exc:
        err = f"malformed JSON ({exc})"
        raise InputError(err) from exc
    if not isinstance(data, dict):
        err = f"not a JSON object but {type(data).__name__}"
        raise InputError(err)
    return document_from_dict(data, mt=doc.mt, ref=doc.ref, id=doc.id, meta=doc.meta)


def _real(path: Path) -> Path:
    """The path with symbolic links, ``..`` and ``.`` resolved (whether or not it exists)."""
    return Path(os.path.realpath(path))


def _refuse_overlaps(inputs: Sequence[Path], out: Path, store: Path, csv_out: Path | None,
                     html_dir: Path | None, ref_map: Path | None) -> None:
    """Refuse outputs that would overwrite an input or be read back as one by the next run.

    Raises:
        InputError: naming the output and the input.
    """
    partial = out.with_name(out.name + ".partial")
    files = [("--out", out), ("--out", partial), ("--out", _lock_path(out)), ("--store", store),
             ("--store", store.with_name(store.name + "-wal")),
             ("--store", store.with_name(store.name + "-shm"))]
    if csv_out is not None:
        files.append(("--csv", csv_out))
    real_files = [(flag, path, _real(path)) for flag, path in files]
    for i, (flag, path, real) in enumerate(real_files):
        for other_flag, other, other_real in real_files[:i]:
            if real == other_real and flag != other_flag:
                err = f"{path}: {flag} and {other_flag} name the same file; give them different paths"
                raise InputError(err)
    for source in [*inputs, *([ref_map] if ref_map is not None else [])]:
        src = _real(source)
        if source.is_dir():
            for flag, path, real in real_files:
                if src in real.parents and real.suffix.lower() in TEXT_SUFFIXES:
                    err = (f"{path}: {flag} is inside the input directory {source}, and the next "
                           f"run would read it as an article; write it elsewhere")
                    raise InputError(err)
            if html_dir is not None:
                html = _real(html_dir)
                if html == src or src in html.parents:
                    err = (f"{html_dir}: --html is inside the input directory {source}, and the "
                           f"next run would read its pages as articles; write them elsewhere")
                    raise InputError(err)
        else:
            for flag, path, real in real_files:
                if real == src:
                    err = (f"{path}: {flag} is the input file {source}: writing it would destroy "
                           f"the input; give another path")
                    raise InputError(err)
            if (html_dir is not None and src.parent == _real(html_dir)
                    and src.suffix.lower() == ".html"):
                err = (f"{html_dir}: --html is the directory of the input file {source}, which "
                       f"a page or index.html could overwrite; write them elsewhere")
                raise InputError(err)


def _check_out(out: Path) -> None:
    """``out`` must be (or become) a regular file in a directory that exists or can be made."""
    if out.is_dir():
        err = f"{out}: --out is a directory; give the path of the results file (e.g. {out}/results.jsonl)"
        raise InputError(err)
    if out.exists() and not out.is_file():
        err = (f"{out}: --out must be a regular file (the results grow in {out.name}.partial, "
               f"which then replaces it)")
        raise InputError(err)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        err = f"{out}: cannot create its directory {out.parent}: {exc.strerror or exc}"
        raise InputError(err) from exc


def _lock_path(out: Path) -> Path:
    return out.with_name(out.name + ".lock")


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``OUT.lock`` (holding this process's pid) while writing ``out``.

    Raises:
        InputError: another process holds it (its pid in the message), or it cannot be made.
    """
    lock = _lock_path(out)
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError as exc:
        err = f"{lock}: cannot create the lock file of {out}: {exc.strerror or exc}"
        raise InputError(err) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                err = f"{lock}: cannot lock {out}: {exc.strerror or exc}"
                raise InputError(err) from exc
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            err = (f"{out}: another mtqa batch (pid {holder}) is writing this output (lock "
                   f"{lock}); wait for it to finish, or give another --out")
            raise InputError(err) from None
        # NOTE: the file is never deleted: unlinking a lock file lets two runs lock two inodes
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        yield
    finally:
        os.close(fd)


def run_batch(
    inputs: Sequence[Path],
    out: Path,
    settings: Settings | None = None,
    *,
    store: Path | None = None,
    csv_out: Path | None = None,
    html_dir: Path | None = None,
    ref_map: Path | None = None,
    chunk_size: int = CHUNK_SIZE,
    checker: Checker | None = None,
    on_progress: ProgressCallback | None = None,
    engine: str = "local",
    address: str | None = None,
    workers: int | None = None,
) -> BatchSummary:
    """Check every input and write JSONL (plus CSV and HTML when asked) to ``out``.

    Args:
        settings: how to check (ignored when ``checker`` is given: its settings are used).
        store: the SQLite result store (default: ``default_store(out)``).
        checker: a ready Checker to use and leave open (default: one built here and closed).
        on_progress: called with ``(documents done, total)`` after each chunk.
        engine: ``local`` (this process) or ``ray`` (Ray Data actors: ``mtqa.ray_engine``,
            ``address`` of the cluster, ``workers`` actors); the same outputs and store.

    Raises:
        MtqaError: a setting, policy, reference map or the store is unusable, an output would
            overwrite an input, another run holds ``out``, or an output cannot be written (bad
            records are not raised: they become error lines and rows).
    """
    if chunk_size < 1:
        err = f"chunk size must be at least 1, not {chunk_size}"
        raise ConfigError(err)
    if engine not in ("local", "ray"):
        err = f"engine must be 'local' or 'ray', not {engine!r}"
        raise ConfigError(err)
    if engine == "local" and (address is not None or workers is not None):
        err = "--address and --workers apply to --engine ray only"
        raise ConfigError(err)
    if engine == "ray":
        from mtqa.ray_engine import require_ray

        require_ray()  # before anything is read or written: one clear error naming the install
    t0 = time.perf_counter()
    _check_out(out)
    store = store or default_store(out)
    _refuse_overlaps(inputs, out, store, csv_out, html_dir, ref_map)
    with _locked(out):
        own = checker is None
        checker = checker or Checker(settings)
        settings = checker.settings
        try:
            refs = load_ref_map(ref_map) if ref_map is not None else None
            items = list(iter_inputs(inputs, ref_map=refs, max_bytes=settings.max_bytes))
            keys = [content_key(i) if isinstance(i, Document) else "" for i in items]
            with ResultStore(store) as db:
                if engine == "ray":
                    from mtqa.ray_engine import run_on_ray  # NOTE: the only place ray is imported

                    summary = run_on_ray(items, keys, db, checker, out, csv_out, html_dir,
                                         chunk_size, on_progress, t0, address=address,
                                         workers=workers)
                else:
                    summary = _run(items, keys, db, checker, out, csv_out, html_dir, chunk_size,
                                   on_progress, t0)
        finally:
            if own:
                checker.close()
    return summary


def _readable(stored: dict[str, str], items: Sequence[Document | BadRecord], keys: Sequence[str],
              store: Path) -> None:
    """Drop from ``stored`` the results that cannot be read back (warning): they are re-scored."""
    seen: set[str] = set()
    for item, key in zip(items, keys):
        if not isinstance(item, Document) or key not in stored or key in seen:
            continue
        seen.add(key)
        try:
            _stored_report(stored[key], item)
        except InputError as exc:
            logger.warning("%s: the stored result of %s (id %r, content %s) is damaged (%s); "
                           "scoring it again", store, item.origin or item.id, item.id, key[:12], exc)
            del stored[key]


def _run(items: list[Document | BadRecord], keys: list[str], db: ResultStore, checker: Checker,
         out: Path, csv_out: Path | None, html_dir: Path | None, chunk_size: int,
         on_progress: ProgressCallback | None, t0: float,
         engine: Engine | None = None) -> BatchSummary:
    config = db.config(config_signature(checker.settings, checker.calibration.fingerprint()))
    stored = db.get(config, [k for k in keys if k])
    _readable(stored, items, keys, db.path)
    failed: dict[str, str] = {}  # content key → why checking it failed (not stored: retried)
    positions: dict[str, list[int]] = {}
    pending: list[tuple[int, Document]] = []
    for i, (item, key) in enumerate(zip(items, keys)):
        if isinstance(item, Document):
            positions.setdefault(key, []).append(i)
            if key not in stored and len(positions[key]) == 1:
                pending.append((i, item))
    reused = sum(len(positions[k]) for k in positions if k in stored)
    finished = reused + sum(1 for i in items if isinstance(i, BadRecord))
    outputs = _Outputs(out, html_dir, checker.policy)
    done = 0

    def emit_ready() -> None:
        nonlocal done
        while done < len(items):
            item, key = items[done], keys[done]
            if isinstance(item, BadRecord):
                outputs.error(item.origin, item.message)
            elif key in failed:
                outputs.error(item.origin or item.id, failed[key], item.id)
            elif key in stored:
                outputs.document(done, item, stored[key])
            else:
                break
            done += 1
        outputs.flush()

    scored = 0
    try:
        emit_ready()
        if on_progress is not None:
            on_progress(finished, len(items))
        docs = dict(pending)
        for chunk in (engine or _local_engine(checker, chunk_size))(pending):
            rows = []
            for i, data, error, seconds in chunk:
                if data is None:
                    failed[keys[i]] = error or f"{docs[i].origin or docs[i].id}: checking failed"
                else:
                    rows.append((keys[i], docs[i].id, data, seconds))
                finished += len(positions[keys[i]])
            db.put(config, rows)  # committed: a kill after this line loses none of this chunk
            stored.update({c: r for c, _, r, _ in rows})
            scored += len(rows)
            emit_ready()
            if on_progress is not None:
                on_progress(finished, len(items))
    except BaseException:
        outputs.abandon()
        raise
    written = outputs.finish(csv_out)
    seconds = time.perf_counter() - t0
    logger.info("batch: %d checked, %d reused, %d inputs in %.1fs", scored, reused, len(items),
                seconds)
    return BatchSummary(rows=tuple(outputs.rows), scored=scored, reused=reused, seconds=seconds,
                        outputs=tuple(written), policy=checker.policy.name)


# -- reading results back ---------------------------------------------------------------------


def read_results(path: Path) -> Iterator[DocumentReport | BadRecord]:
    """Reports from a batch results JSONL or a ``check --format json`` report.

    Error lines of a batch come back as BadRecords, and so do lines that are not results.
    The reports have no article text (the JSON does not hold it); each span keeps its own text.
    """
    text = read_text(path)
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None  # JSONL: one result per line
    if isinstance(whole, dict) and isinstance(whole.get("documents"), list):
        for k, doc in enumerate(whole["documents"]):
            hit = lone_surrogate(doc)
            if hit is not None:
                yield BadRecord(str(path), f"{path}: document {k}: field {hit[0]!r} holds a lone "
                                           f"surrogate \\u{ord(hit[1]):04x}, not Unicode text")
                continue
            try:
                yield document_from_dict(doc)
            except InputError as exc:
                yield BadRecord(str(path), f"{path}: document {k}: {exc}")
        return
    for item in iter_json_lines(path, text):
        if isinstance(item, BadRecord):
            yield item
            continue
        where, data = item
        if data.get("schema", SCHEMA) != SCHEMA:
            yield BadRecord(where, f"{where}: not an {SCHEMA} result line")
            continue
        if "error" in data:
            yield BadRecord(str(data.get("origin") or where), str(data["error"]))
            continue
        try:
            yield document_from_dict(data)
        except MtqaError as exc:
            yield BadRecord(where, f"{where}: {exc}")

