"""Loaders: every bad input gets a clear error naming the file (and line); good records survive."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtqa.errors import InputError
from mtqa.io import load, load_text, read_text
from mtqa.types import BadRecord, Document

INPUTS = Path(__file__).resolve().parent.parent / "fixtures" / "inputs"

BAD_FILES = [
    ("empty", "empty.txt", "empty input"),
    ("binary", "binary.bin", "binary data"),
    ("latin1", "latin1.txt", "not UTF-8"),
]


@pytest.mark.parametrize(("name", "message"), [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES])
def test_bad_files_raise_input_error_naming_the_file(name: str, message: str) -> None:
    with pytest.raises(InputError) as info:
        read_text(INPUTS / name)
    assert str(INPUTS / name) in str(info.value)
    assert message in str(info.value)


def test_latin1_error_names_line_and_fix() -> None:
    with pytest.raises(InputError, match=r"latin1\.txt:1: not UTF-8 \(byte 0xe9.*iconv"):
        read_text(INPUTS / "latin1.txt")


def test_huge_file_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.txt"
    big.write_text("word " * 1000, encoding="utf-8")
    with pytest.raises(InputError, match="over the 100-byte limit"):
        read_text(big, max_bytes=100)


def test_jsonl_bad_lines_reported_and_good_ones_kept() -> None:
    items = list(load(INPUTS / "batch.jsonl"))
    docs = [i for i in items if isinstance(i, Document)]
    bad = [i for i in items if isinstance(i, BadRecord)]
    assert [d.id for d in docs] == ["ok-1", "ok-2"]
    assert [b.origin.rsplit(":", 1)[1] for b in bad] == ["2", "3", "5"]
    assert "malformed JSON" in bad[0].message
    assert "missing field 'mt'" in bad[1].message
    assert "expected a JSON object" in bad[2].message
    assert all(str(INPUTS / "batch.jsonl") in b.message for b in bad)
    assert docs[0].meta["url"] == "https://example.org/a"
    assert docs[1].ref == ("Officials said the plan would be announced on Monday.",)


def test_jsonl_ref_list_and_wrong_types(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text('{"mt": "A text.", "ref": ["One.", "Two."]}\n{"id": 3, "mt": 5}\n'
                    '{"mt": "   "}\n', encoding="utf-8")
    items = list(load(path))
    assert isinstance(items[0], Document) and items[0].ref == ("One.", "Two.")
    assert items[0].id == "r:1"
    assert isinstance(items[1], BadRecord) and "'mt' must be a string" in items[1].message
    assert isinstance(items[2], BadRecord) and "'mt' is empty" in items[2].message


def test_csv_records(tmp_path: Path) -> None:
    path = tmp_path / "b.csv"
    path.write_text('id,mt,ref,site\na,"Hello there, world.",,x\nb,,,y\n', encoding="utf-8")
    items = list(load(path))
    assert isinstance(items[0], Document) and items[0].meta["site"] == "x" and items[0].ref == ()
    assert isinstance(items[1], BadRecord) and items[1].origin.endswith(":3")


def test_html_article_extracted() -> None:
    doc = load_text(INPUTS / "article.html")
    assert "A powerful storm hit the northern coast" in doc.mt
    assert "Home" not in doc.mt.split()  # navigation dropped
    assert doc.meta["title"] == "Storm hits coast"


def test_text_offsets_refer_to_decoded_string(tmp_path: Path) -> None:
    path = tmp_path / "bom.txt"
    path.write_bytes("\ufeffFirst line.\n".encode())
    assert load_text(path).mt == "First line.\n"


# -- issue 15: hostile inputs -----------------------------------------------------------------

SEPARATORS = [("line-separator", "\u2028"), ("paragraph-separator", "\u2029"), ("next-line", "\u0085")]


@pytest.mark.parametrize("char", [c for _, c in SEPARATORS], ids=[n for n, _ in SEPARATORS])
@pytest.mark.parametrize("escaped", [False, True], ids=["raw", "escaped"])
def test_jsonl_records_split_on_newline_only(char: str, escaped: bool, tmp_path: Path) -> None:
    """U+2028/U+2029/U+0085 are valid in JSON strings: no record break, no line-number shift."""
    inner = f"\\u{ord(char):04x}" if escaped else char
    path = tmp_path / "s.jsonl"
    path.write_text(f'{{"id": "a", "mt": "One{inner}two."}}\r\n{{"mt": \n'
                    f'{{"id": "c", "mt": "Three."}}\n', encoding="utf-8")
    items = list(load(path))
    assert isinstance(items[0], Document) and items[0].mt == f"One{char}two."
    assert isinstance(items[1], BadRecord) and items[1].origin == f"{path}:2"
    assert isinstance(items[2], Document) and items[2].origin == f"{path}:3"


SURROGATES = [
    ("mt", '{"id": "s", "mt": "bad \\ud800 text"}', "'mt'"),
    ("id", '{"id": "x\\udc00", "mt": "Good text."}', "'id'"),
    ("meta", '{"mt": "Good text.", "site": {"k": ["\\ud83d"]}}', "'site.k[0]'"),
    ("key", '{"mt": "Good text.", "\\ud800": 1}', "(a key)"),
]


@pytest.mark.parametrize(("line", "field"), [c[1:] for c in SURROGATES], ids=[c[0] for c in SURROGATES])
def test_lone_surrogate_is_a_bad_record_and_the_rest_loads(line: str, field: str, tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text('{"id": "ok", "mt": "A good record."}\n' + line + "\n"
                    '{"id": "pair", "mt": "An emoji \\ud83d\\ude00 is fine."}\n', encoding="utf-8")
    items = list(load(path))
    assert isinstance(items[0], Document) and isinstance(items[2], Document)
    assert items[2].mt == "An emoji \U0001f600 is fine."
    bad = items[1]
    assert isinstance(bad, BadRecord) and bad.origin == f"{path}:2"
    assert "lone surrogate" in bad.message and field in bad.message


def test_csv_field_over_the_default_csv_limit_loads(tmp_path: Path) -> None:
    """csv's default field limit is 131,072 characters: a long article must not stop the file."""
    import csv

    path = tmp_path / "big.csv"
    with path.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerows([["id", "mt"], ["a", "Word. " * 30_000], ["b", "A normal text."]])
    items = list(load(path))
    assert [i.id for i in items if isinstance(i, Document)] == ["a", "b"]
    assert len(items[0].mt) == 180_000  # type: ignore[union-attr]


