"""Cluster jobs without a coordinator: shard K of N trains the grid's runs whose index is K - 1 modulo N.

Each shard is an independent command (a SLURM array task, a job on another machine) writing into the same
``--out`` on a shared file system; no process talks to another. A shard writes the grid's report only when every
run of the grid is finished; a final plain command (no shard) reuses every finished run and writes Table 1. Two
shards never take the same run, and a run is trained by one process at a time anyway (its lock:
:mod:`segmime_jax.train.run_lock`).

Without ``--shard``, a process that a SLURM array launched (``SLURM_ARRAY_TASK_ID``, ``SLURM_ARRAY_TASK_COUNT``,
``SLURM_ARRAY_TASK_MIN``) is shard ``ID - MIN + 1`` of ``COUNT``: ``sbatch --array=1-8`` makes 8 shards.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import TypeVar

T = TypeVar("T")
_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclasses.dataclass(frozen=True)
class Shard:
    """Shard ``index`` (1-based) of ``count``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.index <= self.count:
            raise ValueError(f"--shard must be K/N with 1 <= K <= N, got {self}")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def select(self, runs: Sequence[T]) -> list[T]:
        """The runs of this shard: those whose 0-based index in ``runs`` is ``index - 1`` modulo ``count``.

        Example:
          >>> Shard(2, 3).select(["r1", "r2", "r3", "r4", "r5"])
          ['r2', 'r5']
        """
        return [run for i, run in enumerate(runs) if i % self.count == self.index - 1]


def parse_shard(text: str) -> Shard:
    """``"K/N"`` as a :class:`Shard`; ValueError (one line) for anything else, 0/2, 3/2 or 1/0."""
    match = _SHARD.match(text)
    if match is None:
        raise ValueError(f"--shard must be K/N with 1 <= K <= N, got {text!r}")
    return Shard(int(match.group(1)), int(match.group(2)))


def shard_from_environment(env: Mapping[str, str]) -> Shard | None:
    """The shard of a process a SLURM array launched (see the module docstring), or None outside an array."""
    if "SLURM_ARRAY_TASK_ID" not in env or "SLURM_ARRAY_TASK_COUNT" not in env:
        return None
    try:
        task, count = int(env["SLURM_ARRAY_TASK_ID"]), int(env["SLURM_ARRAY_TASK_COUNT"])
        first = int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
    except ValueError:
        raise ValueError("the SLURM_ARRAY_TASK_* variables are not integers; give --shard K/N") from None
    index = task - first + 1
    if not 1 <= index <= count:
        raise ValueError(
            f"SLURM array task {task} (min {first}, count {count}) is not a shard K/N: use a contiguous "
            "--array=1-N, or give --shard K/N"
        )
    return Shard(index, count)


def resolve_shard(option: str | None, env: Mapping[str, str]) -> Shard | None:
    """The shard of this command: ``--shard`` if given, else the SLURM array's, else None (every run)."""
    if option is not None:
        return parse_shard(option)
    return shard_from_environment(env)
