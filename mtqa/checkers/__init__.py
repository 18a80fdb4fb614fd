"""Checkers: independent, batch-first analyses of segmented documents.

``REGISTRY`` maps a checker name to a ``"module:Class"`` import string so that heavy modules
(torch, transformers, language_tool_python) are imported only when the checker is built.
"""

from __future__ import annotations

from mtqa.checkers.base import REGISTRY, BaseChecker, load_checker_class

__all__ = ["REGISTRY", "BaseChecker", "load_checker_class"]
