"""``GET /metrics``: Prometheus text exposition format 0.0.4, written by hand (a few gauges and counters).

Queue and job figures come from the job store, so they cover every worker and server sharing it; HTTP
request counts are this API process's own.

Metrics:
    ``magihuman_queue_depth``: jobs waiting for a worker (gauge).
    ``magihuman_jobs{status}``: jobs by status, deleted ones included (gauge).
    ``magihuman_stage_seconds_sum{stage}`` / ``magihuman_stage_seconds_count{stage}``: wall seconds spent in each
    pipeline stage over all completed runs, and the number of runs (a summary without quantiles).
    ``magihuman_http_requests_total{method,route,status}``: answered HTTP requests (counter).
    ``magihuman_http_request_seconds_sum{method,route}`` / ``_count``: their wall time (summary).
"""

from __future__ import annotations

import threading
from collections import defaultdict

from magihuman.serve.store import JobStore

__all__ = ["HttpStats", "render_metrics", "CONTENT_TYPE"]

#: Content type of the Prometheus text format.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items()) + "}"


class HttpStats:
    """Thread-safe counts and total seconds of answered requests, by method, route template and status."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count: dict[tuple[str, str, int], int] = defaultdict(int)
        self.seconds: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0])

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Record one answered request (``route``: the path template, e.g. ``/v1/videos/{video_id}``)."""
        with self._lock:
            self.count[(method, route, status)] += 1
            entry = self.seconds[(method, route)]
            entry[0] += seconds
            entry[1] += 1

    def lines(self) -> list[str]:
        """Exposition lines of the two HTTP metrics."""
        with self._lock:
            out = ["# HELP magihuman_http_requests_total HTTP requests answered by this API process.",
                   "# TYPE magihuman_http_requests_total counter"]
            for (method, route, status), n in sorted(self.count.items()):
                out.append(f"magihuman_http_requests_total{_labels(method=method, route=route, status=status)} {n}")
            out += ["# HELP magihuman_http_request_seconds Wall time of answered HTTP requests.",
                    "# TYPE magihuman_http_request_seconds summary"]
            for (method, route), (total, n) in sorted(self.seconds.items()):
                labels = _labels(method=method, route=route)
                out += [f"magihuman_http_request_seconds_sum{labels} {total:.6f}",
                        f"magihuman_http_request_seconds_count{labels} {n}"]
        return out


def render_metrics(store: JobStore, http: HttpStats) -> str:
    """The whole ``/metrics`` page."""
    counts = store.counts()
    lines = ["# HELP magihuman_queue_depth Jobs waiting for a worker.", "# TYPE magihuman_queue_depth gauge",
             f"magihuman_queue_depth {counts['queued']}",
             "# HELP magihuman_jobs Jobs by status (deleted jobs included).", "# TYPE magihuman_jobs gauge"]
    lines += [f"magihuman_jobs{_labels(status=status)} {n}" for status, n in counts.items()]
    lines += ["# HELP magihuman_stage_seconds Wall seconds per pipeline stage over completed runs.",
              "# TYPE magihuman_stage_seconds summary"]
    for stage, (n, total) in sorted(store.stage_stats().items()):
        labels = _labels(stage=stage)
        lines += [f"magihuman_stage_seconds_sum{labels} {total:.6f}", f"magihuman_stage_seconds_count{labels} {n}"]
    lines += http.lines()
    return "\n".join(lines) + "\n"
