"""The one place that wires stages: load → segment → checkers → aggregate → gate.

``Checker`` is the object a process keeps: built from plain ``Settings``, it builds each checker
(``from_settings``; and so loads each model) once, on first use, and is safe to call again and
again. It owns the model pool its checkers borrow the language model from, so ``close()`` frees
the model. Its ``timings`` add up the seconds spent in each checker (``NAME``) and building it
(``NAME.load``).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from mtqa.aggregate import aggregate
from mtqa.calibrate import Calibration, lm_identity, load_calibration
from mtqa.checkers.base import load_checker_class
from mtqa.config import CHECKERS, Settings, check_device
from mtqa.errors import CheckerUnavailable, ConfigError
from mtqa.gate import SKIP_FAILED, SKIP_TURNED_OFF, Policy, decide, load_policy
from mtqa.models import DEFAULT_LM, SHIPPED_LMS, ModelPool
from mtqa.segment import segment
from mtqa.types import CheckResult, Document, DocumentReport, Report, SegmentedDocument, Skipped

if TYPE_CHECKING:
    from mtqa.checkers.base import BaseChecker

__all__ = ["Checker", "check"]

logger = logging.getLogger(__name__)


class Checker:
    """Checks documents with every configured checker; keep one per process.

    ``checkers`` injects ready-made checker objects by name (tests, services that share models);
    the others are built from ``settings`` on first use. A checker that cannot run here is
    reported in each document's ``skipped`` list, with the reason, and the rest still run.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        policy: Policy | None = None,
        checkers: Mapping[str, BaseChecker] | None = None,
    ) -> None:
        if settings is not None and not isinstance(settings, Settings):
            err = (f"Checker expects Settings (Settings.from_dict builds one from a dict), "
                   f"not {type(settings).__name__}")
            raise TypeError(err)
        self.settings = settings or Settings()
        if {"fluency", "reference"} & set(self.settings.checkers):
            check_device(self.settings.device)
        policy_path = None if self.settings.policy is None else Path(self.settings.policy)
        self.policy = policy if policy is not None else load_policy(policy_path)
        calibration_path = (None if self.settings.calibration is None
                            else Path(self.settings.calibration))
        self.calibration: Calibration = load_calibration(calibration_path, self.settings.lm_model)
        self._refuse_another_language_model()
        self._built: dict[str, BaseChecker] = dict(checkers or {})
        #: the models the checkers built here borrow (one copy each); freed by close()
        self.models = ModelPool()
        self._unavailable: dict[str, str] = {}
        self._lock = threading.RLock()
        self._closed = False
        #: seconds spent per checker name (``check`` calls) and ``NAME.load`` (building it)
        self.timings: dict[str, float] = {}

    def _refuse_another_language_model(self) -> None:
        """Refuse, before any model loads, a calibration fitted on another language model than
        the one the settings name, when the name alone tells (the bundled models); ``_get``
        checks every model, weights included, once it is built."""
        s = self.settings
        if not s.reads_with_lm or s.lm_model not in (None, *SHIPPED_LMS):
            return
        why = self.calibration.language_model_mismatch("fluency", s.lm_model or DEFAULT_LM)
        if why is not None:
            raise ConfigError(why)

    def _get(self, name: str) -> BaseChecker | None:
        """The named checker, built on first use; None (and a recorded reason) if unavailable."""
        with self._lock:
            if name in self._built:
                return self._built[name]
            if name in self._unavailable:
                return None
            t0 = time.perf_counter()
            try:
                cls = load_checker_class(name)
                checker = cls.from_settings(self.settings, models=self.models)
            except CheckerUnavailable as exc:
                logger.warning("checker %s unavailable: %s", name, exc.reason)
                self._unavailable[name] = exc.reason
                return None
            except ImportError as exc:
                reason = f"not installed in this version of mtqa ({exc})"
                self._unavailable[name] = reason
                return None
            why = self.calibration.language_model_mismatch(name, lm_identity(checker.signature))
            if why is not None:
                checker.close()
                raise ConfigError(why)  # NOTE: refused, not applied to another model's numbers
            self._built[name] = checker
            self.timings[f"{name}.load"] = time.perf_counter() - t0
            return checker

    def check(self, mt: str, ref: str | Sequence[str] | None = None, *, id: str = "doc",
              src: str | None = None) -> DocumentReport:
        """Check one text, optionally against one or more references."""
        _expect_text("mt", mt)
        refs = () if ref is None else ((ref,) if isinstance(ref, str) else tuple(ref))
        for r in refs:
            _expect_text("ref", r)
        return self.check_many([Document(id=id, mt=mt, ref=refs, src=src)]).documents[0]

    def check_many(self, docs: Iterable[Document]) -> Report:
        """Check documents in batches; one report per document, in input order."""
        docs = list(docs)
        for i, d in enumerate(docs):
            if not isinstance(d, Document):
                err = f"check_many expects Document items; item {i} is {type(d).__name__}"
                raise TypeError(err)
            _expect_text(f"item {i}: mt", d.mt)
        with self._lock:
            if self._closed:
                err = "this Checker is closed"
                raise RuntimeError(err)
            segs = [segment(d) for d in docs]
            per_doc: list[list[CheckResult]] = [[] for _ in docs]
            off = [Skipped(c, SKIP_TURNED_OFF) for c in CHECKERS
                   if c not in self.settings.checkers]
            skipped: list[list[Skipped]] = [list(off) for _ in docs]
            for name in self.settings.checkers:
                wanted = [i for i, d in enumerate(docs) if name != "reference" or d.ref]
                if not wanted:
                    continue
                checker = self._get(name)
                if checker is None:
                    for i in wanted:
                        skipped[i].append(Skipped(name, self._unavailable[name]))
                    continue
                t0 = time.perf_counter()
                for i, result in self._run(checker, [segs[i] for i in wanted], wanted, skipped):
                    per_doc[i].append(result)
                self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0
                # NOTE: read after check(): a backend that fails at first use falls back then
                for i in wanted:
                    skipped[i].extend(checker.skipped)
            reports = []
            for sd, results, skip in zip(segs, per_doc, skipped):
                report = aggregate(sd, results, skip, self.calibration)
                reports.append(dataclasses.replace(report, verdict=decide(report, self.policy)))
            return Report(documents=tuple(reports))

    def _run(self, checker: BaseChecker, segs: list[SegmentedDocument], index: list[int],
             skipped: list[list[Skipped]]) -> list[tuple[int, CheckResult]]:
        """Run a checker on a batch; if the batch fails, isolate the documents that break it."""
        try:
            return list(zip(index, checker.check(segs)))
        except Exception:
            if len(segs) == 1:
                logger.exception("checker %s failed on document %s", checker.name, segs[0].doc.id)
                skipped[index[0]].append(Skipped(checker.name, f"{SKIP_FAILED} (see log)"))
                return []
            logger.warning("checker %s failed on a batch; retrying one document at a time",
                           checker.name)
        out: list[tuple[int, CheckResult]] = []
        for i, sd in zip(index, segs):
            out.extend(self._run(checker, [sd], [i], skipped))
        return out

    def close(self) -> None:
        """Release every checker's resources and the model pool; calling it twice is harmless."""
        with self._lock:
            for checker in self._built.values():
                checker.close()
            self._built.clear()
            self.models.close()
            self._closed = True

    def __enter__(self) -> Checker:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _expect_text(name: str, value: object) -> None:
    if isinstance(value, str):
        return
    hint = " (decode it first: .decode('utf-8'))" if isinstance(value, bytes | bytearray) else ""
    err = f"{name} must be a str, not {type(value).__name__}{hint}"
    raise TypeError(err)


def check(mt: str, ref: str | Sequence[str] | None = None, **options: object) -> DocumentReport:
    """Check one text with a throw-away Checker (``options`` are Settings fields)."""
    _expect_text("mt", mt)
    with Checker(Settings.from_dict(options)) as checker:
        return checker.check(mt, ref)
