"""Exceptions raised by mtqa.

The tree::

    MtqaError
    ├── InputError          bad input: unreadable file, wrong encoding, malformed record
    ├── ConfigError         bad settings, policy or configuration file
    └── CheckerUnavailable  a checker's backend (model, server, package) cannot be used here

Every message says what happened, where (file and line when there is one), and how to fix it.
"""

from __future__ import annotations

__all__ = ["CheckerUnavailable", "ConfigError", "InputError", "MtqaError"]


class MtqaError(Exception):
    """Base class of every error mtqa raises on purpose."""


class InputError(MtqaError):
    """An input file or record cannot be read as a document."""


class ConfigError(MtqaError):
    """A setting, policy or configuration file is invalid."""


class CheckerUnavailable(MtqaError):
    """A checker cannot run here (missing model, package or server); the report lists it as skipped."""

    def __init__(self, checker: str, reason: str) -> None:
        super().__init__(f"{checker}: {reason}")
        self.checker = checker
        self.reason = reason
