"""Batch scoring on a Ray cluster (``mtqa batch --engine ray``), on Ray Data.

The driver reads the inputs with the local engine's loaders (``mtqa.batch.iter_inputs``), so a bad
line is the same ``file:line`` error line, and hands the documents still to score to a Ray Data
``map_batches`` pipeline whose callable class, ``CheckBatch``, builds one ``Checker`` per actor
from the plain ``Settings`` dict (models load once per actor). Results come back in any order;
``mtqa.batch._run`` commits each batch to the driver's SQLite store and writes the outputs from
it in input order, exactly as the local engine does, so both engines write the same files and
share one store (same content key, same settings signature).

Exactly once across machines: before returning a batch, each actor commits it atomically (a
temporary file renamed into place) to ``OUT-stem.parts/CONFIG/KK/KEY-UNIQUE.jsonl`` beside the
output (``KEY`` the content key of the batch's first document, ``KK`` its first two characters).
The driver removes a part once its rows are in the SQLite store; a driver killed in between
leaves parts behind, and the next run imports them into the store before deciding what to score,
so a batch a worker finished is never scored again. On a cluster, put ``--out`` on storage every
node sees (NFS, a mounted bucket); otherwise the parts land on each worker's disk and only what
reached the driver is kept.

Ray is imported only here, and only when this engine runs (``import mtqa`` never imports it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import pickle
import socket
import time
import uuid
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import TYPE_CHECKING, Any

from mtqa.batch import (
    Scored,
    _report_json,
    _run,
    _score,
    config_signature,
)
from mtqa.config import Settings
from mtqa.errors import ConfigError
from mtqa.pipeline import Checker
from mtqa.types import BadRecord, BatchSummary, Document, JSONValue

if TYPE_CHECKING:
    import numpy as np

    from mtqa.batch import ProgressCallback, ResultStore

__all__ = ["INSTALL", "RAY_VERSION", "CheckBatch", "default_parts", "require_ray", "run_on_ray"]

logger = logging.getLogger(__name__)

#: the Ray release this engine is tested with (the ``mtqa[ray]`` extra pins it)
RAY_VERSION = "2.60"
#: how to get it
INSTALL = "pip install 'mtqa[ray]'"
#: attempts of a batch whose worker process dies (the first try and Ray's retries); after them,
#: its documents are tried one by one, and one that still kills its worker is an error line
ATTEMPTS = 3


def require_ray() -> ModuleType:
    """The ``ray`` module with Ray Data, or a ConfigError that says how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401 - Ray Data is a separate extra of ray
    except ImportError as exc:
        err = (f"--engine ray needs Ray Data, which is not installed here ({exc}); install it "
               f"with: {INSTALL}  (or pip install 'ray[data]=={RAY_VERSION}.*')")
        raise ConfigError(err) from exc
    module: ModuleType = ray
    return module


def default_parts(out: Path) -> Path:
    """Where workers commit their batches: ``results.jsonl`` → ``results.parts/``."""
    return out.with_name(out.stem + ".parts")


def _pack(doc: Document) -> bytes:
    """A Document as bytes for a Ray Data row (its ``meta`` is a read-only proxy pickle refuses)."""
    return pickle.dumps((doc.id, doc.mt, doc.ref, doc.src, dict(doc.meta), doc.origin),
                        protocol=pickle.HIGHEST_PROTOCOL)


def _unpack(data: bytes) -> Document:
    doc_id, mt, ref, src, meta, origin = pickle.loads(data)
    return Document(id=doc_id, mt=mt, ref=tuple(ref), src=src, meta=MappingProxyType(meta),
                    origin=origin)


class CheckBatch:
    """The ``map_batches`` UDF: one Checker per actor, built from the plain Settings dict.

    Each call checks a batch (``doc``: pickled Documents, ``pos``: input positions), commits its
    reports to a part file when ``parts`` is given, and returns one row per document.
    """

    def __init__(self, settings: dict[str, JSONValue], parts: str | None = None) -> None:
        self.settings = Settings.from_dict(settings)
        self.checker = Checker(self.settings)
        #: what the driver checks against its own: a node with another mtqa version, model
        #: or calibration file must not write results under the driver's key
        self.signature = config_signature(self.settings, self.checker.calibration.fingerprint())
        self.parts = Path(parts) if parts else None
        self.host = socket.gethostname()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        docs = [_unpack(b) for b in batch["doc"]]
        t0 = time.perf_counter()
        results = _score(self.checker, docs)
        seconds = (time.perf_counter() - t0) / max(len(docs), 1)
        reports = ["" if isinstance(r, str) else _report_json(r) for r in results]
        errors = [r if isinstance(r, str) else "" for r in results]
        part = self._commit([str(k) for k in batch["key"]], docs, reports, seconds)
        n = len(docs)
        return {"pos": [int(p) for p in batch["pos"]], "report": reports, "error": errors,
                "seconds": [seconds] * n, "part": [part] * n, "signature": [self.signature] * n,
                "host": [self.host] * n}

    def _commit(self, keys: Sequence[str], docs: list[Document], reports: list[str],
                seconds: float) -> str:
        """Write the scored rows to a new part file, atomically; its path ("" if none)."""
        rows = [json.dumps({"content": str(k), "doc_id": d.id, "report": r, "seconds": seconds},
                           ensure_ascii=False) + "\n"
                for k, d, r in zip(keys, docs, reports) if r]
        if self.parts is None or not rows:
            return ""
        first = str(keys[0])
        folder = self.parts / first[:2]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{first}-{uuid.uuid4().hex[:8]}.jsonl"
        tmp = folder / f".{path.name}.tmp"
        tmp.write_text("".join(rows), encoding="utf-8")
        os.replace(tmp, path)  # NOTE: a killed worker leaves a .tmp at worst, never half a part
        return str(path)

    def __del__(self) -> None:
        checker = getattr(self, "checker", None)
        if checker is not None:
            checker.close()


