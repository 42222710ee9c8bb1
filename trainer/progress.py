"""Progress of long loops: a bar with an ETA on a terminal, plain periodic log lines otherwise.

    with Progress(400, "spul", unit="step") as bar:
        for step in range(400):
            ...
            bar.update(L_f=0.12, L_r=0.3)

On a terminal (stderr is a TTY) this is a tqdm bar. Otherwise (CI, `nohup ... > log`) it logs
one line at the first update, then at most every ``interval`` seconds, and one at the end:
``spul: 120/400 steps (30%), 41 s elapsed, ETA 1 min 36 s; L_f 0.120, L_r 0.300``.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import IO, Any

log = logging.getLogger("spul.progress")

LOG_INTERVAL_S = 10.0


def duration(seconds: float) -> str:
    """3 s, 1 min 36 s, 1 h 02 min."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _metrics_text(metrics: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())


class Progress:
    """Counts ``total`` units of work; shows a bar (terminal) or periodic log lines (not a terminal)."""

    def __init__(self, total: int, desc: str, *, unit: str = "step", enabled: bool = True,
                 stream: IO[str] | None = None, interval: float = LOG_INTERVAL_S) -> None:
        self.total, self.desc, self.unit, self.interval = max(0, int(total)), desc, unit, interval
        self.done = 0
        self.metrics: dict[str, Any] = {}
        self.started = time.monotonic()
        self._last_log: float | None = None
        stream = stream if stream is not None else sys.stderr
        self._bar = None
        self._enabled = enabled and self.total > 0
        if self._enabled and _isatty(stream):
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc=desc, unit=unit, file=stream, dynamic_ncols=True)

    def update(self, n: int = 1, **metrics: Any) -> None:
        self.done = min(self.total, self.done + n)
        self.metrics.update(metrics)
        if not self._enabled:
            return
        if self._bar is not None:
            if metrics:
                self._bar.set_postfix_str(_metrics_text(self.metrics), refresh=False)
            self._bar.update(n)
            return
        now = time.monotonic()
        if self._last_log is None or now - self._last_log >= self.interval or self.done == self.total:
            self._last_log = now
            log.info("%s", self.line())

    def line(self) -> str:
        """One plain status line (what the log shows)."""
        elapsed = time.monotonic() - self.started
        text = (f"{self.desc}: {self.done}/{self.total} {self.unit}s ({100 * self.done / max(1, self.total):.0f}%), "
                f"{duration(elapsed)} elapsed")
        if 0 < self.done < self.total:
            text += f", ETA {duration(elapsed / self.done * (self.total - self.done))}"
        if self.metrics:
            text += f"; {_metrics_text(self.metrics)}"
        return text

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _isatty(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
