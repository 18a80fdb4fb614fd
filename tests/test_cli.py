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


# --- exit codes: 1 means only "a document failed the gate" -----------------------------------


def _boom(*args: object, **kwargs: object) -> None:
    raise RuntimeError("boom\nsecond line")


def test_unexpected_error_is_exit_3_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mtqa.pipeline.Checker.check_many", _boom)
    result = runner.invoke(app, ["check", str(HILL), *FAST])
    assert result.exit_code == 3, result.stderr
    assert result.stderr == ("internal error: RuntimeError: boom second line "
                             "(a bug in mtqa; run with -v for the traceback)\n")
    assert result.stdout == ""


def test_unexpected_error_with_verbose_prints_the_traceback(monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    monkeypatch.setattr("mtqa.pipeline.Checker.check_many", _boom)
    result = runner.invoke(app, ["-v", "check", str(HILL), *FAST])
    assert result.exit_code == 3
    assert "Traceback (most recent call last)" in result.stderr and "in _boom" in result.stderr


@pytest.mark.parametrize("command", ["batch", "gate", "evaluate"])
def test_every_command_maps_bugs_to_exit_3(command: str, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mtqa.batch.run_batch", _boom)
    monkeypatch.setattr("mtqa.batch.read_results", _boom)
    monkeypatch.setattr("mtqa.evaluate.load_mqm", _boom)
    args = {"batch": ["batch", str(HILL), "-o", str(tmp_path / "r.jsonl"), *FAST],
            "gate": ["gate", str(HILL)],
            "evaluate": ["evaluate", str(FIXTURES / "mqm_sample.jsonl"), *FAST]}[command]
    result = runner.invoke(app, args)
    assert result.exit_code == 3 and result.stderr.startswith("internal error: RuntimeError")


def test_ctrl_c_is_exit_130_not_1(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupt(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("mtqa.pipeline.Checker.check_many", interrupt)
    result = runner.invoke(app, ["check", str(HILL), *FAST])
    assert result.exit_code == 130


def test_unexpected_error_is_exit_3_in_a_real_process() -> None:
    code = (
        "import sys\n"
        "import mtqa.pipeline\n"
        "def boom(*a, **k):\n    raise ZeroDivisionError('division by zero')\n"
        "mtqa.pipeline.Checker.check_many = boom\n"
        "from mtqa.cli import main\n"
        f"sys.argv = ['mtqa', 'check', {str(HILL)!r}, '--no-lm']\n"
        "main()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 3, out.stderr
    assert out.stderr.strip().splitlines() == [
        "internal error: ZeroDivisionError: division by zero "
        "(a bug in mtqa; run with -v for the traceback)"]


def test_gate_failure_is_still_exit_1_in_a_real_process() -> None:
    out = subprocess.run([sys.executable, "-c", "from mtqa.cli import main; main()", "check",
                          str(ABC), "--no-lm"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr


# --- shared options are declared once ---------------------------------------------------------


def _options(command: str) -> set[str]:
    import typer.main

    group = typer.main.get_command(app)
    cmd = group.commands[command]  # type: ignore[attr-defined]
    return {opt for p in cmd.params for opt in p.opts}


SETTINGS_FLAGS = {"--checkers", "--no-lm", "--lm-model", "--batch-size", "--threads", "--device",
                  "--lm-backend", "--grammar-backend", "--languagetool-url", "--ref-mode",
                  "--calibration", "--config"}


@pytest.mark.parametrize("command", ["check", "batch", "evaluate"])
def test_commands_share_the_settings_options(command: str) -> None:
    assert SETTINGS_FLAGS <= _options(command)
    assert ({"--policy", "--gate"} <= _options(command)) is (command != "evaluate")


def test_help_shows_defaults_from_settings() -> None:
    from mtqa.config import Settings

    result = runner.invoke(app, ["check", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert f"(default: {Settings().batch_size})" in result.stdout
    assert "auto|parallel|comparable" in result.stdout
    assert "auto|languagetool|harper" in result.stdout


def test_closed_choice_rejects_unknown_value() -> None:
    result = runner.invoke(app, ["check", str(HILL), "--ref-mode", "bogus"])
    assert result.exit_code == 2 and "bogus" in result.stderr


def test_check_refuses_to_write_over_its_input(tmp_path: Path) -> None:
    article = tmp_path / "a.txt"
    article.write_text("The talks were successful. even as protests went on.\n", encoding="utf-8")
    result = runner.invoke(app, ["check", str(article), "--checkers", "structure",
                                 "--format", "json", "-o", str(tmp_path / "." / "a.txt")])
    assert result.exit_code == 2
    assert "--out names an input file" in result.stderr
    assert article.read_text(encoding="utf-8").startswith("The talks were successful.")


def test_error_lines_do_not_pass_control_sequences_to_the_terminal(tmp_path: Path) -> None:
    article = tmp_path / "a.txt"
    article.write_text("The talks were successful.\n", encoding="utf-8")
    # an OSC sequence (set the window title) and an ESC colour code in a value the error echoes
    result = runner.invoke(app, ["check", str(article), "--checkers", "x\x1b]0;owned\x07\x1b[31m"])
    assert result.exit_code == 2
    assert "error:" in result.stderr and "\\x1b" in result.stderr
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr
