"""``mtqa serve`` under a bounded load on loopback, beside direct ``Checker.check_many``.

Two servers run side by side on 127.0.0.1: the micro-batcher as configured (``--max-batch``)
and one that checks one request at a time (``--max-batch 1``). For short documents (one
paragraph: one MQM segment) and article-length ones (every segment of one WMT21 document and
system), each with 1, 8 and 32 concurrent clients, a fixed number of requests is sent (every
client sends until the shared list is used up, so it stops by itself), the two servers taking
turns; then the same documents go through one ``Checker.check_many`` in this process.

Printed, per document kind and concurrency: documents/s, p50/p95/p99 latency and the mean
micro-batch (documents per model call, from ``/metrics``) of each server, direct
``check_many`` documents/s, the ratio server / direct (target at 32 clients: >= 0.9) and the micro-batcher's gain over one-at-a-time (a ratio); then the server overhead
(p50 of a one-client request minus the direct time for the same document, for short documents)
and the peak RSS of each server. The documents come from ``../shared/data`` relative to the
repository (``--data`` to point elsewhere).

    python benchmarks/serve.py --checkers structure          # overhead: fast, no model
    python benchmarks/serve.py --short 48 --article 16       # every checker available here
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import httpx

from mtqa.config import Settings, load_settings
from mtqa.pipeline import Checker
from mtqa.types import Document

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / ".." / "shared" / "data" / "mqm_2021_zhen.jsonl"


def load_documents(path: Path, n_short: int, n_article: int) -> dict[str, list[dict[str, str]]]:
    """Short documents (one MT segment each) and articles (one document of one system)."""
    groups: dict[tuple[str, str], list[dict[str, object]]] = defaultdict(list)
    with path.open(encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            if not str(rec["system"]).startswith("ref-"):
                groups[(str(rec["doc_id"]), str(rec["system"]))].append(rec)
    keys = sorted(groups)
    articles = []
    for doc_id, system in keys[:n_article]:
        segs = sorted(groups[(doc_id, system)], key=lambda r: int(r["doc_seg_id"]))  # type: ignore[call-overload]
        articles.append({"id": f"{doc_id}/{system}",
                         "mt": "\n".join(str(r["hypothesis"]) for r in segs)})
    short = []
    for doc_id, system in keys[n_article:]:
        for r in groups[(doc_id, system)]:
            text = str(r["hypothesis"]).strip()
            if len(text.split()) >= 12:
                short.append({"id": f"{doc_id}/{system}/{r['doc_seg_id']}", "mt": text})
            if len(short) >= n_short:
                break
        if len(short) >= n_short:
            break
    return {"short": short, "article": articles}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``mtqa serve`` in a subprocess on loopback."""

    def __init__(self, name: str, args: list[str], log: Path) -> None:
        self.name = name
        self.port = _free_port()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        cmd = [sys.executable, "-m", "mtqa", "serve", "--host", "127.0.0.1", "--port",
               str(self.port), "--max-queue", "4096", "--timeout", "600", *args]
        with log.open("ab") as f:
            self.proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 900.0) -> None:
        until = time.monotonic() + timeout
        while time.monotonic() < until:
            if self.proc.poll() is not None:
                err = f"server {self.name} exited with {self.proc.returncode}"
                raise RuntimeError(err)
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        err = f"server {self.name} not ready after {timeout}s"
        raise RuntimeError(err)

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def load(url: str, docs: list[dict[str, str]], clients: int) -> tuple[float, list[float]]:
    """Send every document once from ``clients`` concurrent clients; (wall seconds, latencies).

    The clients are tasks of one event loop on raw keep-alive connections (HTTP/1.1 requests
    encoded up front, answers read by their Content-Length), so the load generator costs the
    machine it shares with the server ~0.2 ms of CPU per request; httpx's client cost ~2.7 ms,
    and since the clients of one closed loop come back one after another, that much of idle
    model per request between micro-batches.
    """
    return asyncio.run(_load(url, docs, clients))


def _request(host: str, port: int, doc: dict[str, str]) -> bytes:
    body = json.dumps(doc, ensure_ascii=False).encode()
    head = (f"POST /v1/check HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def _answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Status and body of one HTTP/1.1 answer (uvicorn sends Content-Length)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = next(int(v) for k, _, v in (ln.partition(":") for ln in lines[1:])
                  if k.lower() == "content-length")
    return status, await reader.readexactly(length)


async def _load(url: str, docs: list[dict[str, str]], clients: int) -> tuple[float, list[float]]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    requests = [_request(host, int(port), d) for d in docs]
    queue = list(reversed(requests))
    latencies: list[float] = []
    failures: list[str] = []

    async def client() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while queue:
                request = queue.pop()
                t0 = time.perf_counter()
                writer.write(request)
                status, body = await _answer(reader)
                latencies.append(time.perf_counter() - t0)
                if status != 200 or not body.startswith(b"{"):
                    failures.append(f"{status}: {body[:200]!r}")
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - t0
    if failures:
        err = f"{len(failures)} requests failed, e.g. {failures[0]}"
        raise RuntimeError(err)
    return wall, latencies


