"""Batch scoring: resumable store, outputs in input order, bad records, CSV, gate, exit codes."""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

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


def _tiny_lm_checker(path: Path, precision: str) -> Checker:
    """A Checker whose fluency checker reads with a tiny random Llama (``test_llama``) in the
    weight type ``precision`` resolves to here, as ``Settings(precision=...)`` would load it."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from mtqa.checkers.fluency import FluencyChecker
    from mtqa.llama import load_llama
    from mtqa.models import lm_precision

    vocab = {"<|endoftext|>": 0, **{f"w{i}": i for i in range(1, 97)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w1"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    model = load_llama(path, [path / "model.safetensors"], lm_precision(precision=precision))
    settings = Settings(checkers=("structure", "fluency"), precision=precision)
    return Checker(settings, checkers={"fluency": FluencyChecker(model=model, tokenizer=fast)})


def test_the_store_keys_on_the_precision_the_embedder_runs_in(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the language model the precision still changes the reference checker's
    embeddings: the key holds the resolved one, so ``auto`` on a bf16 machine is not read as
    ``auto`` on an fp32 one (and a run without the reference checker does not care)."""
    import torch

    settings = Settings(checkers=("structure", "reference"), precision="auto")

    def key(native: bool, s: Settings = settings) -> dict[str, Any]:
        caps = {"avx512_bf16": True} if native else {"avx2": True}
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps, raising=False)
        data: dict[str, Any] = json.loads(config_signature(s))["settings"]
        return data

    assert key(True)["embedder_precision"] == "bf16"
    assert key(False)["embedder_precision"] == "fp32"
    plain = Settings(checkers=("structure",), precision="auto")
    assert "embedder_precision" not in key(True, plain)


def test_the_store_keys_on_the_precision_the_lm_runs_in(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """fp32 results are not reused by a bf16 run nor the reverse; ``auto`` reuses the results
    of the precision it resolves to on this machine (issue 17)."""
    import torch

    from test_llama import _tiny_hf

    _, path = _tiny_hf(tmp_path / "tiny")
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": f"d{i}", "mt": t}) + "\n" for i, t in enumerate(
        ["w3 w5 w7 w9 w2 w4.", "w11 w12 w13, w14 w15 w16 w17.", "w40 w41 w42 w43."])),
        encoding="utf-8")
    out = tmp_path / "r.jsonl"

    def run(precision: str, native: bool) -> tuple[int, str]:
        caps = {"avx512_bf16": True} if native else {"avx2": True}
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps, raising=False)
        with _tiny_lm_checker(path, precision) as checker:
            summary = run_batch([src], out, checker=checker)
        return summary.scored, out.read_text(encoding="utf-8")

    assert run("fp32", native=True)[0] == 3
    scored, bf16 = run("bf16", native=True)
    assert scored == 3 and "|prec:bf16|" in bf16  # the fp32 results were not reused
    scored, lines = run("auto", native=True)
    assert scored == 0 and lines == bf16  # auto is bf16 here: the bf16 results
    scored, lines = run("auto", native=False)
    assert scored == 0 and "|prec:fp32|" in lines and "|prec:bf16|" not in lines
    assert run("fp32", native=False)[0] == 0


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


# -- issue 15: verdicts that cannot be trusted are errors ------------------------------------

FORGED = [
    ("passed-string", lambda d: d["verdict"].update(passed="false"), "'verdict.passed' must be true or false"),
    ("passed-missing", lambda d: d["verdict"].pop("passed"), "missing field 'verdict.passed'"),
    ("score-string", lambda d: d.update(score="99"), "'score' must be a finite number"),
    ("score-bool", lambda d: d.update(score=True), "'score' must be a finite number"),
    ("spans-dict", lambda d: d.update(spans={}), "'spans' must be a list"),
    ("span-start-float", lambda d: d["spans"][0].update(start=1.5), "'spans[0].start' must be an integer"),
    ("severity-unknown", lambda d: d["spans"][0].update(severity="fatal"), "must be one of minor"),
    ("reasons-string", lambda d: d["verdict"].update(reasons="none"), "'verdict.reasons' must be a list"),
    ("pass-with-blocking-reason", lambda d: d["verdict"].update(passed=True),
     "'verdict.passed' is true but the verdict lists blocking reasons"),
]


