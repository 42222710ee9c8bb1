"""What a method costs: wall time and peak extra resident memory of a block, sampled by a thread."""

from __future__ import annotations

import contextlib
import os
import resource
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Cost:
    trainable_params: int = 0
    seconds: float = 0.0
    peak_extra_mb: float | None = None  # peak RSS during the run minus RSS at its start
    note: str = ""


def rss_mb() -> float:
    """Current resident memory of this process in MiB (Linux); elsewhere the high-water mark."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


@contextlib.contextmanager
def measure(cost: Cost, *, interval: float = 0.02) -> Iterator[Cost]:
    """Fill ``cost.seconds`` and ``cost.peak_extra_mb`` (RSS sampled every ``interval`` s) for the block."""
    start_rss, peak, stop = rss_mb(), [0.0], threading.Event()

    def sample() -> None:
        while not stop.wait(interval):
            peak[0] = max(peak[0], rss_mb())

    thread = threading.Thread(target=sample, daemon=True)
    started = time.perf_counter()
    thread.start()
    try:
        yield cost
    finally:
        stop.set()
        thread.join()
        cost.seconds = time.perf_counter() - started
        cost.peak_extra_mb = max(0.0, max(peak[0], rss_mb()) - start_rss)
