"""The FastAPI application of ``mtqa serve``: the routes, and the ``Service`` that owns the
Checker's worker, the job thread and the stores (the guards in front are ``mtqa.serve.guard``).

Every handler is ``async`` and only waits: checks go to the micro-batcher's single worker thread
(``mtqa.serve.batcher``), never into Starlette's thread pool.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import enum
import json
import logging
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import ValidationError

from mtqa import __version__
from mtqa.batch import ResultStore, config_signature
from mtqa.config import Settings
from mtqa.gate import decide
from mtqa.render.json import document_from_dict, document_to_dict, render_error_line, render_jsonl_line
from mtqa.serve.batcher import (BatcherClosed, CheckerLike, DeadlineExceeded, MicroBatcher,
                                QueueFull)
from mtqa.serve.guard import Guard, Idempotency
from mtqa.serve.jobs import Job, JobRunner, JobStore, document_of, request_sha256
from mtqa.serve.metrics import Metrics
from mtqa.serve.options import ServeOptions
from mtqa.serve.policies import DEFAULT, NamedPolicy
from mtqa.serve.problems import ProblemError, install_handlers, problem_response, validation_detail
from mtqa.serve.schemas import BatchIn, DocumentIn, GateIn, to_document
from mtqa.types import SCHEMA, BatchRow, Document, DocumentReport, JSONValue

__all__ = ["Offsets", "Service", "create_app"]

logger = logging.getLogger(__name__)

_WARMUP = Document(
    id="warm-up",
    mt="The talks in Geneva were successful, officials said on Monday. Both sides will meet again.",
    ref=("Officials said on Monday that the Geneva talks had succeeded and would continue.",),
)
_JSONL_TYPES = ("application/x-ndjson", "application/jsonl", "application/x-jsonlines",
                "text/plain")

class Offsets(str, enum.Enum):
    """How span offsets are counted in the answer."""

    codepoint = "codepoint"
    utf16 = "utf16"


def json_response(data: object, status: int = 200, headers: Mapping[str, str] | None = None
                  ) -> Response:
    """JSON as mtqa writes it everywhere: UTF-8 (not ASCII-escaped), sorted keys, no NaN."""
    body = json.dumps(data, ensure_ascii=False, sort_keys=True, allow_nan=False)
    return Response(body, status_code=status, headers=dict(headers or {}),
                    media_type="application/json")


def _utf16_index(text: str) -> Callable[[int], int]:
    """Code-point index → UTF-16 code-unit index in ``text`` (astral characters count twice)."""
    astral = [i for i, c in enumerate(text) if ord(c) > 0xFFFF]
    return lambda i: i + bisect.bisect_left(astral, i)


def _document_json(report: DocumentReport, offsets: Offsets) -> dict[str, JSONValue]:
    data = document_to_dict(report)
    data["schema"] = SCHEMA
    if offsets is Offsets.utf16:
        to16 = _utf16_index(report.mt)
        data["spans"] = [{**_span_json(s), "start_utf16": to16(span.start),
                          "end_utf16": to16(span.end)}
                         for s, span in zip(_as_list(data["spans"]), report.spans)]
    return data


def _as_list(value: JSONValue) -> list[JSONValue]:
    return value if isinstance(value, list) else []


def _span_json(value: JSONValue) -> dict[str, JSONValue]:
    return value if isinstance(value, dict) else {}


class Service:
    """Everything one server process owns: the Checker's worker, the job thread, the stores.

    Built before the server starts (bad settings fail then, not at the first request); the
    lifespan ``start()``s it and ``stop()``s it.
    """

    def __init__(self, checker: CheckerLike, settings: Settings, options: ServeOptions,
                 policies: Mapping[str, NamedPolicy], calibration: str) -> None:
        self.settings = settings
        self.options = options
        self.policies = dict(policies)
        self.calibration = calibration
        self.metrics = Metrics()
        self.batcher = MicroBatcher(
            checker, max_batch=options.max_batch, max_wait=options.max_wait_ms / 1000.0,
            max_queue=options.max_queue, max_batch_chars=options.max_batch_chars,
            warmup=[_WARMUP], on_batch=self.metrics.batch, in_flight=lambda: self.inflight)
        self._tmp: Path | None = None
        self.state_dir = options.state_dir
        self.draining = False
        self.inflight = 0
        self.idempotency = Idempotency(options.idempotency_entries)
        self.config_key = ""
        self.jobs: JobStore | None = None
        self.results: ResultStore | None = None
        self.runner: JobRunner | None = None
        self.metrics.gauges.update({
            "mtqa_queue_depth": ("Documents waiting for the model worker.",
                                 lambda: float(self.batcher.depth)),
            "mtqa_ready": ("1 when the models are loaded and the queue has room.",
                           lambda: float(self.ready)),
            "mtqa_requests_in_flight": ("Requests being answered.", lambda: float(self.inflight)),
        })

    @property
    def ready(self) -> bool:
        """Models loaded, queue not full, not draining."""
        return self.batcher.ready and not self.batcher.full and not self.draining

    def start(self) -> None:
        """Open the stores (in the event loop's thread) and start the worker and the job thread."""
        if self.state_dir is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="mtqa-serve-"))
            self.state_dir = self._tmp
            logger.warning("no --state-dir: jobs are kept in %s and lost at shutdown", self._tmp)
        self.results = ResultStore(self.state_dir / "results.sqlite")
        self.jobs = JobStore(self.state_dir / "jobs.sqlite")
        self.config_key = self.results.config(config_signature(self.settings, self.calibration))
        self.batcher.start()
        self.runner = JobRunner(self.state_dir, self.batcher, self.config_key,
                                chunk_size=self.options.max_batch)
        self.runner.start()

    def stop_threads(self) -> None:
        """Stop the job thread (after its chunk), then the worker (after its queue); close the Checker."""
        if self.runner is not None:
            self.runner.stop(timeout=self.options.timeout + 60)
        self.batcher.stop(timeout=self.options.timeout + 60)

    def close_stores(self) -> None:
        """Close the event loop's store connections (and remove a temporary state directory)."""
        for db in (self.jobs, self.results):
            if db is not None:
                db.close()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def policy(self, name: str | None) -> NamedPolicy:
        """A named policy.

        Raises:
            ProblemError: 404 for a name the server does not know.
        """
        key = name or DEFAULT
        if key not in self.policies:
            err = (f"no policy named {key!r}; this server has: {', '.join(sorted(self.policies))} "
                   f"(the TOML files of --policy-dir, by file stem)")
            raise ProblemError(404, err, slug="unknown-policy")
        return self.policies[key]

    async def check(self, docs: Sequence[Document]) -> list[DocumentReport | str]:
        """Reports (or why checking failed) through the micro-batcher, within the deadline.

        Raises:
            ProblemError: 429 queue full, 503 shutting down or not able to check, 504 deadline.
        """
        if self.batcher.failure is not None:
            raise ProblemError(503, f"the server cannot check documents: {self.batcher.failure}",
                               slug="not-ready")
        try:
            futures = self.batcher.submit(docs, self.options.timeout)
        except QueueFull:
            self.metrics.rejected("queue_full")
            wait = self.batcher.retry_after()
            raise ProblemError(
                429, f"the check queue is full ({self.batcher.max_queue} documents); retry in "
                     f"{wait} s", slug="queue-full", headers={"Retry-After": str(wait)}) from None
        except BatcherClosed:
            raise ProblemError(503, "the server is shutting down", slug="shutting-down",
                               headers={"Retry-After": "1"}) from None
        waiting = [asyncio.wrap_future(f) for f in futures]
        try:
            return list(await asyncio.wait_for(asyncio.gather(*waiting),
                                               timeout=self.options.timeout))
        except (TimeoutError, DeadlineExceeded):
            for f in futures:
                f.cancel()
            self.metrics.rejected("timeout")
            raise ProblemError(504, f"no answer within the {self.options.timeout:g} s deadline "
                                    f"(--timeout); the server is overloaded or the text is long",
                               slug="deadline-exceeded") from None


