"""The checker interface (what every checker builds from, returns and releases) and the lazy registry.

Adding a checker is a new module with a ``BaseChecker`` subclass and one ``REGISTRY`` line (and
its name in ``mtqa.config.CHECKERS``): the pipeline builds it with ``from_settings`` and knows
none of its fields, as spaCy's pipeline passes each component its own config.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, ClassVar, Self

if TYPE_CHECKING:
    from mtqa.config import Settings
    from mtqa.models import ModelPool
    from mtqa.types import CheckResult, SegmentedDocument, Skipped

__all__ = ["REGISTRY", "BaseChecker", "load_checker_class"]

REGISTRY: dict[str, str] = {
    "structure": "mtqa.checkers.structure:StructureChecker",
    "fluency": "mtqa.checkers.fluency:FluencyChecker",
    "grammar": "mtqa.checkers.grammar:GrammarChecker",
    "reference": "mtqa.checkers.reference:ReferenceChecker",
}


class BaseChecker:
    """A checker: ``check(docs)`` returns exactly one CheckResult per document, in input order.

    Checkers never read another checker's output. External resources (models, servers) are
    built in the constructor or injected, released by the idempotent ``close()``, and a checker
    is a context manager. A checker that cannot run here raises ``CheckerUnavailable`` from its
    constructor.
    """

    name: ClassVar[str] = "base"

    @classmethod
    def from_settings(cls, settings: Settings, *, models: ModelPool) -> Self:
        """Build the checker from the fields of ``settings`` it reads; ``models`` is the owner's
        model pool, which lends the checkers of one ``Checker`` one copy of each model (and
        frees it when that ``Checker`` closes). This default reads no setting.

        Raises:
            CheckerUnavailable: the checker cannot run here.
        """
        return cls()

    @property
    def skipped(self) -> tuple[Skipped, ...]:
        """Parts of this checker that did not run, and why (e.g. a backend that fell back);
        read after ``check()``, since a backend may fail at first use. Empty by default."""
        return ()

    def check(self, docs: Sequence[SegmentedDocument]) -> list[CheckResult]:
        """Check a batch of documents."""
        raise NotImplementedError

    @property
    def signature(self) -> str:
        """Every setting that changes this checker's numbers, as ``key:value|...``."""
        raise NotImplementedError

    def close(self) -> None:
        """Release external resources; calling it twice is harmless."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def load_checker_class(name: str) -> type[BaseChecker]:
    """Import a registered checker class by name (this is where heavy modules get imported)."""
    from mtqa.errors import ConfigError

    try:
        target = REGISTRY[name]
    except KeyError as exc:
        err = f"unknown checker {name!r}; known: {', '.join(sorted(REGISTRY))}"
        raise ConfigError(err) from exc
    module_name, _, cls_name = target.partition(":")
    module = importlib.import_module(module_name)
    cls: type[BaseChecker] = getattr(module, cls_name)
    return cls
