"""The command line: every exit code, output formats, and that --help stays light."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import ABC, FIXTURES, HILL
from mtqa.cli import app

runner = CliRunner()
INPUTS = FIXTURES / "inputs"
FAST = ["--no-lm"]


def test_help_does_not_import_heavy_modules() -> None:
    code = (
        "import sys\n"
        "from mtqa.cli import app\n"
        "try:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'language_tool_python', "
        "'sentence_transformers', 'trafilatura') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout


def test_check_abc_fails_gate_with_json_report() -> None:
    result = runner.invoke(app, ["check", str(ABC), "--format", "json", *FAST])
    assert result.exit_code == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["schema"] == "mtqa.report/1"
    (doc,) = report["documents"]
    mt = ABC.read_text(encoding="utf-8")
    assert doc["verdict"]["passed"] is False and doc["verdict"]["reasons"]
    assert len(doc["spans"]) >= 6
    for span in doc["spans"]:
        assert span["text"] == mt[span["start"] : span["end"]]
    assert {"checker": "fluency", "reason": "turned off in the settings"} in doc["skipped"]
    kinds = {s["kind"] for s in doc["sentences"]}
    assert kinds == {"body", "boilerplate"}


def test_check_hill_passes() -> None:
    result = runner.invoke(app, ["check", str(HILL), *FAST])
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "PASS" in result.stdout


def test_no_gate_exits_zero_on_failure() -> None:
    result = runner.invoke(app, ["check", str(ABC), "--no-gate", *FAST])
    assert result.exit_code == 0
    assert "FAIL" in result.stdout and "supply”. shortages" in result.stdout


def test_text_report_highlights_spans_in_context() -> None:
    result = runner.invoke(app, ["check", str(ABC), *FAST])
    assert "broken-join" in result.stdout
    assert "developed in the during the same period" in result.stdout
    assert "boilerplate left out of scores" in result.stdout


@pytest.mark.parametrize("name", ["empty.txt", "binary.bin", "latin1.txt"])
def test_bad_input_exit_2_names_file(name: str) -> None:
    result = runner.invoke(app, ["check", str(INPUTS / name), *FAST])
    assert result.exit_code == 2
    assert str(INPUTS / name) in result.stderr
    assert result.stderr.count("\n") == 1  # one line, no traceback


def test_missing_file_is_usage_error() -> None:
    result = runner.invoke(app, ["check", "no/such/file.txt"])
    assert result.exit_code == 2


def test_jsonl_bad_lines_exit_2_but_good_records_reported() -> None:
    result = runner.invoke(app, ["check", str(INPUTS / "batch.jsonl"), "--format", "json", *FAST])
    assert result.exit_code == 2
    ids = [d["id"] for d in json.loads(result.stdout)["documents"]]
    assert ids == ["ok-1", "ok-2"]
    for line in ("batch.jsonl:2: malformed JSON", "batch.jsonl:3: missing field 'mt'",
                 "batch.jsonl:5: expected a JSON object"):
        assert line in result.stderr


def test_out_file(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    result = runner.invoke(app, ["check", str(HILL), "-f", "json", "-o", str(out), *FAST])
    assert result.exit_code == 0
    assert json.loads(out.read_text(encoding="utf-8"))["documents"][0]["id"] == HILL.stem
    assert result.stdout == ""


def test_bad_policy_is_exit_2(tmp_path: Path) -> None:
    policy = tmp_path / "p.toml"
    policy.write_text("min_scor = 3\n", encoding="utf-8")
    result = runner.invoke(app, ["check", str(HILL), "--policy", str(policy), *FAST])
    assert result.exit_code == 2
    assert "unknown policy key(s) min_scor" in result.stderr


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.startswith("mtqa ")
