"""The micro-batcher: one worker thread owns the Checker and runs every model call.

Requests put documents into a bounded queue and wait on a future. The worker takes up to
``max_batch`` queued documents (and at most ``max_batch_chars`` characters), waiting up to
``max_wait`` seconds after the last arrival for more (longer while the last batch's clients come
back: ``MicroBatcher._gather``), runs one ``check_many`` and answers each future. While it runs,
new requests queue up, so under load batches fill by themselves. A full queue refuses
at once (``QueueFull``: the service answers 429) instead of piling up; model calls never run in
Starlette's thread pool. Background work (async jobs) runs only when no request is waiting.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol

from mtqa.types import Document, DocumentReport, Report

__all__ = ["BatcherClosed", "CheckerLike", "DeadlineExceeded", "MicroBatcher", "QueueFull"]

logger = logging.getLogger(__name__)

#: what a check of one document gives: its report, or why checking it failed
Outcome = DocumentReport | str


class CheckerLike(Protocol):
    """What the worker needs of a ``mtqa.Checker``."""

    def check_many(self, docs: Sequence[Document]) -> Report: ...

    def close(self) -> None: ...


class QueueFull(Exception):
    """The request queue is full; retry after a moment."""


class DeadlineExceeded(Exception):
    """The request's deadline passed before the worker reached it."""


class BatcherClosed(Exception):
    """The service is shutting down and takes no new work."""


@dataclass(slots=True)
class _Item:
    doc: Document
    future: Future[Outcome]
    deadline: float


@dataclass(slots=True)
class _Background:
    docs: list[Document]
    future: Future[list[Outcome]] = field(default_factory=Future)