def _check_failed(outcome: str) -> ProblemError:
    return ProblemError(500, outcome, slug="check-failed")


def _document(item: DocumentIn, service: Service, default_id: str = "doc", where: str = ""
              ) -> Document:
    return to_document(item, default_id=default_id, max_chars=service.options.max_chars,
                       where=where)


def _gate_json(report: DocumentReport, named: NamedPolicy) -> dict[str, JSONValue]:
    verdict = decide(report, named.policy)
    reasons: list[JSONValue] = []
    for r in verdict.reasons:
        spans: list[JSONValue] = [
            {"start": report.spans[i].start, "end": report.spans[i].end,
             "text": report.spans[i].text, "category": report.spans[i].category,
             "severity": report.spans[i].severity.value}
            for i in r.spans if 0 <= i < len(report.spans)]
        reasons.append({"rule": r.rule, "value": r.value, "threshold": r.threshold,
                        "message": r.message, "blocking": r.blocking, "spans": spans})
    return {"id": report.id, "passed": verdict.passed,
            "decision": "pass" if verdict.passed else "fail", "score": round(report.score, 2),
            "reasons": reasons, "policy": {"name": named.name, "sha256": named.sha256},
            "skipped": [{"checker": s.checker, "reason": s.reason} for s in report.skipped],
            "signature": report.signature}


