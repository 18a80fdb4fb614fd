"""Async jobs: many documents checked in the background, kept in SQLite, resumed after a restart.

Two files under the state directory: ``results.sqlite`` is the batch ``ResultStore`` (reports by
content and configuration; the source of truth, as for ``mtqa batch``) and ``jobs.sqlite`` holds
each job (status, policy, the configuration key) and its items in input order (the record, its
content key, or why it could not be loaded or checked). The job thread gives the micro-batcher
one chunk at a time as background work and commits each chunk's reports before the next, so a
killed server loses at most the chunk in flight, and a restarted one scores only what the store
lacks: no document is scored twice.

Each thread opens its own connections (SQLite connections belong to the thread that made them).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from mtqa.batch import ResultStore
from mtqa.errors import ConfigError
from mtqa.render.json import document_to_dict
from mtqa.serve.batcher import BatcherClosed, MicroBatcher
from mtqa.types import Document, DocumentReport, JSONValue

__all__ = ["JOB_STATES", "Job", "JobRunner", "JobStore", "document_of", "record_json", "request_sha256"]

logger = logging.getLogger(__name__)

JOB_STATES = ("queued", "running", "done", "failed")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, created REAL NOT NULL, status TEXT NOT NULL, total INTEGER NOT NULL,
    done INTEGER NOT NULL DEFAULT 0, errors INTEGER NOT NULL DEFAULT 0,
    scored INTEGER NOT NULL DEFAULT 0, config TEXT NOT NULL, policy TEXT NOT NULL,
    idempotency_key TEXT UNIQUE, request_sha256 TEXT, error TEXT, finished REAL);
CREATE TABLE IF NOT EXISTS job_items (
    job_id TEXT NOT NULL, position INTEGER NOT NULL, content TEXT, doc_id TEXT,
    record TEXT, error TEXT, PRIMARY KEY (job_id, position)) WITHOUT ROWID;
"""


@dataclass(frozen=True, slots=True)
class Job:
    """One job's row."""

    id: str
    created: float
    status: str
    total: int
    done: int
    errors: int
    scored: int
    config: str
    policy: str
    idempotency_key: str | None
    request_sha256: str | None
    error: str | None
    finished: float | None

    def to_dict(self) -> dict[str, JSONValue]:
        """The job as the API shows it."""
        return {"id": self.id, "status": self.status, "created": self.created,
                "finished": self.finished, "policy": self.policy, "error": self.error,
                "progress": round(self.done / self.total, 4) if self.total else 1.0,
                "counts": {"total": self.total, "done": self.done, "errors": self.errors,
                           "pending": self.total - self.done}}


def record_json(doc: Document) -> str:
    """What the job keeps of a document to check it later."""
    return json.dumps({"id": doc.id, "mt": doc.mt, "ref": list(doc.ref), "src": doc.src,
                       "meta": dict(doc.meta)}, ensure_ascii=False, sort_keys=True)


def document_of(record: str) -> Document:
    """The Document a job item keeps (the inverse of ``record_json``)."""
    data = json.loads(record)
    return Document(id=data["id"], mt=data["mt"], ref=tuple(data["ref"]), src=data["src"],
                    meta=MappingProxyType(data["meta"]))


class JobStore:
    """The jobs database (``jobs.sqlite``); one per thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, timeout=60.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            with self._db:
                self._db.executescript(_SCHEMA)
        except (sqlite3.DatabaseError, OSError) as exc:
            err = f"{path}: cannot use this file as the mtqa jobs database: {exc}"
            raise ConfigError(err) from exc

    def create(self, items: Sequence[Document | str], *, config: str, policy: str,
               idempotency_key: str | None = None, request_sha256: str | None = None) -> Job:
        """A new queued job of documents (and, for records that could not be loaded, why)."""
        from mtqa.batch import content_key

        job_id = uuid.uuid4().hex
        errors = sum(1 for i in items if isinstance(i, str))
        rows = [(job_id, n, None, None, None, item) if isinstance(item, str)
                else (job_id, n, content_key(item), item.id, record_json(item), None)
                for n, item in enumerate(items)]
        with self._db:
            self._db.execute(
                "INSERT INTO jobs (id, created, status, total, done, errors, config, policy, "
                "idempotency_key, request_sha256) VALUES (?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?)",
                (job_id, time.time(), len(items), errors, errors, config, policy,
                 idempotency_key, request_sha256))
            self._db.executemany("INSERT INTO job_items VALUES (?, ?, ?, ?, ?, ?)", rows)
        job = self.get(job_id)
        if job is None:  # NOTE: cannot happen: inserted above, in this connection
            err = f"{self.path}: job {job_id} vanished after it was created"
            raise ConfigError(err)
        return job

    def get(self, job_id: str) -> Job | None:
        """A job by id."""
        row = self._db.execute("SELECT id, created, status, total, done, errors, scored, config, "
                               "policy, idempotency_key, request_sha256, error, finished "
                               "FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else Job(*row)

    def by_idempotency_key(self, key: str) -> Job | None:
        """The job a POST with this Idempotency-Key created."""
        row = self._db.execute("SELECT id FROM jobs WHERE idempotency_key = ?", (key,)).fetchone()
        return None if row is None else self.get(row[0])

    def unfinished(self) -> list[str]:
        """Ids of queued and running jobs, oldest first."""
        rows = self._db.execute("SELECT id FROM jobs WHERE status IN ('queued', 'running') "
                                "ORDER BY created, id")
        return [r[0] for r in rows]

    def items(self, job_id: str) -> Iterator[tuple[int, str | None, str | None, str | None, str | None]]:
        """``(position, content key, doc id, record JSON, error)`` of every item, in input order."""
        yield from self._db.execute("SELECT position, content, doc_id, record, error FROM job_items "
                                    "WHERE job_id = ? ORDER BY position", (job_id,))

    def update(self, job_id: str, **fields: object) -> None:
        """Set some of a job's columns."""
        names = ", ".join(f"{k} = ?" for k in fields)
        with self._db:
            self._db.execute(f"UPDATE jobs SET {names} WHERE id = ?", (*fields.values(), job_id))

    def fail_items(self, job_id: str, errors: dict[int, str]) -> None:
        """Record why items could not be checked."""
        with self._db:
            self._db.executemany("UPDATE job_items SET error = ? WHERE job_id = ? AND position = ?",
                                 [(e, job_id, p) for p, e in errors.items()])

    def close(self) -> None:
        """Close the database; calling it twice is harmless."""
        self._db.close()


