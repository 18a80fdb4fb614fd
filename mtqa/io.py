"""Load documents from text, HTML, JSONL and CSV files, with errors that name the file and line.

Whole-file problems (empty, binary, not UTF-8, too large) raise ``InputError``. In record files
(JSONL, CSV) a bad record becomes a ``BadRecord`` in the stream so that the rest still load.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import MappingProxyType

from mtqa.errors import InputError
from mtqa.types import BadRecord, Document, JSONValue

__all__ = [
    "MAX_BYTES",
    "RECORD_SUFFIXES",
    "TEXT_SUFFIXES",
    "iter_json_lines",
    "iter_records",
    "load",
    "load_text",
    "read_text",
    "record_to_document",
]

logger = logging.getLogger(__name__)

#: files larger than this are refused (a scraped article is a few tens of kB)
MAX_BYTES = 20 * 1024 * 1024
TEXT_SUFFIXES = frozenset({".txt", ".text", ".md", ".html", ".htm", ".xhtml"})
RECORD_SUFFIXES = frozenset({".jsonl", ".ndjson", ".csv", ".tsv"})
_HTML_SUFFIXES = frozenset({".html", ".htm", ".xhtml"})
_KNOWN_FIELDS = ("id", "mt", "ref", "src")


def _decode(data: bytes, where: str) -> str:
    """UTF-8 text from bytes, or an InputError that says what the bytes look like instead."""
    if not data.strip():
        err = f"{where}: empty input: there is no text to check"
        raise InputError(err)
    head = data[:8192]
    controls = sum(1 for b in head if b < 32 and b not in (9, 10, 13, 12))
    if b"\x00" in head or controls > len(head) * 0.1:
        err = f"{where}: binary data, not text (expected UTF-8 text, HTML or JSONL)"
        raise InputError(err)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        bad = data[exc.start : exc.start + 1].hex()
        err = (f"{where}:{line}: not UTF-8 (byte 0x{bad} at offset {exc.start}); "
               f"convert it first, e.g. iconv -f latin1 -t utf-8")
        raise InputError(err) from exc
    if not text.strip():
        err = f"{where}: empty input: there is no text to check"
        raise InputError(err)
    return text


def read_text(path: Path, *, max_bytes: int = MAX_BYTES) -> str:
    """Read a UTF-8 text file, refusing binary, non-UTF-8, empty and oversized files."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            err = f"{path}: {size:,} bytes is over the {max_bytes:,}-byte limit for one file"
            raise InputError(err)
        data = path.read_bytes()
    except OSError as exc:
        err = f"{path}: cannot read: {exc.strerror or exc}"
        raise InputError(err) from exc
    return _decode(data, str(path))


def _looks_like_html(text: str) -> bool:
    head = text.lstrip()[:1024].lower()
    return head.startswith(("<!doctype html", "<html")) or ("<body" in head and "</" in text)


def extract_html(html: str, where: str) -> tuple[str, dict[str, JSONValue]]:
    """Article text and metadata of a scraped page, by trafilatura."""
    import trafilatura  # NOTE: lazy: pulls lxml and friends, needed only for HTML input

    doc = trafilatura.bare_extraction(
        html, with_metadata=True, include_comments=False, include_tables=False, favor_recall=True
    )
    text = getattr(doc, "text", None) if doc is not None else None
    if not text or not str(text).strip():
        err = f"{where}: HTML page with no article text that trafilatura could extract"
        raise InputError(err)
    meta: dict[str, JSONValue] = {}
    for key in ("title", "author", "date", "url", "sitename"):
        value = getattr(doc, key, None)
        if isinstance(value, str) and value:
            meta[key] = value
    return str(text), meta


def load_text(path: Path, *, doc_id: str | None = None, ref: tuple[str, ...] = (),
              max_bytes: int = MAX_BYTES) -> Document:
    """One document from a ``.txt`` or ``.html`` file (HTML is reduced to its article text)."""
    text = read_text(path, max_bytes=max_bytes)
    meta: dict[str, JSONValue] = {"path": str(path)}
    if path.suffix.lower() in _HTML_SUFFIXES or _looks_like_html(text):
        text, extra = extract_html(text, str(path))
        meta.update(extra)
    return Document(id=doc_id or path.stem, mt=text, ref=ref, meta=MappingProxyType(meta),
                    origin=str(path))