async def _overhead(batched: Server, single: Server, checker: Checker,
                    docs: list[dict[str, str]]) -> dict[str, float]:
    """One request at a time to each server and direct check_many, interleaved document by
    document so that the machine's load drifts alike for all three: median wall seconds, and
    CPU seconds per document (the server process's, and this process's for check_many), which
    the other work on a shared machine disturbs far less than wall time."""
    wall: dict[str, list[float]] = {"batched": [], "single": [], "direct": []}
    cpu = {"batched": 0.0, "single": 0.0, "direct": 0.0}
    async with httpx.AsyncClient(timeout=600) as c:
        for doc in docs:
            for key, srv in (("batched", batched), ("single", single)):
                c0, t0 = srv.cpu_seconds(), time.perf_counter()
                r = await c.post(srv.url + "/v1/check", json=doc)
                wall[key].append(time.perf_counter() - t0)
                cpu[key] += srv.cpu_seconds() - c0
                r.raise_for_status()
            c0, t0 = time.process_time(), time.perf_counter()
            checker.check_many([Document(doc["id"], doc["mt"])])
            wall["direct"].append(time.perf_counter() - t0)
            cpu["direct"] += time.process_time() - c0
    out = {f"{k}_p50": statistics.median(v) for k, v in wall.items()}
    out.update({f"{k}_cpu": v / len(docs) for k, v in cpu.items()})
    return out


def _batches(url: str) -> tuple[float, float]:
    """(documents, micro-batches) the server's model worker has run so far (``/metrics``)."""
    found = {}
    for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("mtqa_batch_size_sum", "mtqa_batch_size_count"):
            found[name] = float(value)
    return found.get("mtqa_batch_size_sum", 0.0), found.get("mtqa_batch_size_count", 0.0)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--checkers", default=None, help="comma-separated (default: every one)")
    ap.add_argument("--short", type=int, default=256, help="short documents (requests per run)")
    ap.add_argument("--article", type=int, default=32, help="articles (requests per run)")
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-wait-ms", type=float, default=2.0)
    ap.add_argument("--no-overhead", action="store_true",
                    help="skip the interleaved one-request overhead measurement")
    args = ap.parse_args()

    docs = load_documents(args.data.resolve(), args.short, args.article)
    common = ["--checkers", args.checkers] if args.checkers else []
    overrides = ({"checkers": [c.strip() for c in args.checkers.split(",") if c.strip()]}
                 if args.checkers else {})
    settings: Settings = load_settings(overrides=overrides)
    log = Path(tempfile.mkdtemp(prefix="mtqa-bench-serve-")) / "servers.log"
    batched = Server("batched", [*common, "--max-batch", str(args.max_batch), "--max-wait-ms",
                                 str(args.max_wait_ms)], log)
    single = Server("one-at-a-time", [*common, "--max-batch", "1", "--max-wait-ms", "0"], log)
    try:
        batched.wait_ready()
        single.wait_ready()
        with Checker(settings) as checker:
            checker.check_many([Document("w", "Warm up the checkers, please.")])
            print(f"checkers: {','.join(settings.checkers)}; machine: {os.cpu_count()} CPUs "
                  f"(shared: figures are noisy, compare ratios within this run)")
            print(f"{'docs':8} {'clients':>7} {'server':>14} {'docs/s':>8} {'p50 ms':>8} "
                  f"{'p95 ms':>8} {'p99 ms':>8} {'batch':>8}")
            overhead = None
            for kind, items in docs.items():
                if not items:
                    continue
                for k in (int(c) for c in args.clients.split(",")):
                    for srv in (batched, single):  # warm both on these documents
                        load(srv.url, items[: min(2, len(items))], 1)
                    rates: dict[str, float] = {}
                    for srv in (batched, single):
                        before = _batches(srv.url)
                        wall, lat = load(srv.url, items, k)
                        after = _batches(srv.url)
                        rates[srv.name] = len(items) / wall
                        size = (after[0] - before[0]) / max(after[1] - before[1], 1)
                        print(f"{kind:8} {k:7d} {srv.name:>14} {rates[srv.name]:8.3g} "
                              f"{1000 * _pct(lat, .5):8.1f} {1000 * _pct(lat, .95):8.1f} "
                              f"{1000 * _pct(lat, .99):8.1f} {size:8.1f}")
                    t0 = time.perf_counter()
                    checker.check_many([Document(d["id"], d["mt"]) for d in items])
                    direct = len(items) / (time.perf_counter() - t0)
                    print(f"{kind:8} {k:7d} {'check_many':>14} {direct:8.3g}   "
                          f"server/direct {rates['batched'] / direct:.2f}, micro-batcher gain "
                          f"x{rates['batched'] / rates['one-at-a-time']:.2f}")
                    if kind == "short" and k == 1 and not args.no_overhead:
                        overhead = asyncio.run(_overhead(batched, single, checker, items))
            if overhead is not None:
                o = {k: 1000 * v for k, v in overhead.items()}
                print(f"server overhead, short documents, 1 client, interleaved per request "
                      f"(target < 5 ms): p50 {o['batched_p50']:.2f} ms batched server, "
                      f"{o['single_p50']:.2f} ms one-at-a-time, {o['direct_p50']:.2f} ms direct "
                      f"check_many: {o['batched_p50'] - o['direct_p50']:.2f} / "
                      f"{o['single_p50'] - o['direct_p50']:.2f} ms wall; CPU per request "
                      f"{o['batched_cpu']:.2f} / {o['single_cpu']:.2f} ms vs "
                      f"{o['direct_cpu']:.2f} ms direct: {o['batched_cpu'] - o['direct_cpu']:.2f}"
                      f" / {o['single_cpu'] - o['direct_cpu']:.2f} ms")
        for srv in (batched, single):
            print(f"peak RSS {srv.name}: {srv.peak_rss_mb():.0f} MB")
    finally:
        batched.stop()
        single.stop()


if __name__ == "__main__":
    main()