def _parse_job_records(body: bytes, content_type: str) -> list[tuple[str, object]]:
    """``(where, record)`` of a job body: a JSON list (or ``{"documents": [...]}``) or JSONL."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        err = f"the body is not UTF-8 (byte {exc.start})"
        raise ProblemError(400, err, slug="bad-body") from exc
    kind = content_type.split(";")[0].strip().lower()
    if kind in _JSONL_TYPES:
        out: list[tuple[str, object]] = []
        # NOTE: split on \n only: U+2028 and friends are legal inside JSON strings
        for n, line in enumerate(text.split("\n"), start=1):
            if line.strip():
                try:
                    out.append((f"line {n}", json.loads(line)))
                except json.JSONDecodeError as exc:
                    out.append((f"line {n}", f"line {n}: malformed JSON: {exc.msg} "
                                             f"(column {exc.colno})"))
        return out
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        err = (f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg} (send JSONL "
               f"with Content-Type: application/x-ndjson)")
        raise ProblemError(400, err, slug="bad-body") from exc
    if isinstance(data, dict) and isinstance(data.get("documents"), list):
        data = data["documents"]
    if not isinstance(data, list):
        err = "expected a JSON list of records, {\"documents\": [...]}, or a JSONL body"
        raise ProblemError(422, err, slug="validation-error")
    return [(f"record {n}", r) for n, r in enumerate(data, start=1)]


def _job_item(where: str, record: object, service: Service) -> Document | str:
    """A job's document, or why the record cannot be one (extra fields go to meta, as in JSONL)."""
    if isinstance(record, str):
        return record
    if not isinstance(record, dict):
        return f"{where}: expected a JSON object, got {type(record).__name__}"
    known = {k: v for k, v in record.items() if k in ("id", "mt", "ref", "src", "meta")}
    extra = {k: v for k, v in record.items() if k not in known}
    if extra:
        meta = known.get("meta")
        known["meta"] = {**(meta if isinstance(meta, dict) else {}), **extra}
    if isinstance(known.get("id"), int | float) and not isinstance(known.get("id"), bool):
        known["id"] = str(known["id"])
    try:
        item = DocumentIn.model_validate(known)
        return _document(item, service, default_id=where.replace(" ", ":"), where="")
    except ValidationError as exc:
        detail, _ = validation_detail(exc.errors())
        return f"{where}: {detail}"
    except ProblemError as exc:
        return f"{where}: {exc.detail}"


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"description": text, "content": {"application/problem+json": {}}}
    for code, text in [(401, "Missing or wrong bearer token."),
                       (413, "Body or a text field over the server's limit."),
                       (422, "Validation error; `errors` names each field."),
                       (429, "The check queue is full; see Retry-After."),
                       (503, "Shutting down, or the checkers could not be loaded."),
                       (504, "No answer within the deadline (--timeout).")]
}