@pytest.mark.parametrize(("forge", "message"), [c[1:] for c in FORGED], ids=[c[0] for c in FORGED])
def test_gate_result_lines_with_wrong_types_are_errors_not_verdicts(forge: Callable[[dict], object],
                                                                    message: str, tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    run_batch([ABC], out, STRUCTURE)
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["verdict"]["passed"] is False and data["spans"]
    forge(data)
    forged = _write(tmp_path / "forged.jsonl", json.dumps(data) + "\n")
    result = runner.invoke(app, ["gate", str(forged)])
    assert result.exit_code == 2, result.stdout
    assert f"{forged}:1" in result.stdout and message in result.stdout
    assert "PASS" not in result.stdout


# -- issue 15: inputs that are not there are visible ------------------------------------------


def test_empty_directory_and_header_only_csv_are_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.pdf").write_bytes(b"%PDF")
    only_refs = tmp_path / "refs"
    _write(only_refs / "a.ref.txt", "A reference.\n")
    header = _write(tmp_path / "h.csv", "id,mt\n")
    summary = run_batch([empty, only_refs, header, HILL], tmp_path / "r.jsonl", STRUCTURE)
    assert [r.origin for r in summary.rows] == [str(empty), str(only_refs), str(header), str(HILL)]
    assert "holds no file to check" in (summary.rows[0].error or "")
    assert "holds only reference files" in (summary.rows[1].error or "")
    assert "no records after the header" in (summary.rows[2].error or "")
    result = runner.invoke(app, ["batch", str(empty), "--out", str(tmp_path / "r2.jsonl"), *FAST])
    assert result.exit_code == 2 and "holds no file to check" in result.stderr


def test_unreadable_subdirectory_is_an_error_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "d"
    _write(root / "a.txt", HILL.read_text(encoding="utf-8"))
    locked = root / "locked"
    _write(locked / "b.txt", "Never seen.\n")
    real = os.scandir

    def scandir(path: object) -> object:  # NOTE: tests run as root, where chmod 000 is no barrier
        if Path(str(path)) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "scandir", scandir)
    summary = run_batch([root], tmp_path / "r.jsonl", STRUCTURE)
    assert [r.id for r in summary.rows] == [None, "a"]
    assert summary.rows[0].origin == str(locked)
    assert "cannot read this directory: Permission denied" in (summary.rows[0].error or "")


def test_fifo_in_a_directory_and_as_input_is_an_error_row_not_a_hang(tmp_path: Path) -> None:
    root = tmp_path / "d"
    _write(root / "a.txt", HILL.read_text(encoding="utf-8"))
    os.mkfifo(root / "pipe.txt")
    os.mkfifo(tmp_path / "in.jsonl")
    summary = run_batch([root, tmp_path / "in.jsonl"], tmp_path / "r.jsonl", STRUCTURE)
    assert [r.id for r in summary.rows] == ["a", None, None]
    assert all("FIFO" in (r.error or "") for r in summary.rows[1:])


# -- issue 15: what batch writes is read by every consumer -----------------------------------


