"""A real ``mtqa serve`` in a subprocess on a free loopback port, for the service tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``python -m mtqa serve ARGS`` on 127.0.0.1, its log in ``log``; kill -9 works on it."""

    def __init__(self, log: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.args = list(args)
        self.log = log
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, ready: bool = True, timeout: float = 120.0) -> ServerProcess:
        self.port = free_port()
        cmd = [sys.executable, "-m", "mtqa", "serve", "--port", str(self.port), *self.args]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                         cwd=ROOT)
        self.wait("/readyz" if ready else "/healthz", timeout)
        return self

    def wait(self, path: str, timeout: float) -> None:
        until = time.monotonic() + timeout
        while time.monotonic() < until:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                if httpx.get(self.url + path, timeout=2.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server not answering {path} after {timeout}s:\n{self.log_text()}")

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=120.0, **kwargs)  # type: ignore[arg-type]

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""

    def terminate(self, timeout: float = 60.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return -1 if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