def create_app(service: Service) -> FastAPI:
    """The application; its lifespan starts and stops ``service``."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            service.draining = True
            # NOTE: joining threads blocks; do it off the event loop, then close the loop's stores
            await asyncio.to_thread(service.stop_threads)
            service.close_stores()

    app = FastAPI(title="mtqa", version=__version__, lifespan=lifespan,
                  description="Machine-translation quality checks for English news text: "
                              "reports, publish-gate verdicts and batch jobs.")
    install_handlers(app)

    @app.get("/healthz", tags=["probes"])
    async def healthz() -> Response:
        """The process is alive (answers even while models load or the server drains)."""
        return json_response({"status": "ok"})

    @app.get("/readyz", tags=["probes"], responses={503: _ERRORS[503]})
    async def readyz() -> Response:
        """Ready for traffic: models loaded, queue not full, not shutting down."""
        b = service.batcher
        if service.ready:
            return json_response({"status": "ready", "queue": b.depth})
        why = ("shutting down" if service.draining else b.failure if b.failure
               else "loading models" if not b.ready else f"the queue is full ({b.depth})")
        return problem_response(503, f"not ready: {why}", slug="not-ready",
                                headers={"Retry-After": "1"})

    @app.get("/metrics", tags=["probes"], response_class=Response)
    async def metrics() -> Response:
        """Prometheus text: requests, latency, queue depth, batch sizes, documents checked."""
        return Response(service.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/info", tags=["service"])
    async def info() -> Response:
        """Version, settings, checker signatures, calibration, skipped checkers, limits, policies."""
        warm = service.batcher.warmup_report
        doc = warm.documents[0] if warm is not None and warm.documents else None
        o = service.options
        return json_response({
            "mtqa": __version__, "ready": service.ready,
            "signature": None if doc is None else doc.signature,
            "checkers": list(service.settings.checkers),
            "skipped": [] if doc is None else [{"checker": s.checker, "reason": s.reason}
                                               for s in doc.skipped],
            "calibration": service.calibration,
            "policies": [{"name": p.name, "sha256": p.sha256}
                         for p in service.policies.values()],
            "limits": {"max_body_bytes": o.max_body_bytes, "max_job_bytes": o.max_job_bytes,
                       "max_chars": o.max_chars, "max_items": o.max_items,
                       "max_queue": o.max_queue, "max_batch": o.max_batch,
                       "max_wait_ms": o.max_wait_ms, "timeout_s": o.timeout},
            "auth": o.token is not None,
        })

    @app.post("/v1/check", tags=["check"], responses={k: v for k, v in _ERRORS.items()})
    async def check(body: DocumentIn, offsets: Offsets = Offsets.codepoint) -> Response:
        """One document → its report (the document object of `mtqa check --format json`)."""
        doc = _document(body, service)
        (outcome,) = await service.check([doc])
        if isinstance(outcome, str):
            raise _check_failed(outcome)
        return json_response(_document_json(outcome, offsets))

    @app.post("/v1/gate", tags=["check"], responses={404: {"description": "Unknown policy."},
                                                     **_ERRORS})
    async def gate(body: GateIn) -> Response:
        """One document → the publish decision under a named policy, every reason explained."""
        named = service.policy(body.policy)
        doc = _document(DocumentIn.model_validate(body.model_dump(exclude={"policy"})), service)
        (outcome,) = await service.check([doc])
        if isinstance(outcome, str):
            raise _check_failed(outcome)
        return json_response(_gate_json(outcome, named))

    @app.post("/v1/check:batch", tags=["check"], responses=_ERRORS)
    async def check_batch(body: BatchIn, offsets: Offsets = Offsets.codepoint) -> Response:
        """Up to --max-items documents → results in input order; a bad item gets its own error."""
        if len(body.documents) > service.options.max_items:
            err = (f"{len(body.documents)} documents; this server takes at most "
                   f"{service.options.max_items} per batch request (use /v1/jobs for more)")
            raise ProblemError(413, err, slug="too-many-documents")
        results: list[JSONValue] = [None] * len(body.documents)
        docs: list[tuple[int, Document]] = []
        for i, raw in enumerate(body.documents):
            try:
                item = DocumentIn.model_validate(raw)
                docs.append((i, _document(item, service, default_id=str(i),
                                          where=f"documents.{i}.")))
            except ValidationError as exc:
                detail, errors = validation_detail(
                    [{**e, "loc": ("documents", i, *e.get("loc", ()))} for e in exc.errors()])
                results[i] = {"error": ProblemError(422, detail, slug="validation-error",
                                                    errors=errors).to_dict()}
            except ProblemError as exc:
                results[i] = {"error": exc.to_dict()}
        outcomes = await service.check([d for _, d in docs]) if docs else []
        for (i, _), outcome in zip(docs, outcomes):
            results[i] = ({"error": _check_failed(outcome).to_dict()} if isinstance(outcome, str)
                          else _document_json(outcome, offsets))
        return json_response({"schema": SCHEMA, "results": results})

    @app.post("/v1/jobs", tags=["jobs"], status_code=202, responses={
        202: {"description": "Accepted; `Location` is the job."},
        404: {"description": "Unknown policy."}, **_ERRORS},
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": {"type": "array", "items": {"type": "object"}}},
            "application/x-ndjson": {"schema": {"type": "string"}}}}})
    async def create_job(request: Request, policy: str | None = Query(None, max_length=256)
                         ) -> Response:
        """Many documents (JSON list, or JSONL) checked in the background; resumes after restart."""
        named = service.policy(policy)
        body = await request.body()
        fingerprint = request_sha256(body, f"policy={named.name}")
        key = request.headers.get("idempotency-key")
        jobs = service.jobs
        if jobs is None or service.runner is None:
            raise ProblemError(503, "jobs are not available yet", slug="not-ready")
        if key is not None:
            existing = jobs.by_idempotency_key(key)
            if existing is not None:
                if existing.request_sha256 != fingerprint:
                    err = "this Idempotency-Key was used with a different request; use a new key"
                    raise ProblemError(422, err, slug="idempotency-key-reused")
                return _job_created(existing, replayed=True)
        records = _parse_job_records(body, request.headers.get("content-type", "application/json"))
        if not records:
            raise ProblemError(422, "the job has no records", slug="validation-error")
        items = [_job_item(where, record, service) for where, record in records]
        job = jobs.create(items, config=service.config_key, policy=named.name,
                          idempotency_key=key, request_sha256=fingerprint)
        service.runner.notify()
        return _job_created(job)

    @app.get("/v1/jobs/{job_id}", tags=["jobs"], responses={404: {"description": "No such job."}})
    async def get_job(job_id: str) -> Response:
        """A job's status, progress and counts."""
        return json_response(_job(service, job_id).to_dict())

    @app.get("/v1/jobs/{job_id}/results", tags=["jobs"], response_class=StreamingResponse,
             responses={404: {"description": "No such job."},
                        409: {"description": "The job has not finished."}})
    async def job_results(job_id: str) -> Response:
        """A finished job's results as JSONL, in input order (the lines of `mtqa batch`)."""
        job = _job(service, job_id)
        if job.status != "done":
            err = (f"job {job_id} is {job.status} ({job.done} of {job.total} done); "
                   f"poll /v1/jobs/{job_id} until its status is done")
            raise ProblemError(409, err, slug="job-not-finished")
        return StreamingResponse(_job_lines(service, job), media_type="application/x-ndjson")

    app.add_middleware(Guard, service=service)
    return app