def test_batch_output_with_separators_and_nan_is_strict_json_gate_reads(tmp_path: Path) -> None:
    path = _write(tmp_path / "in.jsonl",
                  '{"id": "a", "mt": "One line\\u2028with a separator\\u0085here.", "x": NaN}\n'
                  '{"id": "b", "mt": "Second\u2029record here.", "y": [Infinity]}\n{"mt": \n')
    out = tmp_path / "r.jsonl"
    summary = run_batch([path], out, STRUCTURE)
    assert [r.origin for r in summary.rows] == [f"{path}:1", f"{path}:2", f"{path}:3"]
    text = out.read_text(encoding="utf-8")
    assert not set(text) & {"\u2028", "\u2029", "\u0085"}
    assert len(text.splitlines()) == 3  # str.splitlines, as a naive consumer splits

    def refuse(name: str) -> object:
        raise ValueError(name)

    lines = [json.loads(line, parse_constant=refuse) for line in text.splitlines()]
    assert lines[0]["meta"] == {"x": None} and lines[1]["meta"] == {"y": [None]}
    assert [type(i).__name__ for i in read_results(out)] == ["DocumentReport", "DocumentReport",
                                                            "BadRecord"]


def test_lone_surrogates_cost_their_line_only(tmp_path: Path) -> None:
    path = _write(tmp_path / "in.jsonl",
                  '{"id": "ok", "mt": "A good record here."}\n{"id": "s", "mt": "bad \\ud800"}\n'
                  '{"id": "x\\udc00", "mt": "Another good one."}\n'
                  '{"id": "m", "mt": "Third good one.", "site": "\\ud83d"}\n')
    out = tmp_path / "r.jsonl"
    for _ in range(2):  # NOTE: the writer used to crash after scoring, on every run
        summary = run_batch([path], out, STRUCTURE)
        assert [r.id for r in summary.rows] == ["ok", None, None, None]
        assert [r.origin for r in summary.errors] == [f"{path}:{n}" for n in (2, 3, 4)]
        assert all("lone surrogate" in (r.error or "") for r in summary.errors)


def test_csv_field_over_131072_characters_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    with path.open("w", encoding="utf-8", newline="") as fh:
        csv.writer(fh).writerows([["id", "mt"], ["a", "Word. " * 30_000], ["b", "A normal text."]])
    summary = run_batch([path], tmp_path / "r.jsonl", STRUCTURE)
    assert [r.id for r in summary.rows] == ["a", "b"] and not summary.errors


def test_csv_summary_cannot_hold_formulas(tmp_path: Path) -> None:
    ids = ['=HYPERLINK("http://evil.example","x")', "+1", "-2+3", "@SUM(A1)", "\tx", "\rx", "plain"]
    path = _write(tmp_path / "in.jsonl", "".join(
        json.dumps({"id": i, "mt": f"A text to check, number {n}."}) + "\n" for n, i in enumerate(ids)))
    table = tmp_path / "r.csv"
    run_batch([path], tmp_path / "r.jsonl", STRUCTURE, csv_out=table)
    with table.open(encoding="utf-8", newline="") as fh:
        got = [row["id"] for row in csv.DictReader(fh)]
    assert got == ["'" + i for i in ids[:-1]] + ["plain"]


# -- issue 15: outputs never destroy inputs -------------------------------------------------


def _refused(args: list[str], message: str, tmp_path: Path) -> None:
    result = runner.invoke(app, ["batch", *args, *FAST])
    assert result.exit_code == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_out_over_an_input_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    before = BAD_JSONL.read_text(encoding="utf-8")
    src = _write(tmp_path / "x.jsonl", before)
    (tmp_path / "link.jsonl").symlink_to(src)
    for out in ("x.jsonl", "./x.jsonl", str(src), "link.jsonl"):
        _refused(["x.jsonl", "-o", out], "is the input file", tmp_path)
    _refused(["x.jsonl", "-o", "r.jsonl", "--csv", "x.jsonl"], "--csv is the input file", tmp_path)
    _refused(["x.jsonl", "-o", "r.jsonl", "--store", "./x.jsonl"], "--store is the input file", tmp_path)
    _refused(["x.jsonl", "-o", "r.jsonl", "--csv", "r.jsonl"], "name the same file", tmp_path)
    _write(tmp_path / "index.html", "<html><body><p>An article.</p></body></html>")
    _refused(["index.html", "-o", "r.jsonl", "--html", "."], "--html is the directory of the input",
             tmp_path)
    assert src.read_text(encoding="utf-8") == before


