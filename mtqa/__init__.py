"""mtqa: machine-translation quality checks for English news text.

>>> import mtqa
>>> report = mtqa.check("The talks were successful. even as protests went on.", checkers=["structure"])
>>> [s.text for s in report.spans]
['successful. even']
"""

from __future__ import annotations

import logging

from mtqa.batch import run_batch
from mtqa.config import Settings
from mtqa.errors import CheckerUnavailable, ConfigError, InputError, MtqaError
from mtqa.gate import Policy, load_policy
from mtqa.pipeline import Checker, check
from mtqa.types import BatchSummary, Document, DocumentReport, Report
from mtqa.version import __version__

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "BatchSummary",
    "CheckerUnavailable",
    "Checker",
    "ConfigError",
    "Document",
    "DocumentReport",
    "InputError",
    "MtqaError",
    "Policy",
    "Report",
    "Settings",
    "__version__",
    "check",
    "load_policy",
    "run_batch",
]