def _job(service: Service, job_id: str) -> Job:
    job = None if service.jobs is None else service.jobs.get(job_id)
    if job is None:
        raise ProblemError(404, f"no job {job_id!r} on this server", slug="unknown-job")
    return job


def _job_created(job: Job, replayed: bool = False) -> Response:
    location = f"/v1/jobs/{job.id}"
    headers = {"Location": location, **({"Idempotent-Replayed": "true"} if replayed else {})}
    return json_response({**job.to_dict(), "location": location,
                          "results": f"{location}/results"}, status=202, headers=headers)


async def _job_lines(service: Service, job: Job) -> AsyncIterator[str]:
    """The JSONL of a finished job, in input order, gated with the job's policy."""
    named = service.policies.get(job.policy) or service.policies[DEFAULT]
    if service.jobs is None or service.results is None:
        return
    items = list(service.jobs.items(job.id))
    for start in range(0, len(items), 200):
        part = items[start : start + 200]
        stored = service.results.get(job.config, [c for _, c, _, _, _ in part if c])
        lines = []
        for pos, content, doc_id, record, error in part:
            if error is not None or content is None or record is None or content not in stored:
                why = error or "the result is missing from the store"
                lines.append(render_error_line(BatchRow(origin=f"record {pos + 1}", id=doc_id,
                                                        error=why)))
                continue
            doc = document_of(record)
            report = document_from_dict(json.loads(stored[content]), mt=doc.mt, ref=doc.ref,
                                        id=doc.id, meta=doc.meta)
            report = dataclasses.replace(report, verdict=decide(report, named.policy))
            lines.append(render_jsonl_line(report))
        yield "".join(lines)
        await asyncio.sleep(0)

