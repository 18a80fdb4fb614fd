"""Load documents from text, HTML, JSONL and CSV files, with errors that name the file and line.

Whole-file problems (empty, binary, not UTF-8, too large, not a regular file) raise
``InputError``. In record files (JSONL, CSV) a bad record becomes a ``BadRecord`` in the stream so
that the rest still load. ``write_text_atomic`` is the one way outputs are written.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import logging
import os
import re
import secrets
import stat
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
    "lone_surrogate",
    "read_bytes",
    "read_text",
    "record_to_document",
    "regular_file_error",
    "write_text_atomic",
]

logger = logging.getLogger(__name__)

#: files larger than this are refused (a scraped article is a few tens of kB)
MAX_BYTES = 20 * 1024 * 1024
TEXT_SUFFIXES = frozenset({".txt", ".text", ".md", ".html", ".htm", ".xhtml"})
RECORD_SUFFIXES = frozenset({".jsonl", ".ndjson", ".csv", ".tsv"})
_HTML_SUFFIXES = frozenset({".html", ".htm", ".xhtml"})
_KNOWN_FIELDS = ("id", "mt", "ref", "src")
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_UTF32_BOMS = (b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _not_utf8_hint(data: bytes) -> str:
    """The ``iconv`` source encoding most likely for bytes that are not UTF-8."""
    # NOTE: bytes 0x80-0x9f are C1 controls in Latin-1 but curly quotes, dashes and the euro
    # sign in Windows-1252, the usual encoding of such files; iconv -f latin1 garbles them
    if any(0x80 <= b <= 0x9F for b in data):
        return "cp1252"
    return "latin1"


def _decode(data: bytes, where: str) -> str:
    """UTF-8 text from bytes, or an InputError that says what the bytes look like instead."""
    if data.startswith(_UTF32_BOMS) or data.startswith(_UTF16_BOMS):
        kind = "UTF-32" if data.startswith(_UTF32_BOMS) else "UTF-16"
        err = (f"{where}: not UTF-8 (looks like {kind}: it starts with a {kind} byte-order mark); "
               f"convert it first, e.g. iconv -f {kind} -t UTF-8 {where} > converted.txt")
        raise InputError(err)
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
               f"convert it first, e.g. iconv -f {_not_utf8_hint(data)} -t utf-8")
        raise InputError(err) from exc
    if not text.strip():
        err = f"{where}: empty input: there is no text to check"
        raise InputError(err)
    return text


_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISSOCK, "a socket"))


def regular_file_error(path: Path | str, mode: int) -> str | None:
    """Why ``path`` (of ``st_mode`` ``mode``) is not an input mtqa reads; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in _FILE_KINDS if test(mode)), "a special file")
    return f"{path}: {kind}, not a regular file: mtqa reads regular files only"


def _read_error(path: Path, exc: OSError) -> InputError:
    return InputError(f"{path}: cannot read: {exc.strerror or exc}")


