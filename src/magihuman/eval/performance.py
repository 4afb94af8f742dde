"""Speed and peak memory of a generation, per stage.

Stage times come from :attr:`GenerationOutput.timings` (wall seconds, CUDA-synchronised). Memory is
sampled by a background thread (:class:`MemorySampler`) every few milliseconds while the pipeline runs:
resident set size from ``/proc/self/statm`` and, on CUDA, ``torch.cuda.memory_allocated``. The stage
windows are rebuilt from the ordered stage times anchored at the end of the call (stages run back to
back), and each stage's peak is the largest sample inside its window. The run's peaks are exact:
``ru_maxrss`` for RSS (the process's high-water mark so far) and ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
import time
from dataclasses import dataclass, field

__all__ = ["current_rss_bytes", "peak_rss_bytes", "MemorySampler", "RunPerformance"]

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def current_rss_bytes() -> int:
    """Resident set size of this process now (Linux ``/proc``; elsewhere the peak so far)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return peak_rss_bytes()


def peak_rss_bytes() -> int:
    """Largest resident set size of this process so far (``ru_maxrss``; kB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _cuda_allocated() -> int | None:
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return int(torch.cuda.memory_allocated())


@dataclass
class RunPerformance:
    """Speed and memory of one generation.

    Attributes:
        wall_s: seconds of the whole call.
        stage_s: ``{stage: seconds}`` in run order.
        stage_peak_rss_bytes, stage_peak_cuda_bytes: sampled peak per stage (CUDA empty without a GPU).
        peak_rss_bytes: process high-water mark after the run.
        peak_cuda_bytes: ``torch.cuda.max_memory_allocated`` over the run, or None without CUDA.
    """

    wall_s: float
    stage_s: dict[str, float] = field(default_factory=dict)
    stage_peak_rss_bytes: dict[str, int] = field(default_factory=dict)
    stage_peak_cuda_bytes: dict[str, int] = field(default_factory=dict)
    peak_rss_bytes: int = 0
    peak_cuda_bytes: int | None = None


class MemorySampler:
    """Samples RSS (and CUDA allocation) every ``interval_s`` in a daemon thread while in the ``with`` block.

    After the block, :meth:`performance` attributes the samples to the stages of ``timings``.
    """

    def __init__(self, interval_s: float = 0.005):
        self.interval_s = interval_s
        self.samples: list[tuple[float, int, int | None]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.start = self.end = 0.0

    def __enter__(self) -> MemorySampler:
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.reset_peak_memory_stats()
        self.start = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True, name="magihuman-memory-sampler")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.end = time.perf_counter()
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), current_rss_bytes(), _cuda_allocated()))
            self._stop.wait(self.interval_s)
        self.samples.append((time.perf_counter(), current_rss_bytes(), _cuda_allocated()))

    def performance(self, timings: dict[str, float]) -> RunPerformance:
        """Per-stage peaks for ``timings`` (``{stage: seconds}`` in run order; see the module docstring)."""
        sampled = max((s[1] for s in self.samples), default=0)
        out = RunPerformance(self.end - self.start, dict(timings), peak_rss_bytes=max(peak_rss_bytes(), sampled))
        stop = self.end
        for name, seconds in reversed(list(timings.items())):
            begin = stop - seconds
            inside = [s for s in self.samples if begin <= s[0] <= stop]
            if inside:
                out.stage_peak_rss_bytes[name] = max(s[1] for s in inside)
                cuda = [s[2] for s in inside if s[2] is not None]
                if cuda:
                    out.stage_peak_cuda_bytes[name] = max(cuda)
            stop = begin
        out.stage_peak_rss_bytes = dict(reversed(list(out.stage_peak_rss_bytes.items())))
        out.stage_peak_cuda_bytes = dict(reversed(list(out.stage_peak_cuda_bytes.items())))
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            out.peak_cuda_bytes = int(torch.cuda.max_memory_allocated())
        return out