def request_sha256(body: bytes, query: str) -> str:
    """The fingerprint of a job request (an Idempotency-Key must come with the same request)."""
    return hashlib.sha256(query.encode("utf-8") + b"\0" + body).hexdigest()


class JobRunner:
    """The thread that checks unfinished jobs, oldest first, through the micro-batcher."""

    def __init__(self, state_dir: Path, batcher: MicroBatcher, config: str, chunk_size: int
                 ) -> None:
        self.state_dir = state_dir
        self.batcher = batcher
        self.config = config
        self.chunk_size = chunk_size
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mtqa-jobs", daemon=True)

    def start(self) -> None:
        """Start the thread (it first resumes jobs left unfinished by an earlier process)."""
        self._thread.start()

    def notify(self) -> None:
        """A job was created."""
        self._wake.set()

    def stop(self, timeout: float | None = None) -> None:
        """Stop after the chunk in flight (its reports are committed; the rest waits for a restart)."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def _loop(self) -> None:
        jobs = JobStore(self.state_dir / "jobs.sqlite")
        store = ResultStore(self.state_dir / "results.sqlite")
        try:
            while not self._stop.is_set():
                # NOTE: wait for readiness first: a job must not race the warm-up for the model
                if not self.batcher.ready:
                    self._stop.wait(0.05)
                    continue
                self._wake.clear()
                pending = jobs.unfinished()
                if not pending:
                    self._wake.wait(1.0)
                    continue
                for job_id in pending:
                    if self._stop.is_set():
                        break
                    self._run(jobs, store, job_id)
        except BatcherClosed:
            pass
        except Exception:  # NOTE: the thread must say why jobs stopped, not die silently
            logger.exception("the job thread stopped")
        finally:
            jobs.close()
            store.close()

    def _run(self, jobs: JobStore, store: ResultStore, job_id: str) -> None:
        job = jobs.get(job_id)
        if job is None:
            return
        if job.config != self.config:
            jobs.update(job_id, status="failed", finished=time.time(),
                        error="the server's settings changed since this job was created; "
                              "submit it again")
            return
        items = list(jobs.items(job_id))
        keys = [c for _, c, _, _, e in items if c is not None and e is None]
        stored = set(store.get(job.config, keys))
        todo: dict[str, tuple[int, str]] = {}
        for pos, content, _, record, error in items:
            if content is not None and error is None and content not in stored and record:
                todo.setdefault(content, (pos, record))
        errors = sum(1 for *_, e in items if e is not None)
        done = sum(1 for _, c, _, _, e in items if e is not None or c in stored)
        jobs.update(job_id, status="running", done=done, errors=errors)
        positions: dict[str, list[int]] = {}
        for pos, content, _, _, error in items:
            if content is not None and error is None:
                positions.setdefault(content, []).append(pos)
        order = list(todo.items())
        for start in range(0, len(order), self.chunk_size):
            if self._stop.is_set():
                return
            chunk = order[start : start + self.chunk_size]
            docs = [document_of(record) for _, (_, record) in chunk]
            t0 = time.perf_counter()
            outcomes = self.batcher.submit_background(docs).result()
            seconds = (time.perf_counter() - t0) / max(len(chunk), 1)
            rows, failed = [], {}
            for (content, _), doc, outcome in zip(chunk, docs, outcomes):
                if isinstance(outcome, DocumentReport):
                    data = json.dumps(document_to_dict(outcome), ensure_ascii=False,
                                      sort_keys=True)
                    rows.append((content, doc.id, data, seconds))
                else:
                    failed.update({p: outcome for p in positions[content]})
                done += len(positions[content])
            store.put(job.config, rows)  # committed: a kill after this loses none of the chunk
            if failed:
                jobs.fail_items(job_id, failed)
                errors += len(failed)
            jobs.update(job_id, done=done, errors=errors, scored=job.scored + len(rows))
            job = jobs.get(job_id) or job
        jobs.update(job_id, status="done", finished=time.time(), done=done, errors=errors)
        logger.info("job %s done: %d documents, %d errors", job_id, done, errors)