def _as_text(value: object, field: str, where: str) -> str:
    if not isinstance(value, str):
        err = f"{where}: field {field!r} must be a string, not {type(value).__name__}"
        raise InputError(err)
    return value


def record_to_document(record: Mapping[str, object], where: str, default_id: str) -> Document:
    """A Document from a JSONL/CSV record ``{"id", "mt", "ref"?, "src"?, ...}``; extra fields go to meta."""
    if "mt" not in record:
        err = f"{where}: missing field 'mt' (the text to check)"
        raise InputError(err)
    mt = _as_text(record["mt"], "mt", where)
    if not mt.strip():
        err = f"{where}: field 'mt' is empty: there is no text to check"
        raise InputError(err)
    raw_ref = record.get("ref")
    ref: tuple[str, ...]
    if raw_ref is None or raw_ref == "":
        ref = ()
    elif isinstance(raw_ref, list):
        ref = tuple(_as_text(r, "ref", where) for r in raw_ref)
    else:
        ref = (_as_text(raw_ref, "ref", where),)
    src = record.get("src")
    src_text = _as_text(src, "src", where) if src not in (None, "") else None
    raw_id = record.get("id")
    doc_id = default_id if raw_id in (None, "") else str(raw_id)
    meta = {k: v for k, v in record.items() if k not in _KNOWN_FIELDS}
    return Document(id=doc_id, mt=mt, ref=ref, src=src_text,
                    meta=MappingProxyType(meta), origin=where)  # type: ignore[arg-type]


def iter_json_lines(path: Path, text: str) -> Iterator[tuple[str, dict[str, object]] | BadRecord]:
    """``(where, object)`` for each JSON object line of a JSONL text, a BadRecord for others."""
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            yield BadRecord(where, f"{where}: malformed JSON: {exc.msg} (column {exc.colno})")
            continue
        if not isinstance(record, dict):
            yield BadRecord(where, f"{where}: expected a JSON object, got {type(record).__name__}")
            continue
        yield where, record


def _iter_jsonl(path: Path, text: str) -> Iterator[Document | BadRecord]:
    for item in iter_json_lines(path, text):
        if isinstance(item, BadRecord):
            yield item
            continue
        where, record = item
        lineno = where.rsplit(":", 1)[1]
        try:
            yield record_to_document(record, where, f"{path.stem}:{lineno}")
        except InputError as exc:
            yield BadRecord(where, str(exc))


def _iter_csv(path: Path, text: str) -> Iterator[Document | BadRecord]:
    dialect = "excel-tab" if path.suffix.lower() == ".tsv" else "excel"
    reader = csv.DictReader(io.StringIO(text, newline=""), dialect=dialect)
    if reader.fieldnames is None or "mt" not in reader.fieldnames:
        yield BadRecord(f"{path}:1", f"{path}:1: the header has no 'mt' column")
        return
    for row in reader:
        where = f"{path}:{reader.line_num}"
        if None in row:
            yield BadRecord(where, f"{where}: more fields than the header has")
            continue
        try:
            yield record_to_document(row, where, f"{path.stem}:{reader.line_num}")
        except InputError as exc:
            yield BadRecord(where, str(exc))


def iter_records(path: Path, *, max_bytes: int = MAX_BYTES) -> Iterator[Document | BadRecord]:
    """Documents (or BadRecords) from a JSONL or CSV file, in file order."""
    text = read_text(path, max_bytes=max_bytes)
    if path.suffix.lower() in (".csv", ".tsv"):
        yield from _iter_csv(path, text)
    else:
        yield from _iter_jsonl(path, text)


def load(path: Path, *, ref: tuple[str, ...] = (), max_bytes: int = MAX_BYTES
         ) -> Iterator[Document | BadRecord]:
    """Documents from any supported file: record files yield many, text and HTML files one."""
    if path.suffix.lower() in RECORD_SUFFIXES:
        if ref:
            err = f"{path}: --ref applies to a single text file; put 'ref' in each record instead"
            raise InputError(err)
        yield from iter_records(path, max_bytes=max_bytes)
    else:
        yield load_text(path, ref=ref, max_bytes=max_bytes)