def _import_parts(db: ResultStore, config: str, parts: Path) -> int:
    """Commit the rows of parts a killed driver never received to the store; how many were new."""
    if not parts.is_dir():
        return 0
    files = sorted(parts.glob("*/*.jsonl"))
    new = 0
    for path in files:
        rows: list[tuple[str, str, str, float]] = []
        try:
            for line in path.read_text(encoding="utf-8").split("\n"):
                if line:
                    r = json.loads(line)
                    rows.append((str(r["content"]), str(r["doc_id"]), str(r["report"]),
                                 float(r["seconds"])))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("%s: unreadable result part, its documents are scored again: %s",
                           path, exc)
            continue
        have = db.get(config, [c for c, _, _, _ in rows])
        fresh = [r for r in rows if r[0] not in have]
        db.put(config, fresh)
        new += len(fresh)
        path.unlink()
    if files:
        logger.info("imported %d results from %d parts under %s", new, len(files), parts)
    return new


def _connect(ray: ModuleType, address: str | None, workers: int | None) -> tuple[int, int, bool]:
    """Join (or start) Ray; (actors, CPUs per actor, whether this call started Ray)."""
    started = False
    if ray.is_initialized():
        cores = int(ray.cluster_resources().get("CPU", 1))
    elif address is not None:
        try:
            ray.init(address=address, logging_level=logging.WARNING)
        except ConnectionError as exc:
            err = f"cannot reach the Ray cluster at {address!r}: {exc}"
            raise ConfigError(err) from exc
        cores = int(ray.cluster_resources().get("CPU", 1))
        started = True
    else:
        cores = os.cpu_count() or 1
    n = workers if workers is not None else max(1, cores // 2)
    # NOTE: Ray sets OMP_NUM_THREADS to an actor's CPUs, so this is also its torch threads
    per = max(1, cores // n)
    if ray.is_initialized():
        # NOTE: on a cluster joined, at most half its CPUs per actor, so the actors retrying a
        # crashed batch fit beside one Ray has not yet released (a hang, seen on 4 CPUs)
        per = max(1, min(per, cores // 2))
    if not ray.is_initialized():
        # NOTE: one logical CPU more than the actors take, for Ray Data's own tasks: without it
        # the actors can hold every CPU and starve them (seen on 2 cores)
        ray.init(num_cpus=n * per + 1, include_dashboard=False, logging_level=logging.WARNING)
        started = True
    return n, per, started


def _dataset(ray: ModuleType, docs: list[tuple[int, Document, str]], settings: Settings,
             parts: Path, batch_size: int, actors: int, cpus: int) -> Any:
    """The Ray Data pipeline: the documents as rows, checked by a pool of ``actors``."""
    rows = [{"pos": i, "key": k, "doc": _pack(d)} for i, d, k in docs]
    batch_size = _batch_size(len(rows), batch_size, actors)
    ds = ray.data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / batch_size)))
    with warnings.catch_warnings():
        # NOTE: Ray 2.60 has no named parameter for task retries yet (2.64 drops the kwargs)
        warnings.simplefilter("ignore", DeprecationWarning)
        return ds.map_batches(
            CheckBatch, batch_size=batch_size, batch_format="numpy",
            # NOTE: one batch at a time per actor: with Ray's default (several queued on each
            # actor) the first actor ready takes the first batches and the last ones wait
            # behind it while another actor idles (2 actors ran at 0.45x of 1 process)
            compute=ray.data.ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=1),
            num_cpus=cpus,
            fn_constructor_kwargs={"settings": settings.to_dict(), "parts": str(parts)},
            max_task_retries=ATTEMPTS - 1)


#: batches per actor at least, when the documents allow: the run ends when the slowest actor's
#: last batch does, so smaller batches even the actors' loads out
BATCHES_PER_ACTOR = 4


def _batch_size(documents: int, chunk_size: int, actors: int) -> int:
    """Documents per Ray batch: at most ``chunk_size``, small enough that each of ``actors``
    gets ``BATCHES_PER_ACTOR`` batches (40 documents in chunks of 32 gave one actor 32 and the
    other 8)."""
    return max(1, min(chunk_size, math.ceil(documents / (actors * BATCHES_PER_ACTOR))))


