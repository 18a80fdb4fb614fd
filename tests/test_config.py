"""Settings: every field checked, each source named in errors, flags override a file when given."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import HILL
from mtqa.cli import app
from mtqa.config import (GRAMMAR_BACKENDS, LM_BACKENDS, REF_MODES, Settings, check_device,
                         load_settings)
from mtqa.errors import ConfigError

runner = CliRunner()

BAD_SETTINGS = [
    ({"max_bytes": "big"}, "max_bytes must be a whole number of at least 1, not 'big'"),
    ({"max_bytes": 0}, "max_bytes must be a whole number of at least 1, not 0"),
    ({"batch_size": 0}, "batch_size must be a whole number of at least 1, not 0"),
    ({"batch_size": True}, "batch_size must be a whole number of at least 1, not True"),
    ({"batch_size": 2.5}, "batch_size must be a whole number"),
    ({"threads": 0}, "threads must be a whole number of at least 1, not 0"),
    ({"enabled_rules": 5}, "enabled_rules must be a list of names"),
    ({"disabled_rules": [1, 2]}, "disabled_rules must be a list of names"),
    ({"checkers": []}, "no checker to run"),
    ({"checkers": ","}, "no checker to run"),
    ({"checkers": 3}, "checkers must be a list of names"),
    ({"checkers": ["structure", "structure"]}, "checkers lists structure more than once"),
    ({"checkers": "structure,spelling"}, "unknown checker(s) spelling; known: structure"),
    ({"device": "tpu"}, "device must be cpu, cuda or cuda:N, not 'tpu'"),
    ({"device": "cuda:x"}, "device must be cpu, cuda or cuda:N"),
    ({"ref_mode": "bogus"}, "ref_mode must be one of auto, parallel, comparable, not 'bogus'"),
    ({"lm_backend": "onnx"}, "lm_backend must be one of auto, native, transformers"),
    ({"grammar_backend": "word"}, "grammar_backend must be one of auto, languagetool, harper"),
    ({"languagetool_url": "not a url"}, "languagetool_url must be an http(s) URL"),
    ({"languagetool_url": "ftp://host/x"}, "languagetool_url must be an http(s) URL"),
    ({"languagetool_url": "http://host:port"}, "languagetool_url must be an http(s) URL"),
    ({"language": ""}, "language must be a non-empty string"),
    ({"lm_model": 5}, "lm_model must be a non-empty string, not 5"),
    ({"policy": ["a"]}, "policy must be a non-empty string"),
    ({"extra": [1]}, "extra must be a table"),
]


@pytest.mark.parametrize("data, message", BAD_SETTINGS, ids=[str(d) for d, _ in BAD_SETTINGS])
def test_bad_setting_is_a_config_error_naming_it(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_dict(data)
    assert message in str(info.value)


def test_lists_and_paths_are_normalised_to_plain_data(tmp_path: Path) -> None:
    s = Settings(checkers="structure", enabled_rules="A, B",  # type: ignore[arg-type]
                 policy=tmp_path / "p.toml")  # type: ignore[arg-type]
    assert s.checkers == ("structure",) and s.enabled_rules == ("A", "B")
    assert s.policy == str(tmp_path / "p.toml")
    assert Settings.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    listed = Settings(checkers=["structure", "grammar"])  # type: ignore[arg-type]
    assert listed.checkers == ("structure", "grammar")


def test_good_values_pass() -> None:
    s = Settings.from_dict({"device": "cuda:1", "threads": 2, "languagetool_url":
                            "https://lt.example.org:8081/v2", "ref_mode": "comparable"})
    assert (s.device, s.threads, s.ref_mode) == ("cuda:1", 2, "comparable")


def test_without_the_only_checker_is_an_error() -> None:
    with pytest.raises(ConfigError, match="no checker to run"):
        Settings(checkers=("fluency",)).without("fluency")


def _toml(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "mtqa.toml"
    path.write_text("[mtqa]\n" + body, encoding="utf-8")
    return path


@pytest.mark.parametrize("body, message", [
    ("batch_size = 0\n", "batch_size must be a whole number of at least 1, not 0"),
    ('max_bytes = "big"\n', "max_bytes must be a whole number"),
    ("enabled_rules = 5\n", "enabled_rules must be a list of names"),
    ('checker = ["structure"]\n', "unknown setting(s) checker"),
    ('device = "tpu"\n', "device must be cpu, cuda or cuda:N"),
])
def test_bad_config_file_names_the_file(tmp_path: Path, body: str, message: str) -> None:
    path = _toml(tmp_path, body)
    with pytest.raises(ConfigError) as info:
        load_settings(config_file=path, environ={})
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)
    result = runner.invoke(app, ["check", str(HILL), "--no-lm", "--config", str(path)])
    assert result.exit_code == 2 and f"{path}: " in result.stderr and message in result.stderr


def test_bad_environment_variable_is_named() -> None:
    with pytest.raises(ConfigError, match="environment variable MTQA_DEVICE: device must be"):
        load_settings(environ={"MTQA_DEVICE": "tpu"})


def test_config_checkers_as_one_string_is_one_checker(tmp_path: Path) -> None:
    path = _toml(tmp_path, 'checkers = "structure"\n')
    assert load_settings(config_file=path, environ={}).checkers == ("structure",)


@pytest.fixture()
def seen(monkeypatch: pytest.MonkeyPatch) -> list[Settings]:
    """The Settings each Checker the command builds receives; the command then runs as usual."""
    from mtqa import pipeline

    got: list[Settings] = []
    init = pipeline.Checker.__init__

    def record(self: pipeline.Checker, settings: Settings | None = None, **kw: object) -> None:
        got.append(settings or Settings())
        init(self, settings, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(pipeline.Checker, "__init__", record)
    return got


def test_config_values_are_not_overridden_by_flag_defaults(tmp_path: Path, seen: list[Settings]
                                                           ) -> None:
    path = _toml(tmp_path, 'checkers = ["structure"]\nbatch_size = 7\nref_mode = "comparable"\n'
                           'grammar_backend = "harper"\nthreads = 3\n')
    result = runner.invoke(app, ["check", str(HILL), "--config", str(path)])
    assert result.exit_code == 0, result.stderr
    (s,) = seen
    assert (s.checkers, s.batch_size, s.ref_mode, s.grammar_backend, s.threads) == (
        ("structure",), 7, "comparable", "harper", 3)


def test_flags_given_override_the_config_file(tmp_path: Path, seen: list[Settings]) -> None:
    path = _toml(tmp_path, 'checkers = ["structure"]\nbatch_size = 7\nref_mode = "comparable"\n')
    result = runner.invoke(app, ["check", str(HILL), "--config", str(path), "--batch-size", "3",
                                 "--ref-mode", "parallel"])
    assert result.exit_code == 0, result.stderr
    (s,) = seen
    assert (s.batch_size, s.ref_mode) == (3, "parallel")


def test_defaults_come_from_settings(seen: list[Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("MTQA_LM_MODEL", "MTQA_CACHE_DIR", "MTQA_LANGUAGETOOL_URL", "LTP_JAR_DIR_PATH",
                "MTQA_DEVICE", "MTQA_LM_BACKEND", "MTQA_CALIBRATION"):
        monkeypatch.delenv(var, raising=False)
    result = runner.invoke(app, ["check", str(HILL), "--checkers", "structure"])
    assert result.exit_code == 0, result.stderr
    assert seen == [Settings(checkers=("structure",))]


@pytest.mark.parametrize("args, message", [
    (["--threads", "0"], "threads must be a whole number of at least 1, not 0"),
    (["--batch-size", "0"], "batch_size must be a whole number of at least 1"),
    (["--languagetool-url", "not a url"], "languagetool_url must be an http(s) URL"),
    (["--device", "tpu"], "device must be cpu, cuda or cuda:N"),
])
def test_bad_flag_is_exit_2_one_line(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["check", str(HILL), "--checkers", "structure,grammar", *args])
    assert result.exit_code == 2
    assert result.stderr == f"error: {result.stderr.removeprefix('error: ')}"
    assert message in result.stderr and result.stderr.count("\n") == 1


def test_cuda_without_cuda_is_a_config_error() -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA device"):
            check_device(f"cuda:{torch.cuda.device_count()}")
        return
    with pytest.raises(ConfigError, match="CUDA is not available here"):
        check_device("cuda")
    result = runner.invoke(app, ["check", str(HILL), "--checkers", "structure,fluency",
                                 "--device", "cuda"])
    assert result.exit_code == 2 and "use --device cpu" in result.stderr


@pytest.mark.parametrize("content", [b"\x00\xa2\xff binary", b"[1, 2]", b'{"schema": 5'],
                         ids=["binary", "json-array", "truncated"])
def test_bad_calibration_file_is_exit_2_naming_it(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "cal.json"
    path.write_bytes(content)
    result = runner.invoke(app, ["check", str(HILL), "--no-lm", "--calibration", str(path)])
    assert result.exit_code == 2, result.stderr
    assert str(path) in result.stderr and result.stderr.count("\n") == 1


def test_choices_and_defaults_agree_with_the_checkers() -> None:
    """The CLI's choices (mtqa.config) and Settings' defaults are what the checkers use."""
    from mtqa.checkers import reference
    from mtqa.checkers.fluency import FluencyChecker
    from mtqa.checkers.grammar import GrammarChecker
    from mtqa.models import BACKENDS

    assert tuple(reference.MODES) == REF_MODES
    assert tuple(GrammarChecker.BACKENDS) == GRAMMAR_BACKENDS
    assert tuple(BACKENDS) == LM_BACKENDS
    defaults = Settings()
    assert defaults.batch_size == FluencyChecker.BATCH_SIZE
    assert defaults.grammar_backend == GrammarChecker.DEFAULT_BACKEND
    assert defaults.ref_mode == reference.ReferenceChecker.MODE


@pytest.mark.parametrize("option", ["--config", "--policy", "--calibration"])
def test_settings_files_that_are_fifos_are_refused_not_waited_on(tmp_path: Path,
                                                                  option: str) -> None:
    import os
    import subprocess
    import sys

    fifo = tmp_path / "settings.toml"
    os.mkfifo(fifo)
    article = tmp_path / "a.txt"
    article.write_text("The talks were successful.\n", encoding="utf-8")
    # a subprocess with a timeout: on the bug, opening the FIFO blocks forever
    proc = subprocess.run([sys.executable, "-c", "from mtqa.cli import main; main()", "check",
                           str(article), "--checkers",
                           "structure", option, str(fifo)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "not a regular file" in proc.stderr and str(fifo) in proc.stderr