def test_outputs_inside_an_input_directory_are_refused(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "arts" / "a.txt", HILL.read_text(encoding="utf-8"))
    (tmp_path / "alias").symlink_to(tmp_path / "arts")
    for html in ("arts/report", "arts", "./arts/../arts/x", "alias/report"):
        _refused(["arts", "-o", "r.jsonl", "--html", html], "--html is inside the input directory",
                 tmp_path)
    _refused(["arts", "-o", "r.jsonl", "--csv", "arts/summary.txt"], "--csv is inside the input",
             tmp_path)
    _refused(["arts", "-o", "arts/r.txt"], "--out is inside the input", tmp_path)
    # what a directory run never reads back is allowed: the run is repeatable, 1 document each time
    for _ in range(2):
        result = runner.invoke(app, ["batch", "arts", "-o", "arts/r.jsonl", "--html", "pages", *FAST])
        assert result.exit_code == 0, result.stderr
        assert len(_lines(tmp_path / "arts" / "r.jsonl")) == 1


# -- issue 15: one writer per output ---------------------------------------------------------


def test_a_second_batch_on_the_same_out_is_refused_naming_the_holder(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    code = textwrap.dedent(f"""
        import fcntl, os, sys, time
        fd = os.open({str(out) + '.lock'!r}, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, str(os.getpid()).encode())
        print("locked", flush=True)
        time.sleep(60)
    """)
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        result = runner.invoke(app, ["batch", str(HILL), "-o", str(out), *FAST])
        assert result.exit_code == 2
        assert f"another mtqa batch (pid {holder.pid}) is writing this output" in result.stderr
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    assert run_batch([HILL], out, STRUCTURE).passed == 1  # the lock went with its holder
    assert (tmp_path / "r.jsonl.lock").read_text(encoding="ascii").strip() == str(os.getpid())


@pytest.mark.slow
def test_two_concurrent_batches_never_interleave(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    cmd = [sys.executable, "-c", "from mtqa.cli import main; main()", "batch", str(corpus), "-o",
           str(out), "-q", *FAST]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    runs = [subprocess.Popen(["sh", "-c", '"$0" "$@"; echo "rc=$?" >&2', *cmd], env=env,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errs = [r.communicate(timeout=300)[1] for r in runs]
    assert sum("another mtqa batch" in e for e in errs) <= 1
    assert len(_lines(out)) == len(_paragraphs()) + 1  # every line once, none broken


# -- issue 15: a damaged store never wedges a run ---------------------------------------------


def test_damaged_store_row_is_rescored_with_a_warning(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "r.jsonl"
    first = run_batch([ABC, HILL], out, STRUCTURE)
    store = default_store(out)
    db = sqlite3.connect(store)
    db.execute("UPDATE results SET report = '{broken' WHERE doc_id = ?", (ABC.stem,))
    db.execute("UPDATE results SET report = x'00ff' WHERE doc_id = ?", (HILL.stem,))
    db.commit()
    db.close()
    before = out.read_text(encoding="utf-8")
    with caplog.at_level("WARNING", logger="mtqa.batch"):
        again = run_batch([ABC, HILL], out, STRUCTURE)
    assert again.scored == 2 and again.reused == 0
    assert out.read_text(encoding="utf-8") == before
    assert [r.score for r in again.rows] == [r.score for r in first.rows]
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert str(store) in warned and ABC.stem in warned and HILL.stem in warned
    assert run_batch([ABC, HILL], out, STRUCTURE).reused == 2  # the rows were replaced


def test_store_row_for_another_text_is_rescored(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    run_batch([ABC], out, STRUCTURE)
    db = sqlite3.connect(default_store(out))
    report = json.loads(db.execute("SELECT report FROM results").fetchone()[0])
    report["spans"][0]["text"] = "not the text"
    db.execute("UPDATE results SET report = ?", (json.dumps(report),))
    db.commit()
    db.close()
    assert run_batch([ABC], out, STRUCTURE).scored == 1


def test_damaged_store_file_is_an_error_naming_it(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    corpus = _write(tmp_path / "in.jsonl", "".join(
        json.dumps({"id": f"d{i}", "mt": f"The council met on day {i}. " * 20}) + "\n"
        for i in range(300)))
    run_batch([corpus], out, STRUCTURE)
    store = default_store(out)
    db = sqlite3.connect(store)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    with store.open("r+b") as fh:
        fh.seek(8192)
        fh.write(b"\xde\xad" * 4000)
    result = runner.invoke(app, ["batch", str(corpus), "-o", str(out), *FAST])
    assert result.exit_code == 2, result.stderr
    assert f"{store}: the result store cannot be used" in result.stderr
    assert "delete it to start afresh" in result.stderr and "Traceback" not in result.stderr


def test_zero_length_store_is_rescored_with_a_warning(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "r.jsonl"
    run_batch([HILL], out, STRUCTURE)
    store = default_store(out)
    for p in (store, store.with_name(store.name + "-wal"), store.with_name(store.name + "-shm")):
        if p.exists():
            p.write_bytes(b"")
    with caplog.at_level("WARNING", logger="mtqa.batch"):
        assert run_batch([HILL], out, STRUCTURE).scored == 1
    assert any("empty (0 bytes)" in r.getMessage() and str(store) in r.getMessage()
               for r in caplog.records)


# -- issue 15: output errors are messages, and never half-written files -----------------------


def test_out_is_a_directory_or_device_exits_2(tmp_path: Path) -> None:
    for out, message in ((tmp_path, "--out is a directory"), (Path("/dev/full"), "regular file")):
        _refused([str(HILL), "-o", str(out)], message, tmp_path)


class _FullDisk(io.StringIO):
    """A text file on a full disk: the first write that reaches the disk fails."""

    def write(self, text: str) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_while_writing_keeps_the_previous_outputs(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    out, table = tmp_path / "r.jsonl", tmp_path / "r.csv"
    run_batch([HILL], out, STRUCTURE, csv_out=table)
    before = (out.read_text(encoding="utf-8"), table.read_text(encoding="utf-8"))
    real_open, real_replace = Path.open, os.replace

    def open_full(self: Path, *args: object, **kwargs: object) -> object:
        if self.name.endswith(".partial"):
            return _FullDisk()
        return real_open(self, *args, **kwargs)  # type: ignore[arg-type]

    def replace_full(src: object, dst: object) -> None:
        if str(dst).endswith(".csv"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_replace(src, dst)  # type: ignore[arg-type]

    for target, patch in ((Path, ("open", open_full)), (os, ("replace", replace_full))):
        with monkeypatch.context() as m:
            m.setattr(target, *patch)
            result = runner.invoke(app, ["batch", str(ABC), str(HILL), "-o", str(out), "--csv",
                                         str(table), *FAST])
        assert result.exit_code == 2, result.stderr
        assert "No space left on device (the disk is full)" in result.stderr
        assert (out.read_text(encoding="utf-8") if patch[0] == "open" else before[0]) == before[0]
        assert table.read_text(encoding="utf-8") == before[1]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_read_only_output_directory_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path as P

    real = P.open

    def denied(self: P, *args: object, **kwargs: object) -> object:
        if self.name.endswith(".partial"):
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(P, "open", denied)
    _refused([str(HILL), "-o", str(tmp_path / "r.jsonl")], "r.jsonl.partial: cannot write: "
             "Permission denied", tmp_path)


def test_gate_on_check_json_with_a_lone_surrogate_is_an_error(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    run_batch([HILL], out, STRUCTURE)
    doc = json.loads(out.read_text(encoding="utf-8"))
    doc["id"] = "x\ud800"
    report = _write(tmp_path / "report.json", json.dumps({"schema": "mtqa.report/1", "documents": [doc]}))
    result = runner.invoke(app, ["gate", str(report)])
    assert result.exit_code == 2 and "lone surrogate \\ud800" in result.stdout
