"""Wall-clock timing of compiled JAX calls, synchronised with ``block_until_ready``."""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax


@dataclasses.dataclass(frozen=True)
class TimingStats:
    """Seconds per call over ``repeats`` timed calls (after warm-up)."""

    min_s: float
    median_s: float
    max_s: float
    repeats: int

    @property
    def median_ms(self) -> float:
        return 1e3 * self.median_s

    def per_second(self, items_per_call: int) -> float:
        """Throughput (e.g. images/s) at the median time."""
        return items_per_call / self.median_s

    def to_json(self) -> dict[str, float | int]:
        return {
            "min_ms": 1e3 * self.min_s,
            "median_ms": 1e3 * self.median_s,
            "max_ms": 1e3 * self.max_s,
            "repeats": self.repeats,
        }


def time_call(fn: Callable[[], Any], *, warmup: int = 2, repeats: int = 10) -> TimingStats:
    """Time ``fn()`` (which dispatches device work and returns arrays) until its outputs are ready.

    ``warmup`` untimed calls come first (compilation, autotuning, allocator warm-up). Each timed call
    waits for all its outputs with :func:`jax.block_until_ready`, so asynchronous dispatch is included.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        jax.block_until_ready(fn())
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        samples.append(time.perf_counter() - start)
    return TimingStats(min(samples), statistics.median(samples), max(samples), repeats)
