"""Prometheus text exposition of the service's counters, written by hand (no client library).

Counters and histograms are updated from the event loop and the model worker thread, so every
update takes the lock.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable

__all__ = ["Metrics"]

#: request latency buckets, seconds
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                   30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.n += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        out = []
        running = 0
        sep = "," if labels else ""
        for bound, count in zip(self.buckets, self.counts):
            running += count
            out.append(f'{name}_bucket{{{labels}{sep}le="{bound:g}"}} {running}')
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.n}')
        suffix = f"{{{labels}}}" if labels else ""
        out.append(f"{name}_sum{suffix} {self.total:.6f}")
        out.append(f"{name}_count{suffix} {self.n}")
        return out


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Requests by route and status, latency, batch sizes, documents checked; gauges read live."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, int], int] = {}
        self._latency: dict[str, _Histogram] = {}
        self._batches = _Histogram(BATCH_BUCKETS)
        self._documents = 0
        self._rejected: dict[str, int] = {}
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}

    def request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        with self._lock:
            key = (method, route, status)
            self._requests[key] = self._requests.get(key, 0) + 1
            self._latency.setdefault(route, _Histogram(LATENCY_BUCKETS)).observe(seconds)

    def batch(self, size: int) -> None:
        """Count one micro-batch of ``size`` documents run by the model worker."""
        with self._lock:
            self._batches.observe(size)
            self._documents += size

    def rejected(self, why: str) -> None:
        """Count a request refused before it reached the model (``queue_full``, ``timeout``...)."""
        with self._lock:
            self._rejected[why] = self._rejected.get(why, 0) + 1

    @property
    def documents(self) -> int:
        """Documents checked by the model worker since start."""
        with self._lock:
            return self._documents

    def render(self) -> str:
        """Everything, in the Prometheus text format (version 0.0.4)."""
        with self._lock:
            lines = ["# HELP mtqa_http_requests_total HTTP requests answered.",
                     "# TYPE mtqa_http_requests_total counter"]
            for (method, route, status), n in sorted(self._requests.items()):
                lines.append(f'mtqa_http_requests_total{{method="{method}",'
                             f'route="{_escape(route)}",status="{status}"}} {n}')
            lines += ["# HELP mtqa_http_request_duration_seconds Time to answer a request.",
                      "# TYPE mtqa_http_request_duration_seconds histogram"]
            for route, hist in sorted(self._latency.items()):
                lines += hist.lines("mtqa_http_request_duration_seconds",
                                    f'route="{_escape(route)}"')
            lines += ["# HELP mtqa_batch_size Documents per micro-batch run by the model worker.",
                      "# TYPE mtqa_batch_size histogram"]
            lines += self._batches.lines("mtqa_batch_size")
            lines += ["# HELP mtqa_documents_checked_total Documents checked by the model worker.",
                      "# TYPE mtqa_documents_checked_total counter",
                      f"mtqa_documents_checked_total {self._documents}",
                      "# HELP mtqa_rejected_total Requests refused before reaching the model.",
                      "# TYPE mtqa_rejected_total counter"]
            for why, n in sorted(self._rejected.items()):
                lines.append(f'mtqa_rejected_total{{reason="{why}"}} {n}')
            gauges = dict(self.gauges)
        for name, (help_text, read) in sorted(gauges.items()):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {read():g}"]
        return "\n".join(lines) + "\n"
