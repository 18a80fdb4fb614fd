"""The guards in front of every route, as pure ASGI middleware: draining (503), bearer auth
(401), body limits (413, from Content-Length or as the body streams in: Starlette has none),
Idempotency-Key replays, and the request metrics."""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from starlette.responses import Response

from mtqa.serve.metrics import Metrics
from mtqa.serve.options import ServeOptions
from mtqa.serve.problems import problem_response

__all__ = ["OPEN_PATHS", "Guard", "GuardedService", "Idempotency"]

#: paths answered without a token (probes and the API description)
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json", "/docs", "/docs/oauth2-redirect"})
#: paths that do not count as work in flight (a drain does not wait for them)
_PROBES = frozenset({"/healthz", "/readyz", "/metrics"})
ASGIApp = Callable[[dict[str, Any], Callable[[], Awaitable[dict[str, Any]]],
                    Callable[[dict[str, Any]], Awaitable[None]]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class Idempotency:
    """Answers by Idempotency-Key (in memory, the newest ``size``): a retried POST gets the first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: collections.OrderedDict[str, tuple[str, asyncio.Future[tuple[int, list[tuple[bytes, bytes]], bytes]]]] = collections.OrderedDict()

    def lookup(self, key: str, fingerprint: str
               ) -> asyncio.Future[tuple[int, list[tuple[bytes, bytes]], bytes]] | None | bool:
        """The first answer's future; None when the key is new; False when it came with another body."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        return entry[1] if entry[0] == fingerprint else False

    def begin(self, key: str, fingerprint: str
              ) -> asyncio.Future[tuple[int, list[tuple[bytes, bytes]], bytes]]:
        fut: asyncio.Future[tuple[int, list[tuple[bytes, bytes]], bytes]] = (
            asyncio.get_running_loop().create_future())
        self._entries[key] = (fingerprint, fut)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return fut

    def forget(self, key: str) -> None:
        self._entries.pop(key, None)




class GuardedService(Protocol):
    """What the guard reads and counts on the service."""

    options: ServeOptions
    metrics: Metrics
    idempotency: Idempotency
    draining: bool
    inflight: int


class Guard:
    """Pure ASGI middleware: metrics, draining (503), bearer auth (401), body limits (413) and
    Idempotency-Key replays, before FastAPI sees the request."""

    def __init__(self, app: ASGIApp, service: GuardedService) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = [500]

        async def send_status(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        work = scope["path"] not in _PROBES
        self.service.inflight += work
        try:
            await self._handle(scope, receive, send_status)
        finally:
            self.service.inflight -= work
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.service.metrics.request(scope["method"], route, status[0],
                                         time.perf_counter() - t0)

    async def _handle(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        service, path = self.service, scope["path"]
        headers = {k.decode("latin-1").lower(): v for k, v in scope["headers"]}
        if service.draining and path != "/healthz":
            await _send(problem_response(503, "the server is shutting down; retry on another "
                                              "instance", slug="shutting-down",
                                         headers={"Retry-After": "1", "Connection": "close"}),
                        scope, receive, send)
            return
        token = service.options.token
        if token is not None and path not in OPEN_PATHS:
            given = headers.get("authorization", b"")
            scheme, _, value = given.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(
                    value.strip(), token.encode("utf-8")):
                detail = ("missing bearer token: send 'Authorization: Bearer TOKEN'" if not given
                          else "the bearer token is not valid")
                await _send(problem_response(401, detail, slug="unauthorized",
                                             headers={"WWW-Authenticate": 'Bearer realm="mtqa"'}),
                            scope, receive, send)
                return
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        limit = (service.options.max_job_bytes if path == "/v1/jobs"
                 else service.options.max_body_bytes)
        body = await _read_body(headers, receive, limit)
        if isinstance(body, Response):
            await _send(body, scope, receive, send)
            return
        if body is None:
            return  # the client went away
        replay = _replayer(body)
        key = headers.get("idempotency-key")
        if key is None or path == "/v1/jobs":  # NOTE: jobs keep their keys in the jobs database
            await self.app(scope, replay, send)
            return
        await self._idempotent(scope, replay, send, key.decode("latin-1"), body)

    async def _idempotent(self, scope: dict[str, Any], receive: Receive, send: Send, key: str,
                          body: bytes) -> None:
        cache = self.service.idempotency
        cache_key = f"{scope['method']} {scope['path']} {key}"
        fingerprint = hashlib.sha256(scope.get("query_string", b"") + b"\0" + body).hexdigest()
        first = cache.lookup(cache_key, fingerprint)
        if first is False:
            await _send(problem_response(
                422, "this Idempotency-Key was used with a different request; use a new key",
                slug="idempotency-key-reused"), scope, receive, send)
            return
        if first is not None and first is not True:
            try:
                status, headers, content = await asyncio.shield(first)
            except asyncio.CancelledError:
                if not first.cancelled():
                    raise  # this request itself was cancelled
                # NOTE: the first attempt was refused or failed and is not remembered: answer
                # this one afresh
                await self._idempotent(scope, receive, send, key, body)
                return
            await send({"type": "http.response.start", "status": status,
                        "headers": [*headers, (b"idempotent-replayed", b"true")]})
            await send({"type": "http.response.body", "body": content})
            return
        fut = cache.begin(cache_key, fingerprint)
        start: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def capture(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            status = int(start.get("status", 500))
            # NOTE: refusals that a retry may get past (429, 5xx) are not remembered
            if status >= 500 or status == 429 or not start:
                cache.forget(cache_key)
                fut.cancel()
            else:
                fut.set_result((status, list(start.get("headers", [])), b"".join(chunks)))


async def _send(response: Response, scope: dict[str, Any], receive: Receive, send: Send) -> None:
    await response(scope, receive, send)  # type: ignore[arg-type]


async def _read_body(headers: Mapping[str, bytes], receive: Receive, limit: int
                     ) -> bytes | Response | None:
    """The whole body, at most ``limit`` bytes (Content-Length first, then as it streams in)."""
    too_large = problem_response(413, f"the body is over this server's limit of {limit:,} bytes "
                                      f"(--max-body-bytes / --max-job-bytes)", slug="body-too-large")
    length = headers.get("content-length")
    if length is not None:
        if not length.strip().isdigit():
            return problem_response(400, "Content-Length is not a number", slug="bad-body")
        if int(length) > limit:
            return too_large
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return too_large
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replayer(body: bytes) -> Receive:
    sent = [False]

    async def receive() -> dict[str, Any]:
        if not sent[0]:
            sent[0] = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # NOTE: like a client that keeps the connection open
        return {"type": "http.disconnect"}

    return receive