class _RayEngine:
    """An ``Engine`` for ``mtqa.batch._run``: pending documents checked by a Ray Data actor pool."""

    def __init__(self, ray: ModuleType, settings: Settings, signature: str, keys: list[str],
                 parts: Path, chunk_size: int, address: str | None, workers: int | None) -> None:
        self.ray, self.settings, self.signature, self.keys = ray, settings, signature, keys
        self.parts, self.chunk_size, self.address, self.workers = parts, chunk_size, address, workers
        self.started = False

    def __call__(self, pending: list[tuple[int, Document]]) -> Iterator[Scored]:
        actors, cpus, self.started = _connect(self.ray, self.address, self.workers)
        context = self.ray.data.DataContext.get_current()
        saved = (context.max_errored_blocks, context.enable_progress_bars)
        # NOTE: a batch whose worker keeps dying is dropped, not fatal: its documents are
        # tried one by one below, and the rest of the run goes on
        context.max_errored_blocks = -1
        context.enable_progress_bars = False
        todo = {i: (d, self.keys[i]) for i, d in pending}
        try:
            for size in (self.chunk_size, 1):
                docs = [(i, d, k) for i, (d, k) in sorted(todo.items())]
                if not docs:
                    break
                if size == 1:
                    logger.warning("%d documents came back from no worker; checking them one "
                                   "at a time", len(docs))
                    if not _wait_for_cpus(self.ray, cpus):
                        break  # NOTE: never hang on a pool Ray has not released: error lines
                ds = _dataset(self.ray, docs, self.settings, self.parts, size, actors, cpus)
                for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                    yield _rows(batch, self.signature)
                    for i in batch["pos"]:
                        todo.pop(int(i), None)
                    for part in {str(p) for p in batch["part"] if p}:
                        Path(part).unlink(missing_ok=True)  # in the store now
            if todo:
                yield [(i, None, f"{d.origin or d.id}: checking failed: the Ray worker checking "
                                 f"it died {ATTEMPTS} times", 0.0)
                       for i, (d, _) in sorted(todo.items())]
        finally:
            context.max_errored_blocks, context.enable_progress_bars = saved

    def close(self) -> None:
        """End the Ray session if this engine started it; remove the emptied part folders."""
        for folder in sorted(self.parts.glob("*"), reverse=True) + [self.parts,
                                                                    self.parts.parent]:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty: parts left are for the next run
        if self.started:
            self.ray.shutdown()
            self.started = False


def _wait_for_cpus(ray: ModuleType, cpus: int, timeout: float = 120.0) -> bool:
    """Whether the CPUs for one more actor are free within ``timeout`` (an old pool can linger)."""
    deadline = time.monotonic() + timeout
    while ray.available_resources().get("CPU", 0) < cpus:
        if time.monotonic() > deadline:
            logger.warning("no CPUs freed for a retry actor in %.0fs; the documents left become "
                           "error lines (the next run tries them again)", timeout)
            return False
        time.sleep(0.5)
    return True


def _rows(batch: dict[str, np.ndarray], signature: str) -> Scored:
    for theirs, host in zip(batch["signature"], batch["host"]):
        if str(theirs) != signature:
            err = (f"the Ray worker on {host} scores under other settings than this driver "
                   f"(another mtqa version, model or calibration file, or precision auto on a "
                   f"machine without native bf16: give --precision?): {theirs} != {signature}")
            raise ConfigError(err)
    return [(int(p), str(r) or None, str(e) or None, float(s))
            for p, r, e, s in zip(batch["pos"], batch["report"], batch["error"], batch["seconds"])]


def run_on_ray(items: list[Document | BadRecord], keys: list[str], db: ResultStore,
               checker: Checker, out: Path, csv_out: Path | None, html_dir: Path | None,
               chunk_size: int, on_progress: ProgressCallback | None, t0: float, *,
               address: str | None = None, workers: int | None = None) -> BatchSummary:
    """``mtqa.batch._run`` with the documents checked by Ray Data actors.

    ``address``: a running cluster (``ray start --head`` prints it; default: a Ray instance this
    process has already joined, else a local one started here); ``workers``: the actors (default
    one per 2 CPUs of the cluster).

    Raises:
        ConfigError: Ray is not installed, the cluster cannot be reached, or a worker scores
            under other settings than the driver.
    """
    ray = require_ray()
    if workers is not None and workers < 1:
        err = f"--workers must be at least 1, not {workers}"
        raise ConfigError(err)
    signature = config_signature(checker.settings, checker.calibration.fingerprint())
    parts = default_parts(out) / db.config(signature)
    _import_parts(db, db.config(signature), parts)
    engine = _RayEngine(ray, checker.settings, signature, keys, parts, chunk_size, address,
                        workers)
    try:
        return _run(items, keys, db, checker, out, csv_out, html_dir, chunk_size, on_progress,
                    t0, engine=engine)
    finally:
        engine.close()