def test_csv_error_in_a_record_names_the_line_and_keeps_the_rest(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import csv

    path = tmp_path / "b.csv"
    path.write_text("id,mt\na,Short text.\nb," + "x" * 300 + "\nc,Another text.\n", encoding="utf-8")
    real = csv.field_size_limit
    monkeypatch.setattr(csv, "field_size_limit", lambda *a: real(100) if a else 100)
    try:
        items = list(load(path))
    finally:
        real(131_072)
    assert [i.id for i in items if isinstance(i, Document)] == ["a", "c"]
    bad = [i for i in items if isinstance(i, BadRecord)]
    assert [b.origin for b in bad] == [f"{path}:3"] and "field larger" in bad[0].message


def test_header_only_csv_is_a_bad_record(tmp_path: Path) -> None:
    path = tmp_path / "h.csv"
    path.write_text("id,mt\n", encoding="utf-8")
    items = list(load(path))
    assert len(items) == 1 and isinstance(items[0], BadRecord)
    assert "no records after the header" in items[0].message and str(path) in items[0].message


def test_fifo_and_devices_are_refused_without_hanging(tmp_path: Path) -> None:
    """A FIFO blocks a plain read forever and /dev/zero never ends (both have st_size 0)."""
    import os

    fifo = tmp_path / "p.txt"
    os.mkfifo(fifo)
    for path, kind in ((fifo, "FIFO"), (Path("/dev/zero"), "character device"),
                       (tmp_path, "directory")):
        with pytest.raises(InputError, match=f"{kind}.*regular files only") as info:
            read_text(path)
        assert str(path) in str(info.value)


def test_read_is_bounded_whatever_st_size_says(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    path = tmp_path / "grows.txt"
    path.write_text("word " * 100, encoding="utf-8")
    real = os.fstat

    class Small:
        def __init__(self, st: os.stat_result) -> None:
            self.st_mode, self.st_size = st.st_mode, 10

    monkeypatch.setattr(os, "fstat", lambda fd: Small(real(fd)))
    with pytest.raises(InputError, match="over the 100-byte limit"):
        read_text(path, max_bytes=100)


def test_utf16_and_cp1252_get_the_right_iconv_command(tmp_path: Path) -> None:
    utf16 = tmp_path / "u.txt"
    utf16.write_bytes("Hello there, world.\n".encode("utf-16"))
    with pytest.raises(InputError, match=r"not UTF-8 \(looks like UTF-16.*iconv -f UTF-16 -t UTF-8"):
        read_text(utf16)
    smart = tmp_path / "q.txt"
    smart.write_bytes("\u201cQuoted\u201d \u2014 text.\n".encode("cp1252"))
    with pytest.raises(InputError, match=r"not UTF-8.*iconv -f cp1252 -t utf-8"):
        read_text(smart)
    with pytest.raises(InputError, match=r"iconv -f latin1 -t utf-8"):
        read_text(INPUTS / "latin1.txt")


# -- outputs ----------------------------------------------------------------------------------


def _check_out(out: str, tmp_path: Path) -> tuple[int, str]:
    from typer.testing import CliRunner

    from mtqa.cli import app

    text = tmp_path / "a.txt"
    text.write_text("A short text to check here.\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["check", str(text), "--checkers", "structure", "-f", "json",
                                      "-o", out])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stderr


OUTPUT_ERRORS = [
    ("missing-dir", "missing/dir/x.json", "does not exist"),
    ("a-directory", ".", "is a directory"),
    ("disk-full", "/dev/full", "No space left on device"),
]


@pytest.mark.parametrize(("out", "message"), [c[1:] for c in OUTPUT_ERRORS], ids=[c[0] for c in OUTPUT_ERRORS])
def test_check_output_errors_exit_2_with_a_message(out: str, message: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, stderr = _check_out(out, tmp_path)
    assert code == 2 and message in stderr and "Traceback" not in stderr


def test_a_failed_write_leaves_the_previous_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import os

    out = tmp_path / "report.json"
    out.write_text("previous\n", encoding="utf-8")
    real = os.replace

    def full(src: str, dst: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    code, stderr = _check_out(str(out), tmp_path)
    monkeypatch.setattr(os, "replace", real)
    assert code == 2 and "the disk is full" in stderr
    assert out.read_text(encoding="utf-8") == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "report.json"]  # no temp left


def test_written_files_get_the_usual_mode(tmp_path: Path) -> None:
    import os
    import stat

    from mtqa.io import write_text_atomic

    old = os.umask(0o022)
    try:
        new, kept = tmp_path / "new.json", tmp_path / "kept.json"
        kept.write_text("x", encoding="utf-8")
        kept.chmod(0o600)
        write_text_atomic(new, "{}\n")
        write_text_atomic(kept, "{}\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE(new.stat().st_mode) == 0o644
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600 and kept.read_text(encoding="utf-8") == "{}\n"


# -- fuzz: load -> check -> render never lets anything but mtqa's input errors escape ----------

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies
_NASTY = st.sampled_from(["\u2028", "\u2029", "\u0085", "\x1b]0;x\x07", "\x9b", "\r", "\t", "\x00",
                          "\ud800", "😀", "中文", "=HYPERLINK(1)", '"', "\\", "\n", " "])
_TEXT = st.lists(st.one_of(st.text(max_size=20), _NASTY), max_size=12).map("".join)
_VALUE = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), _TEXT,
                   st.lists(_TEXT, max_size=3))
_RECORD = st.fixed_dictionaries({"mt": st.one_of(_TEXT, _VALUE)},
                                optional={"id": _VALUE, "ref": _VALUE, "src": _VALUE, "extra": _VALUE})


def _strict(text: str) -> object:
    import json

    def refuse(name: str) -> object:
        raise ValueError(name)

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def structure_checker() -> object:
    from mtqa.config import Settings
    from mtqa.pipeline import Checker

    with Checker(Settings(checkers=("structure",))) as checker:
        yield checker


@hypothesis.settings(max_examples=60, deadline=None,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(records=st.lists(st.one_of(_RECORD, _VALUE), min_size=1, max_size=4),
                  junk=st.binary(max_size=64), suffix=st.sampled_from([".jsonl", ".csv", ".txt"]))
def test_fuzz_load_check_render(records: list[object], junk: bytes, suffix: str,
                                structure_checker: object, tmp_path_factory: pytest.TempPathFactory) -> None:
    import csv as csv_module
    import io as io_module
    import json

    from mtqa.render.csv import render_csv
    from mtqa.render.html import render_html
    from mtqa.render.json import render_json, render_jsonl_line
    from mtqa.render.terminal import render_terminal
    from mtqa.types import BatchRow, Report

    path = tmp_path_factory.mktemp("fuzz") / f"in{suffix}"
    if suffix == ".jsonl":
        data = "\n".join(json.dumps(r, ensure_ascii=bool(i % 2)) for i, r in enumerate(records))
        path.write_bytes(data.encode("utf-8", "surrogatepass") + b"\n" + junk)
    elif suffix == ".csv":
        buf = io_module.StringIO(newline="")
        writer = csv_module.writer(buf)
        writer.writerow(["id", "mt"])
        writer.writerows([[str(r), str(r.get("mt") if isinstance(r, dict) else r)] for r in records])
        path.write_bytes(buf.getvalue().encode("utf-8", "surrogatepass") + junk)
    else:
        path.write_bytes(str(records[0]).encode("utf-8", "surrogatepass") + junk)
    try:
        items = list(load(path))
    except InputError as exc:
        assert str(path) in str(exc)
        return
    docs = [i for i in items if isinstance(i, Document)]
    for bad in (i for i in items if isinstance(i, BadRecord)):
        assert str(path) in bad.message
    report = structure_checker.check_many(docs)  # type: ignore[attr-defined]
    assert isinstance(report, Report)
    for d, doc in zip(report.documents, docs):
        assert all(doc.mt[s.start : s.end] == s.text for s in d.spans)
        _strict(render_jsonl_line(d))
    _strict(render_json(report))
    render_html(report).encode("utf-8")
    text = render_terminal(report, color=False)
    assert not [c for c in text if (ord(c) < 32 and c not in "\n\t") or 0x7F <= ord(c) <= 0x9F]
    render_csv([BatchRow(origin=d.id, id=d.id, score=d.score) for d in report.documents]).encode()
