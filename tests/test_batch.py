"""Batch scoring: resumable store, outputs in input order, bad records, CSV, gate, exit codes."""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import ABC, FIXTURES, HILL, ROOT
from mtqa.batch import (
    ResultStore,
    config_signature,
    content_key,
    default_store,
    iter_inputs,
    load_ref_map,
    read_results,
    run_batch,
)
from mtqa.cli import app
from mtqa.config import Settings
from mtqa.errors import ConfigError
from mtqa.pipeline import Checker
from mtqa.types import BadRecord, Document, Report

runner = CliRunner()
STRUCTURE = Settings(checkers=("structure",))
FAST = ["--checkers", "structure"]
BAD_JSONL = FIXTURES / "inputs" / "batch.jsonl"


def _paragraphs() -> list[tuple[str, str]]:
    """(id, text) for every paragraph of the two seed articles: real news text, some garbled."""
    out = []
    for path in (ABC, HILL):
        paras = [p for p in path.read_text(encoding="utf-8").split("\n") if p.strip()]
        out += [(f"{path.stem[:3]}-{i:02d}", p) for i, p in enumerate(paras)]
    return out


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "in" / "paragraphs.jsonl"
    path.parent.mkdir()
    lines = [json.dumps({"id": i, "mt": t, "title": f"para {i}"}, ensure_ascii=False)
             for i, t in _paragraphs()]
    lines.insert(7, '{"id": "broken", "mt": ')  # line 8 is malformed
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_outputs_in_input_order_with_bad_line_reported(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "r.jsonl"
    summary = run_batch([corpus], out, STRUCTURE, chunk_size=8)
    lines = _lines(out)
    expected = [i for i, _ in _paragraphs()]
    expected.insert(7, None)
    assert [x["id"] for x in lines] == expected
    assert lines[7]["error"] == f"{corpus}:8: malformed JSON: Expecting value (column 24)"
    assert lines[7]["origin"] == f"{corpus}:8"
    assert all(x["schema"] == "mtqa.report/1" for x in lines)
    assert lines[0]["meta"] == {"title": "para 000-00"}
    texts = dict(_paragraphs())
    for x in lines:
        if "error" not in x:
            for s in x["spans"]:  # type: ignore[attr-defined]
                assert texts[str(x["id"])][s["start"] : s["end"]] == s["text"]
    assert [r.origin for r in summary.errors] == [f"{corpus}:8"]
    assert summary.scored + summary.reused == len(expected) - 1
    assert summary.passed + summary.failed == len(expected) - 1
    assert summary.failed > 0 and summary.passed > 0
    assert not out.with_name("r.jsonl.partial").exists()
    assert default_store(out).exists()


def test_same_lines_as_check_json(tmp_path: Path) -> None:
    """A batch line is the document of ``check --format json`` (plus the schema)."""
    out = tmp_path / "r.jsonl"
    run_batch([ABC], out, STRUCTURE)
    (line,) = _lines(out)
    result = runner.invoke(app, ["check", str(ABC), "-f", "json", *FAST])
    (doc,) = json.loads(result.stdout)["documents"]
    assert line.pop("schema") == "mtqa.report/1"
    assert line == doc


def test_rerun_reuses_everything_and_writes_identical_output(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    first = run_batch([corpus], out, STRUCTURE, chunk_size=8)
    before = out.read_bytes()
    second = run_batch([corpus], out, STRUCTURE, chunk_size=8)
    assert first.scored > 0 and first.reused == 0
    assert second.scored == 0 and second.reused == first.scored + _duplicates()
    assert out.read_bytes() == before


def _duplicates() -> int:
    texts = [t for _, t in _paragraphs()]
    return len(texts) - len(set(texts))


def test_identical_content_is_scored_once_and_keeps_its_own_id(tmp_path: Path) -> None:
    path = tmp_path / "dup.jsonl"
    text = "The minister said the talks were successful. even as protests continued."
    path.write_text(json.dumps({"id": "a", "mt": text, "source": "x"}) + "\n"
                    + json.dumps({"id": "b", "mt": text, "source": "y"}) + "\n", encoding="utf-8")
    summary = run_batch([path], tmp_path / "r.jsonl", STRUCTURE)
    assert summary.scored == 1 and summary.reused == 0
    a, b = _lines(tmp_path / "r.jsonl")
    assert (a["id"], a["meta"]) == ("a", {"source": "x"})
    assert (b["id"], b["meta"]) == ("b", {"source": "y"})
    assert a["spans"] == b["spans"] and a["spans"]


RESUME_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from mtqa.batch import run_batch
    from mtqa.checkers.structure import StructureChecker
    from mtqa.config import Settings
    from mtqa.pipeline import Checker

    class Dying(StructureChecker):
        seen = 0
        def check(self, docs):
            Dying.seen += len(docs)
            if Dying.seen > int(sys.argv[3]):
                os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no finally: like kill -9
            return super().check(docs)

    checker = Checker(Settings(checkers=("structure",)), checkers={"structure": Dying()})
    run_batch([Path(sys.argv[1])], Path(sys.argv[2]), checker=checker, chunk_size=8)
""")


def test_sigkill_mid_run_then_resume_loses_and_duplicates_nothing(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed" / "r.jsonl"
    proc = subprocess.run([sys.executable, "-c", RESUME_SCRIPT, str(corpus), str(out), "20"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    # chunks of 8: the third chunk (documents 17-24) was being checked when the process died
    store = default_store(out)
    with sqlite3.connect(store) as db:
        assert db.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 16
    assert not out.exists()
    partial = _lines(out.with_name("r.jsonl.partial"))
    assert len(partial) == 17  # 16 documents and the bad line 8, flushed after each chunk
    assert len({json.dumps(x, sort_keys=True) for x in partial}) == 17

    resumed = run_batch([corpus], out, STRUCTURE, chunk_size=8)
    assert resumed.reused == 16
    assert resumed.scored == len(set(t for _, t in _paragraphs())) - 16
    clean = tmp_path / "clean" / "r.jsonl"
    run_batch([corpus], clean, STRUCTURE, chunk_size=8)
    assert out.read_bytes() == clean.read_bytes()
    ids = [x["id"] for x in _lines(out) if "error" not in x]
    assert len(ids) == len(set(ids)) == len(_paragraphs())


class _Interrupting(Checker):
    """Raises KeyboardInterrupt (Ctrl-C) on the n-th call of check_many."""

    def __init__(self, n: int) -> None:
        super().__init__(STRUCTURE)
        self.calls, self.n = 0, n

    def check_many(self, docs: object) -> Report:
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt
        return super().check_many(docs)  # type: ignore[arg-type]


def test_ctrl_c_keeps_committed_chunks(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    with pytest.raises(KeyboardInterrupt), _Interrupting(3) as checker:
        run_batch([corpus], out, checker=checker, chunk_size=5)
    with ResultStore(default_store(out)) as db:
        assert db.count() == 10
    assert not out.exists()
    resumed = run_batch([corpus], out, STRUCTURE, chunk_size=5)
    assert resumed.reused == 10


def test_ctrl_c_in_cli_exits_130(corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("mtqa.batch.run_batch", interrupted)
    result = runner.invoke(app, ["batch", str(corpus), "--out", str(tmp_path / "r.jsonl"), *FAST])
    assert result.exit_code == 130
    assert "run the same command again to continue" in result.stderr


class _Exploding(Checker):
    """check_many fails whenever a document contains BOOM (as a crash outside a checker would)."""

    def check_many(self, docs: object) -> Report:
        docs = list(docs)  # type: ignore[call-overload]
        if any("BOOM" in d.mt for d in docs):
            raise RuntimeError("segmenter crashed")
        return super().check_many(docs)


def test_a_document_that_crashes_becomes_an_error_line_and_is_retried(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(json.dumps({"id": f"d{i}", "mt": f"Document number {i} is fine."
                                          + (" BOOM" if i == 2 else "")}) for i in range(5)),
                    encoding="utf-8")
    out = tmp_path / "r.jsonl"
    with _Exploding(STRUCTURE) as checker:
        summary = run_batch([path], out, checker=checker, chunk_size=5)
    lines = _lines(out)
    assert [x["id"] for x in lines] == ["d0", "d1", "d2", "d3", "d4"]
    assert lines[2]["error"] == f"{path}:3: checking failed: RuntimeError: segmenter crashed"
    assert summary.scored == 4 and len(summary.errors) == 1
    again = run_batch([path], out, STRUCTURE)  # not stored: the next run checks it again
    assert again.scored == 1 and again.reused == 4 and not again.errors


def test_policy_change_regates_without_rescoring(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    strict = run_batch([corpus], out, STRUCTURE)
    lenient = tmp_path / "lenient.toml"
    lenient.write_text('schema = "mtqa.policy/1"\nname = "lenient"\nmin_score = 1.0\n',
                       encoding="utf-8")
    relaxed = run_batch([corpus], out, Settings(checkers=("structure",), policy=str(lenient)))
    assert relaxed.scored == 0
    assert relaxed.failed < strict.failed
    assert {x["verdict"]["policy"] for x in _lines(out) if "error" not in x} == {"lenient"}  # type: ignore[index]


def test_settings_change_rescores(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    run_batch([ABC], out, STRUCTURE)
    other = Settings(checkers=("structure",), language="en-GB")
    assert config_signature(other) != config_signature(STRUCTURE)
    assert run_batch([ABC], out, other).scored == 1
    assert run_batch([ABC], out, STRUCTURE).scored == 0


def test_refitted_calibration_rescores(tmp_path: Path) -> None:
    from mtqa.calibrate import load_calibration

    out = tmp_path / "r.jsonl"
    assert run_batch([ABC], out, STRUCTURE).scored == 1
    data = load_calibration().to_dict()
    data["models"]["nolm-free"]["intercept"] += 0.1  # type: ignore[index]
    refit = tmp_path / "refit.json"
    refit.write_text(json.dumps(data), encoding="utf-8")
    moved = Settings(checkers=("structure",), calibration=str(refit))
    assert config_signature(moved, "a") != config_signature(moved, "b")
    assert run_batch([ABC], out, moved).scored == 1
    # same path, re-fitted again: the fingerprint, not the path, keys the store
    data["models"]["nolm-free"]["intercept"] += 0.1  # type: ignore[index]
    refit.write_text(json.dumps(data), encoding="utf-8")
    assert run_batch([ABC], out, moved).scored == 1
    assert run_batch([ABC], out, moved).scored == 0


def test_content_key_ignores_id_and_meta_but_not_refs() -> None:
    a = Document("a", "Text.", meta={"x": 1})
    assert content_key(a) == content_key(Document("b", "Text."))
    assert content_key(a) != content_key(Document("a", "Text.", ref=("Ref.",)))
    assert content_key(a) != content_key(Document("a", "Text.", src="源"))


def test_csv_summary_matches_jsonl(corpus: Path, tmp_path: Path) -> None:
    out, table = tmp_path / "r.jsonl", tmp_path / "r.csv"
    run_batch([corpus], out, STRUCTURE, csv_out=table)
    with table.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    lines = _lines(out)
    assert len(rows) == len(lines)
    assert list(rows[0]) == ["id", "origin", "score", "fluency", "passed", "minor", "major",
                             "critical", "reasons", "error"]
    for row, line in zip(rows, lines):
        if "error" in line:
            assert row["error"] == line["error"] and row["passed"] == "" and row["id"] == ""
            continue
        assert row["id"] == line["id"]
        assert float(row["score"]) == pytest.approx(line["score"])
        verdict = line["verdict"]
        assert row["passed"] == ("true" if verdict["passed"] else "false")  # type: ignore[index]
        for sev in ("minor", "major", "critical"):
            assert int(row[sev]) == sum(1 for s in line["spans"] if s["severity"] == sev)  # type: ignore[attr-defined]
        rules = [r["rule"] for r in verdict["reasons"]]  # type: ignore[index]
        assert [r.split("=")[0] for r in row["reasons"].split("; ") if r] == rules


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_directory_inputs_pair_references_by_name_and_by_map(tmp_path: Path) -> None:
    root = tmp_path / "articles"
    _write(root / "a.txt", ABC.read_text(encoding="utf-8"))
    _write(root / "a.ref.txt", HILL.read_text(encoding="utf-8"))
    _write(root / "sub" / "b.html", (FIXTURES / "inputs" / "article.html").read_text(encoding="utf-8"))
    _write(root / "c.txt", "")
    refmap = _write(tmp_path / "refs.json", json.dumps({"sub/b": "refs/b-ref.txt"}))
    _write(tmp_path / "refs" / "b-ref.txt", "The reference of b.")
    items = list(iter_inputs([root], ref_map=load_ref_map(refmap)))
    docs = {i.id: i for i in items if isinstance(i, Document)}
    bad = [i for i in items if isinstance(i, BadRecord)]
    assert sorted(docs) == ["a", "sub/b"]
    assert docs["a"].ref == (HILL.read_text(encoding="utf-8"),)
    assert docs["sub/b"].ref == ("The reference of b.",)
    assert [b.origin for b in bad] == [str(root / "c.txt")]
    assert "empty input" in bad[0].message


def test_unreadable_files_become_rows_and_the_rest_is_checked(tmp_path: Path) -> None:
    latin1 = FIXTURES / "inputs" / "latin1.txt"
    summary = run_batch([latin1, tmp_path / "missing.txt", HILL], tmp_path / "r.jsonl", STRUCTURE)
    assert [r.id for r in summary.rows] == [None, None, HILL.stem]
    assert "not UTF-8" in (summary.rows[0].error or "")
    assert "cannot read" in (summary.rows[1].error or "")
    assert summary.passed == 1


def test_ref_map_csv_and_errors(tmp_path: Path) -> None:
    good = _write(tmp_path / "m.csv", "id,ref\nx,r1.txt\nx,r2.txt\n")
    assert load_ref_map(good) == {"x": (tmp_path / "r1.txt", tmp_path / "r2.txt")}
    with pytest.raises(ConfigError, match="needs 'id' and 'ref' columns"):
        load_ref_map(_write(tmp_path / "bad.csv", "name,path\nx,y\n"))
    with pytest.raises(ConfigError, match="must be a JSON object"):
        load_ref_map(_write(tmp_path / "bad.json", "[1]"))
    missing = _write(tmp_path / "in.jsonl", json.dumps({"id": "x", "mt": "Some text here."}))
    (item,) = iter_inputs([missing], ref_map=load_ref_map(good))
    assert isinstance(item, BadRecord) and "r1.txt" in item.message


def test_progress_reaches_total(corpus: Path, tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    run_batch([corpus], tmp_path / "r.jsonl", STRUCTURE, chunk_size=10,
              on_progress=lambda done, total: seen.append((done, total)))
    total = len(_paragraphs()) + 1
    assert seen[0] == (1, total)  # the bad line is done before any checking
    assert seen[-1] == (total, total)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_store_refuses_foreign_file(tmp_path: Path) -> None:
    bogus = _write(tmp_path / "x.sqlite", "not a database at all " * 100)
    with pytest.raises(ConfigError, match="cannot use this file as an mtqa result store"):
        ResultStore(bogus)


def test_store_uses_wal(tmp_path: Path) -> None:
    run_batch([HILL], tmp_path / "r.jsonl", STRUCTURE)
    with sqlite3.connect(default_store(tmp_path / "r.jsonl")) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# -- command line -----------------------------------------------------------------------------

EXIT_CASES = [
    ("passes", [HILL], [], 0),
    ("fails-gate", [ABC], [], 1),
    ("no-gate", [ABC], ["--no-gate"], 0),
    ("bad-records", [BAD_JSONL], [], 2),
    ("bad-records-beat-gate", [BAD_JSONL, ABC], [], 2),
    ("bad-text-file", [FIXTURES / "inputs" / "latin1.txt", HILL], [], 2),
]


@pytest.mark.parametrize(("inputs", "flags", "code"), [c[1:] for c in EXIT_CASES],
                         ids=[c[0] for c in EXIT_CASES])
def test_batch_exit_codes(inputs: Sequence[Path], flags: list[str], code: int, tmp_path: Path) -> None:
    args = ["batch", *map(str, inputs), "--out", str(tmp_path / "r.jsonl"), *FAST, *flags]
    result = runner.invoke(app, args)
    assert result.exit_code == code, result.stderr


def test_batch_cli_writes_outputs_and_summary_table(corpus: Path, tmp_path: Path) -> None:
    out, table, html_dir = tmp_path / "r.jsonl", tmp_path / "r.csv", tmp_path / "html"
    store = tmp_path / "elsewhere" / "s.sqlite"
    result = runner.invoke(app, ["batch", str(corpus), "--out", str(out), "--csv", str(table),
                                 "--html", str(html_dir), "--store", str(store), *FAST])
    assert result.exit_code == 2  # line 8 is malformed
    assert result.stdout == ""
    err = result.stderr
    n = len(_paragraphs())
    for label, value in (("inputs", n + 1), ("input errors", 1), ("reused from the store", 0)):
        assert any(label in line and line.rstrip(" │").endswith(str(value))
                   for line in err.splitlines()), (label, err)
    assert f"{corpus}:8: malformed JSON" in err
    assert "90-100" in err and "median" in err
    assert store.exists() and not default_store(out).exists()
    assert (html_dir / "index.html").exists()
    assert len(list(html_dir.glob("0*.html"))) == n
    quiet = runner.invoke(app, ["batch", str(corpus), "--out", str(out), "--store", str(store),
                                "--quiet", *FAST])
    assert quiet.exit_code == 2 and quiet.stderr == ""


def test_gate_command_explains_every_reason(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    run_batch([ABC, HILL], out, STRUCTURE)
    result = runner.invoke(app, ["gate", str(out)])
    assert result.exit_code == 1
    text = result.stdout
    assert f"FAIL {ABC.stem}" in text and f"PASS {HILL.stem}" in text
    (line,) = [x for x in _lines(out) if x["id"] == ABC.stem]
    spans = line["spans"]
    for reason in line["verdict"]["reasons"]:  # type: ignore[index]
        assert f"{reason['rule']}: {reason['message']} (measured {reason['value']:g}, " \
               f"threshold {reason['threshold']:g})" in text
        for i in reason["spans"]:
            assert f"#{i} {spans[i]['text']}" in text  # type: ignore[index]
    failed = runner.invoke(app, ["gate", str(out), "--failed-only"])
    assert "PASS" not in failed.stdout and "FAIL" in failed.stdout


def test_gate_reads_check_json_and_error_lines(tmp_path: Path) -> None:
    report = tmp_path / "hill.json"
    runner.invoke(app, ["check", str(HILL), "-f", "json", "-o", str(report), *FAST])
    ok = runner.invoke(app, ["gate", str(report)])
    assert ok.exit_code == 0 and f"PASS {HILL.stem}" in ok.stdout
    out = tmp_path / "r.jsonl"
    run_batch([BAD_JSONL], out, STRUCTURE)
    result = runner.invoke(app, ["gate", str(out)])
    assert result.exit_code == 2
    assert f"ERROR {BAD_JSONL}:2: malformed JSON" in result.stdout
    items = list(read_results(out))
    assert [type(i).__name__ for i in items] == ["DocumentReport", "BadRecord", "BadRecord",
                                                "DocumentReport", "BadRecord"]


def test_gate_rejects_lines_that_are_not_results(tmp_path: Path) -> None:
    junk = _write(tmp_path / "junk.jsonl", '{"mt": "not a result"}\n')
    result = runner.invoke(app, ["gate", str(junk)])
    assert result.exit_code == 2 and "not an mtqa.report/1 document" in result.stdout


def test_python_api_run_batch(tmp_path: Path) -> None:
    import mtqa

    summary = mtqa.run_batch([ABC, HILL], tmp_path / "r.jsonl", mtqa.Settings(checkers=("structure",)))
    assert isinstance(summary, mtqa.BatchSummary)
    assert (summary.passed, summary.failed, summary.errors) == (1, 1, ())
    assert os.fspath(tmp_path / "r.jsonl") in summary.outputs
