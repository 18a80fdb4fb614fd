"""mtqa: machine-translation quality checks for English news text.

>>> import mtqa
>>> report = mtqa.check("The talks were successful. even as protests went on.", checkers=["structure"])
>>> [s.text for s in report.spans]
['successful. even']
"""

from __future__ import annotations

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

from mtqa.config import Settings  # noqa: E402 - after the version, which submodules read
from mtqa.errors import CheckerUnavailable, ConfigError, InputError, MtqaError  # noqa: E402
from mtqa.gate import Policy, load_policy  # noqa: E402
from mtqa.pipeline import Checker, check  # noqa: E402
from mtqa.types import BatchSummary, Document, DocumentReport, Report  # noqa: E402
from mtqa.batch import run_batch  # noqa: E402 - imports the pipeline above

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
