"""Progress as whole lines a log can keep: `sft: step 8 of 20 (40%), 6.4 s/step, about 1 min 17 s left`.

A progress bar redraws itself with carriage returns, which a Snakemake or SLURM log stores as one
unreadable line per job; these lines say the same and read well in a terminal too. A line is
written at the first update, at most every `interval` seconds after, and at the end.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TextIO, TypeVar

T = TypeVar("T")
INTERVAL = 15.0   # seconds between lines: a 30-minute run writes ~120 of them


def duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    return f"{minutes // 60} h {minutes % 60} min"


class Progress:
    """`label: <unit> done of total (pct), rate, about <time> left`, one line per update."""

    def __init__(self, label: str, total: int, unit: str = "step", *, interval: float = INTERVAL,
                 stream: TextIO | None = None, start: int = 0):
        self.label, self.total, self.unit, self.interval = label, total, unit, interval
        self.stream = stream or sys.stderr
        self.started, self.first, self.done = time.monotonic(), start, start
        self._last: float | None = None

    def update(self, n: int = 1) -> None:
        self.set(self.done + n)

    def set(self, done: int) -> None:
        self.done = done
        now = time.monotonic()
        if self._last is None or done >= self.total or now - self._last >= self.interval:
            self._last = now
            self.stream.write(self.line(now - self.started) + "\n")
            self.stream.flush()

    def line(self, elapsed: float) -> str:
        counted = self.done - self.first
        head = f"{self.label}: {self.unit} {self.done} of {self.total}"
        if self.total:
            head += f" ({100 * self.done / self.total:.0f}%)"
        if counted <= 0 or elapsed <= 0 or (self.done < self.total and self.done < 0.05 * self.total):
            return head   # too early to tell: decoding in batches finishes its first answers late
        per = elapsed / counted
        rate = f"{per:.1f} s/{self.unit}" if per >= 1 else f"{1 / per:.1f} {self.unit}s/s"
        if self.done >= self.total:
            return f"{head}, {rate}, done in {duration(elapsed)}"
        return f"{head}, {rate}, about {duration(per * (self.total - self.done))} left"


def track(items: Iterable[T], label: str, total: int, unit: str = "step") -> Iterator[T]:
    """`items`, with a progress line as each one is done."""
    progress = Progress(label, total, unit)
    for item in items:
        yield item
        progress.update()
