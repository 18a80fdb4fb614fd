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