class MicroBatcher:
    """Batches concurrent checks onto one model-owning thread (see the module docstring)."""

    #: pause for the last batch's clients coming back, as a share of its run time
    RETURN_PAUSE = 0.05
    #: longest gathering, in pauses of ``max_wait`` and as a share of the last batch's run time
    GATHER_CAP = 25
    RETURN_CAP = 0.2

    def __init__(self, checker: CheckerLike, *, max_batch: int, max_wait: float, max_queue: int,
                 max_batch_chars: int, warmup: Sequence[Document] = (),
                 on_batch: Callable[[int], None] | None = None,
                 in_flight: Callable[[], int] | None = None) -> None:
        self.checker = checker
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.max_queue = max_queue
        self.max_batch_chars = max_batch_chars
        self._warmup = list(warmup)
        self._on_batch = on_batch
        #: requests in flight at the HTTP layer: the worker waits for more documents only while
        #: a batch holds fewer (a lone request is not held back by max_wait)
        self._in_flight = in_flight
        self._items: collections.deque[_Item] = collections.deque()
        self._background: collections.deque[_Background] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._work, name="mtqa-model-worker", daemon=True)
        #: the warm-up report (None until ready); why warm-up failed, if it did
        self.warmup_report: Report | None = None
        self.failure: str | None = None
        #: seconds per micro-batch run, the last ones (for Retry-After and the return pause)
        self._last_seconds = 0.1
        #: documents in the last micro-batch
        self._last_size = 0

    # -- the request side (event loop) ----------------------------------------------------------

    def start(self) -> None:
        """Start the worker; it warms the checker up (loads every model) before anything else."""
        self._thread.start()

    @property
    def ready(self) -> bool:
        """Models are loaded and the worker takes requests."""
        return self._ready.is_set() and self.failure is None and not self._stopping

    @property
    def depth(self) -> int:
        """Documents waiting for the worker."""
        return len(self._items)

    @property
    def full(self) -> bool:
        """The queue takes no more documents."""
        return len(self._items) >= self.max_queue

    def retry_after(self) -> int:
        """Seconds a refused client should wait: about the time to drain the queue, at least 1."""
        batches = max(1, -(-len(self._items) // self.max_batch))
        return max(1, round(batches * self._last_seconds))

    def submit(self, docs: Sequence[Document], timeout: float) -> list[Future[Outcome]]:
        """Queue documents (all or none) and return one future per document.

        Raises:
            QueueFull: the queue has no room for them all.
            BatcherClosed: the batcher is stopping.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            if self._stopping:
                raise BatcherClosed
            if len(self._items) + len(docs) > self.max_queue:
                raise QueueFull
            items = [_Item(d, Future(), deadline) for d in docs]
            self._items.extend(items)
            self._cond.notify()
        return [i.future for i in items]

    def submit_background(self, docs: Sequence[Document]) -> Future[list[Outcome]]:
        """Queue a chunk of background work (jobs); it runs when no request waits."""
        work = _Background(list(docs))
        with self._cond:
            if self._stopping:
                raise BatcherClosed
            self._background.append(work)
            self._cond.notify()
        return work.future

    def stop(self, timeout: float | None = None) -> None:
        """Finish what is queued, then stop the worker and close the checker."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self.checker.close()

    # -- the worker thread ----------------------------------------------------------------------

    def _work(self) -> None:
        try:
            t0 = time.perf_counter()
            self.warmup_report = self.checker.check_many(self._warmup) if self._warmup else None
            logger.info("models loaded in %.1fs; ready", time.perf_counter() - t0)
        except Exception as exc:  # NOTE: the service stays up to say why it is not ready
            logger.exception("warm-up failed")
            self.failure = f"warm-up check failed: {type(exc).__name__}: {exc}"
        self._ready.set()
        while True:
            with self._cond:
                while not self._items and not self._background and not self._stopping:
                    self._cond.wait()
                if not self._items and not self._background:
                    return  # stopping, and nothing is left
                batch = self._gather() if self._items else []
                background = None if batch else self._background.popleft()
            if batch:
                self._run(batch)
            elif background is not None:
                self._run_background(background)

    def _gather(self) -> list[_Item]:
        """Take queued items (holding the lock): up to max_batch / max_batch_chars, waiting a little.

        More documents are waited for while requests in flight have not reached the queue, for
        up to ``max_wait`` after the last arrival. While the batch is smaller than the last one,
        the last one's clients are on their way back (each sends its next request once its
        answer is out, one after another): their pause is longer, ``RETURN_PAUSE`` of the last
        batch's run time, since a batch run at the first of them would hold one or two documents
        and cost nearly as much as a full one. Gathering never takes longer than ``GATHER_CAP``
        pauses of ``max_wait`` or ``RETURN_CAP`` of the last batch's run time, which bounds what
        waiting can cost when nobody comes back.
        """
        batch: list[_Item] = []
        chars = 0
        start = last = time.monotonic()
        returning = max(self.max_wait, self.RETURN_PAUSE * self._last_seconds)
        cap = start + max(self.GATHER_CAP * self.max_wait, self.RETURN_CAP * self._last_seconds)
        while len(batch) < self.max_batch:
            if not self._items:
                if self._stopping:
                    break
                expected = len(batch) < self._last_size
                coming = self._in_flight is None or len(batch) < self._in_flight()
                if not (expected or coming):
                    break  # a lone client is not held back
                left = min(last + (returning if expected else self.max_wait), cap) - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
                continue
            item = self._items[0]
            size = len(item.doc.mt) + sum(len(r) for r in item.doc.ref)
            if batch and chars + size > self.max_batch_chars:
                break
            self._items.popleft()
            last = time.monotonic()
            # NOTE: a request that timed out (504 already sent) cancelled its future: skip it
            if not item.future.set_running_or_notify_cancel():
                continue
            if item.deadline <= last:
                item.future.set_exception(DeadlineExceeded())
                continue
            batch.append(item)
            chars += size
        return batch

    def _check(self, docs: list[Document]) -> list[Outcome]:
        """Reports for documents; if the batch fails, each document alone (one bad one costs one)."""
        try:
            return list(self.checker.check_many(docs).documents)
        except Exception as exc:
            if len(docs) == 1:
                logger.exception("checking %s failed", docs[0].id)
                return [f"checking failed: {type(exc).__name__}: {exc}"]
            logger.warning("a batch of %d failed (%s); checking one at a time", len(docs), exc)
        return [r for d in docs for r in self._check([d])]

    def _run(self, batch: list[_Item]) -> None:
        t0 = time.perf_counter()
        outcomes = self._check([i.doc for i in batch])
        self._last_seconds = 0.5 * self._last_seconds + 0.5 * (time.perf_counter() - t0)
        self._last_size = len(batch)
        if self._on_batch is not None:
            self._on_batch(len(batch))
        for item, outcome in zip(batch, outcomes):
            item.future.set_result(outcome)

    def _run_background(self, work: _Background) -> None:
        if not work.future.set_running_or_notify_cancel():
            return
        try:
            outcomes = self._check(work.docs)
        except BaseException as exc:  # NOTE: hand every failure to the waiting job thread
            work.future.set_exception(exc)
            return
        if self._on_batch is not None:
            self._on_batch(len(work.docs))
        work.future.set_result(outcomes)
