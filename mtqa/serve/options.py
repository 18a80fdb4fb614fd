"""The service's own options (limits, batching, state): plain data, no web framework imported.

``mtqa.cli`` reads the defaults from here, so importing the CLI never imports FastAPI.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ServeOptions"]


@dataclass(frozen=True, slots=True)
class ServeOptions:
    """How ``mtqa serve`` listens, batches, limits and keeps state (the checkers come from Settings)."""

    HOST = "127.0.0.1"
    PORT = 8080
    MAX_BATCH = 32
    MAX_WAIT_MS = 2.0
    MAX_QUEUE = 256
    #: characters one micro-batch may hold (a token budget, roughly): long articles batch fewer
    MAX_BATCH_CHARS = 400_000
    TIMEOUT = 30.0
    MAX_BODY_BYTES = 4 * 1024 * 1024
    MAX_JOB_BYTES = 64 * 1024 * 1024
    MAX_CHARS = 200_000
    MAX_ITEMS = 32
    IDEMPOTENCY_ENTRIES = 10_000

    host: str = HOST
    port: int = PORT
    max_batch: int = MAX_BATCH
    max_wait_ms: float = MAX_WAIT_MS
    max_queue: int = MAX_QUEUE
    max_batch_chars: int = MAX_BATCH_CHARS
    #: seconds a request may wait for its answer before it gets 504
    timeout: float = TIMEOUT
    max_body_bytes: int = MAX_BODY_BYTES
    max_job_bytes: int = MAX_JOB_BYTES
    #: characters of one text field (mt, each ref, src)
    max_chars: int = MAX_CHARS
    #: documents in one POST /v1/check:batch
    max_items: int = MAX_ITEMS
    #: SQLite files of the jobs and their results; None: a temporary directory (jobs do not
    #: survive a restart)
    state_dir: Path | None = None
    #: TOML policies, one per file, named by the file stem
    policy_dir: Path | None = None
    #: bearer token; None: no authentication. Never logged (repr=False).
    token: str | None = field(default=None, repr=False)
    idempotency_entries: int = IDEMPOTENCY_ENTRIES
    access_log: bool = False

    def check(self) -> list[str]:
        """What is wrong with these options (empty when they are usable)."""
        problems = []
        for name in ("max_batch", "max_queue", "max_batch_chars", "max_body_bytes",
                     "max_job_bytes", "max_chars", "max_items", "idempotency_entries"):
            if getattr(self, name) < 1:
                problems.append(f"{name.replace('_', '-')} must be at least 1")
        if self.max_wait_ms < 0:
            problems.append("max-wait-ms must not be negative")
        if not self.timeout > 0:
            problems.append("timeout must be positive")
        if not 0 <= self.port <= 65535:
            problems.append("port must be 0-65535")
        if self.token is not None and not self.token.strip():
            problems.append("the token is empty")
        return problems
