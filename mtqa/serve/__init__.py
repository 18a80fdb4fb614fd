"""``mtqa serve``: the HTTP service (FastAPI on uvicorn) for publishing pipelines.

Modules: ``options`` (the service's settings; imports no web framework), ``app`` (routes),
``guard`` (auth, limits, draining, idempotency), ``batcher`` (the model-owning micro-batcher),
``jobs`` (async jobs in SQLite), ``schemas`` (request bodies), ``policies`` (named gate
policies), ``problems`` (RFC 9457 errors), ``metrics`` (Prometheus text). Only ``mtqa.cli``
imports this package, and FastAPI and uvicorn are imported when the server starts, not before.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from mtqa.serve.options import ServeOptions

if TYPE_CHECKING:
    from mtqa.config import Settings
    from mtqa.serve.app import Service

__all__ = ["ServeOptions", "build_service", "run"]

logger = logging.getLogger(__name__)


def build_service(settings: Settings, options: ServeOptions) -> Service:
    """The Checker (not yet warmed up) and everything around it; bad settings fail here.

    Raises:
        ConfigError: a setting, the policy, the policy directory or the calibration is unusable.
    """
    from mtqa.errors import ConfigError
    from mtqa.pipeline import Checker
    from mtqa.serve.app import Service
    from mtqa.serve.policies import load_policies

    problems = options.check()
    if problems:
        err = "; ".join(problems)
        raise ConfigError(err)
    if options.state_dir is not None:  # NOTE: fail now (exit 2), not in the server's start-up
        from mtqa.batch import ResultStore
        from mtqa.serve.jobs import JobStore

        try:
            options.state_dir.mkdir(parents=True, exist_ok=True)
            ResultStore(options.state_dir / "results.sqlite").close()
            JobStore(options.state_dir / "jobs.sqlite").close()
        except OSError as exc:
            err = f"{options.state_dir}: cannot keep the jobs here: {exc.strerror or exc}"
            raise ConfigError(err) from exc
    checker = Checker(settings)
    policy_path = None if settings.policy is None else Path(settings.policy)
    policies = load_policies(checker.policy, policy_path, options.policy_dir)
    return Service(checker, settings, options, policies, checker.calibration.fingerprint())


def run(settings: Settings, options: ServeOptions) -> None:
    """Serve until SIGTERM/SIGINT, then drain: new requests get 503, those in flight finish.

    Raises:
        ConfigError: see ``build_service``.
    """
    import threading
    import time

    import uvicorn

    from mtqa.serve.app import create_app

    service = build_service(settings, options)
    sock = _listen(options.host, options.port)
    app = create_app(service)
    config = uvicorn.Config(app, host=options.host, port=options.port, log_config=None,
                            access_log=options.access_log, lifespan="on",
                            timeout_graceful_shutdown=int(options.timeout) + 5)

    class _Server(uvicorn.Server):
        """uvicorn, but the first signal drains before it stops listening."""

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if service.draining:
                super().handle_exit(sig, frame)  # a second signal: stop now
                return
            service.draining = True
            logger.warning("signal %d: draining (%d requests in flight)", sig, service.inflight)

            def wait_then_exit() -> None:
                until = time.monotonic() + options.timeout + 5
                while service.inflight > 0 and time.monotonic() < until:
                    time.sleep(0.02)
                super(_Server, self).handle_exit(sig, frame)

            threading.Thread(target=wait_then_exit, name="mtqa-drain", daemon=True).start()

    # NOTE: after its shutdown uvicorn re-raises the signal it caught, so the process ends as
    # a process killed by SIGTERM does (exit status 143 from a shell): the service stopped cleanly
    _Server(config).run(sockets=[sock])


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (uvicorn would exit 1, the gate's code, if it could not).

    Raises:
        ConfigError: the address cannot be used.
    """
    from mtqa.errors import ConfigError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        err = f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --host/--port"
        raise ConfigError(err) from exc
    sock.set_inheritable(True)
    return sock
