"""The one clock of every figure: stage stopwatches, and progress bars.

Knows nothing of what it times."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


class Stopwatch:
    """Wall time by stage (time.perf_counter), the one clock of every figure here.

    Stages nest exclusively: while an inner stage runs, the outer one is paused, so
    the stages of a call add up to its time and nothing is counted twice.
    """

    def __init__(self) -> None:
        self.stages_s: dict[str, float] = {}
        self._open: list[str] = []
        self._since = time.perf_counter()

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Charge the wall time of the block to `name` (added up over repeated blocks)."""
        self._charge()
        self._open.append(name)
        try:
            yield
        finally:
            self._charge()
            self._open.pop()

    def _charge(self) -> None:
        now = time.perf_counter()
        if self._open:
            name = self._open[-1]
            self.stages_s[name] = self.stages_s.get(name, 0.0) + now - self._since
        self._since = now


def progress(
    items: Iterable[T], label: str, unit: str = "day", total: int | None = None
) -> Iterator[T]:
    """A tqdm bar on a terminal (off elsewhere, and for fewer than two items); `total`
    for items that do not know their count (tasks as they complete)."""
    count = total if total is not None else len(items)  # type: ignore[arg-type]
    if count < 2:
        return iter(items)
    return iter(tqdm(items, desc=label, unit=unit, total=count, disable=None, leave=False))


@dataclass(frozen=True)
class Spread:
    """Median, min and max of the measured tries, and every try."""

    median: float
    min: float
    max: float
    runs: list[float]


def summarize(values: list[float]) -> Spread:
    """The spread of the measured tries (all zero when there is none)."""
    if not values:
        return Spread(median=0.0, min=0.0, max=0.0, runs=[])
    return Spread(median=statistics.median(values), min=min(values), max=max(values), runs=values)
