"""Where the runs of a training go: how many train at once (a stack), and on which devices.

Every training is R ≥ 1 runs (:mod:`segmime_jax.train.engine`); a :class:`Layout` cuts them into stacks trained
one after another, each on a ``('runs', 'data')`` mesh (:func:`~segmime_jax.train.sharding.make_mesh`):

- ``sequential``: one run at a time over all D devices (data-parallel over ``'data'``);
- ``parallel``: whole runs to devices, never two on one device. R ≥ D: stacks of D runs, one run per device;
  R < D: one stack, each run data-parallel over D / R devices. A device holding one run runs the plain
  one-run program (:func:`~segmime_jax.train.step.each_run`): no grouped convolutions and no communication
  between runs, which is why a multi-GPU node should train a grid this way rather than split a batch of 8 over
  8 GPUs;
- ``stacked``: all runs in one stack, several per device, ``jax.vmap``-ped into grouped convolutions: worth it
  only where the backend was measured faster that way (:data:`STACKED_FASTER_ON`);
- ``auto``: ``stacked`` on those backends, else ``parallel`` when there are several runs and several devices,
  else ``sequential``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax

from segmime_jax.train.sharding import choose_num_devices

LAYOUTS = ("auto", "sequential", "parallel", "stacked")

#: Backends (``jax.default_backend()``) on which several runs vmapped on one device were measured faster than
#: the runs one after another (docs/training.md, "Many runs"). CPU: 0.6x (XLA:CPU's grouped convolutions are
#: slow); GPU, TPU: not measured yet, so ``auto`` never vmaps there either.
STACKED_FASTER_ON: frozenset[str] = frozenset()


@dataclasses.dataclass(frozen=True)
class Layout:
    """How R runs train on D devices.

    Attributes:
      mode: ``"sequential"``, ``"parallel"`` or ``"stacked"`` (see the module docstring).
      stacks: the number of runs of each stack, in training order (they add up to R).
      meshes: each stack's ``(runs, data)`` mesh shape: device groups along ``'runs'`` (each holding
        ``stack / runs`` runs) and devices per group along ``'data'``.
      reason: why, in a few words.
    """

    mode: str
    stacks: tuple[int, ...]
    meshes: tuple[tuple[int, int], ...]
    reason: str

    def describe(self) -> str:
        """One line: the mode, the stacks and their meshes, and why."""
        total = sum(self.stacks)
        parts = []
        for size, (runs, data) in zip(self.stacks, self.meshes, strict=True):
            per = f"{size // runs} runs per device" if size > runs else "one run per device"
            parts.append(f"{size} x ({per}, {data} device{'s' if data > 1 else ''} per run)")
        shape = _grouped(parts)
        return f"{total} run{'s' if total > 1 else ''}, {self.mode}: {shape}; {self.reason}"


def _grouped(parts: list[str]) -> str:
    """``["4 x (a)", "4 x (a)", "1 x (b)"]`` -> ``"2 stacks of 4 x (a), then 1 x (b)"``."""
    out: list[str] = []
    for part in parts:
        if out and out[-1][1] == part:
            out[-1] = (out[-1][0] + 1, part)
        else:
            out.append((1, part))
    return ", then ".join(f"{n} stacks of {p}" if n > 1 else f"a stack of {p}" for n, p in out)


def choose_layout(
    num_runs: int,
    num_devices: int | None = None,
    *,
    mode: str = "auto",
    backend: str | None = None,
    batch_sizes: Sequence[int] = (),
) -> Layout:
    """The :class:`Layout` of ``num_runs`` runs on ``num_devices`` devices (default: every device).

    Args:
      num_runs: R ≥ 1.
      num_devices: D (``None``: ``jax.device_count()``, every process's devices).
      mode: one of :data:`LAYOUTS`.
      backend: the backend ``auto`` decides for (default: ``jax.default_backend()``).
      batch_sizes: one run's batch sizes: ``'data'`` takes only device counts that divide them.

    Returns:
      The layout; over several processes every stack uses every device (stacks that cannot, train their runs
      one after another).

    Example:
      >>> choose_layout(8, 4, mode="parallel").stacks
      (4, 4)
    """
    if mode not in LAYOUTS:
        raise ValueError(f"--grid-mode must be one of {', '.join(LAYOUTS)}, got {mode!r}")
    if num_runs < 1:
        raise ValueError(f"no runs to train (num_runs={num_runs})")
    devices = jax.device_count() if num_devices is None else num_devices
    whole = jax.process_count() > 1  # every process takes part in every step: a stack uses every device
    reason = f"chosen by --grid-mode {mode}"
    if mode == "auto":
        backend = backend or jax.default_backend()
        if backend in STACKED_FASTER_ON and num_runs > 1:
            mode, reason = "stacked", f"vmapped runs measured faster on {backend}"
        elif num_runs > 1 and devices > 1:
            mode, reason = "parallel", f"{num_runs} runs and {devices} devices: whole runs to devices"
        else:
            mode = "sequential"
            reason = "one device" if devices == 1 else "one run"
    if mode == "stacked":
        runs = max(n for n in range(1, min(num_runs, devices) + 1) if num_runs % n == 0)
        if not whole or runs * choose_num_devices(batch_sizes, devices // runs) == devices:
            return Layout(mode, (num_runs,), ((runs, choose_num_devices(batch_sizes, devices // runs)),), reason)
        mode, reason = "sequential", f"{num_runs} stacked runs cannot use all {devices} devices of every process"
    stacks: list[int] = []
    meshes: list[tuple[int, int]] = []
    left = num_runs
    while left:
        size = 1 if mode == "sequential" else min(left, devices)
        data = choose_num_devices(batch_sizes, devices // size)
        if whole and size * data != devices:
            size, data = 1, devices  # the rest one after another, each over every device
        stacks.append(size)
        meshes.append((size, data))
        left -= size
    return Layout(mode, tuple(stacks), tuple(meshes), reason)