def read_bytes(path: Path, *, max_bytes: int = MAX_BYTES) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``; anything else is an InputError.

    FIFOs, devices and sockets are refused before a byte is read (a FIFO blocks forever and
    ``/dev/zero`` never ends; both have ``st_size`` 0), and the read itself stops after
    ``max_bytes + 1`` bytes whatever ``st_size`` said.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        # NOTE: O_NONBLOCK so that opening a FIFO with no writer returns at once; the type is
        # then checked on the descriptor itself, so a path swapped after a stat cannot slip by
        fd = os.open(path, flags)
    except OSError as exc:
        raise _read_error(path, exc) from exc
    try:
        info = os.fstat(fd)
        why = regular_file_error(path, info.st_mode)
        if why is None and info.st_size > max_bytes:
            why = f"{path}: {info.st_size:,} bytes is over the {max_bytes:,}-byte limit for one file"
    except OSError as exc:
        os.close(fd)
        raise _read_error(path, exc) from exc
    if why is not None:
        os.close(fd)
        raise InputError(why)
    chunks: list[bytes] = []
    size = 0
    with os.fdopen(fd, "rb", buffering=0) as fh:
        try:
            os.set_blocking(fd, True)
            while size <= max_bytes:
                chunk = fh.read(min(1 << 20, max_bytes + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        except OSError as exc:
            raise _read_error(path, exc) from exc
    if size > max_bytes:
        err = f"{path}: over the {max_bytes:,}-byte limit for one file (it grew while being read)"
        raise InputError(err)
    return b"".join(chunks)


def read_text(path: Path, *, max_bytes: int = MAX_BYTES) -> str:
    """Read a UTF-8 regular file, refusing binary, non-UTF-8, empty and oversized files."""
    return _decode(read_bytes(path, max_bytes=max_bytes), str(path))


def _write_error(path: Path, exc: OSError) -> InputError:
    hint = " (the disk is full)" if exc.errno == errno.ENOSPC else ""
    return InputError(f"{path}: cannot write: {exc.strerror or exc}{hint}")


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` all at once: a temporary file beside it, then a rename.

    A failed write (disk full, no permission) leaves a previous ``path`` as it was. An existing
    ``path`` that is not a regular file (``/dev/stdout``, a FIFO) is written to directly.

    Raises:
        InputError: ``path`` is a directory, its directory does not exist, or writing failed.
    """
    try:
        info: os.stat_result | None = path.stat()
    except FileNotFoundError:
        info = None
    except OSError as exc:
        raise _write_error(path, exc) from exc
    if info is not None and stat.S_ISDIR(info.st_mode):
        err = f"{path}: is a directory; give the path of a file to write"
        raise InputError(err)
    data = text.encode("utf-8", "surrogatepass")
    if info is not None and not stat.S_ISREG(info.st_mode):
        try:
            with path.open("wb") as fh:
                fh.write(data)
        except OSError as exc:
            raise _write_error(path, exc) from exc
        return
    if not path.parent.is_dir():
        err = f"{path}: cannot write: the directory {path.parent} does not exist"
        raise InputError(err)
    tmp: Path | None = None
    try:
        # NOTE: not tempfile.mkstemp: its 0600 would need os.umask() to widen, which is
        # process-wide and racy under threads; O_EXCL with 0666 lets the kernel apply the umask
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        if info is not None:
            os.chmod(tmp, stat.S_IMODE(info.st_mode))
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise _write_error(path, exc) from exc
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


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


def lone_surrogate(value: object, path: str = "") -> tuple[str, str] | None:
    """``(field, character)`` of the first lone surrogate in parsed JSON, or None.

    JSON may escape one (``"\\ud800"``); the string it gives is not Unicode text and cannot be
    written as UTF-8.
    """
    if isinstance(value, str):
        found = _SURROGATE.search(value)
        return (path or "value", found.group()) if found else None
    if isinstance(value, dict):
        for k, v in value.items():
            hit = lone_surrogate(k, f"{path}.{k}" if path else "(a key)")
            if hit is None:
                hit = lone_surrogate(v, f"{path}.{k}" if path else str(k))
            if hit is not None:
                return hit
    elif isinstance(value, list):
        for i, v in enumerate(value):
            hit = lone_surrogate(v, f"{path}[{i}]")
            if hit is not None:
                return hit
    return None


def iter_json_lines(path: Path, text: str) -> Iterator[tuple[str, dict[str, object]] | BadRecord]:
    """``(where, object)`` for each JSON object line of a JSONL text, a BadRecord for others.

    Records are split on ``\\n`` only (a trailing ``\\r`` is dropped): U+2028, U+2029 and U+0085
    are valid inside JSON strings, and ``str.splitlines`` would split a record there. A line
    holding a lone surrogate escape (``"\\ud800"``: JSON that is not Unicode text) is a BadRecord.
    """
    for lineno, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            yield BadRecord(where, f"{where}: malformed JSON: {exc.msg} (column {exc.colno})")
            continue
        except RecursionError:
            yield BadRecord(where, f"{where}: malformed JSON: nested too deeply")
            continue
        if not isinstance(record, dict):
            yield BadRecord(where, f"{where}: expected a JSON object, got {type(record).__name__}")
            continue
        hit = lone_surrogate(record)
        if hit is not None:
            field, char = hit
            err = (f"{where}: field {field!r} holds a lone surrogate \\u{ord(char):04x}, which is "
                   f"not a Unicode character (text mangled by an encoder); fix or drop it")
            yield BadRecord(where, err)
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


def _iter_csv(path: Path, text: str, max_bytes: int) -> Iterator[Document | BadRecord]:
    # NOTE: the csv module refuses fields over 131,072 characters by default (a csv.Error that
    # stopped the whole batch); a field may be as large as a file may be
    csv.field_size_limit(max(csv.field_size_limit(), max_bytes))
    dialect = "excel-tab" if path.suffix.lower() == ".tsv" else "excel"
    reader = csv.DictReader(io.StringIO(text, newline=""), dialect=dialect)
    try:
        fieldnames = reader.fieldnames
    except csv.Error as exc:
        yield BadRecord(f"{path}:1", f"{path}:1: unreadable CSV header: {exc}")
        return
    if fieldnames is None or "mt" not in fieldnames:
        yield BadRecord(f"{path}:1", f"{path}:1: the header has no 'mt' column")
        return
    rows = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            rows += 1
            # NOTE: line_num still counts the lines before the record that failed
            where = f"{path}:{reader.line_num + 1}"
            yield BadRecord(where, f"{where}: unreadable CSV record: {exc}")
            continue
        rows += 1
        where = f"{path}:{reader.line_num}"
        if None in row:
            yield BadRecord(where, f"{where}: more fields than the header has")
            continue
        try:
            yield record_to_document(row, where, f"{path.stem}:{reader.line_num}")
        except InputError as exc:
            yield BadRecord(where, str(exc))
    if not rows:
        yield BadRecord(str(path), f"{path}: no records after the header: there is nothing to check")


def iter_records(path: Path, *, max_bytes: int = MAX_BYTES) -> Iterator[Document | BadRecord]:
    """Documents (or BadRecords) from a JSONL or CSV file, in file order."""
    text = read_text(path, max_bytes=max_bytes)
    if path.suffix.lower() in (".csv", ".tsv"):
        yield from _iter_csv(path, text, max_bytes)
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
