"""The compiled programs of a stack of runs (train step, evaluation step, gradient probe), shared between stacks.

What a program computes depends on the optimiser *kind* (Adam or SGD: every numeric hyperparameter, learning
rate included, is a leaf of the optimiser state, see :func:`~segmime_jax.train.optim.make_optimizer`), the
:class:`~segmime_jax.losses.LossProgram` (which loss terms exist; their weights are a per-run argument),
the number of classes, augmentation and the device mesh. :func:`programs_for` returns one :class:`Programs`
object per such combination, so the CE, Dice, Mime and NM runs of a grid, and its seeds, use the same
compiled steps. The programs map over a leading run axis (:mod:`segmime_jax.train.step`): a stack of one run
is the plain one-run computation.

Each program is compiled ahead of time (``jax.jit(...).lower(...).compile()``) once per argument signature —
the model's graph, the batch shape and its sharding — when :meth:`CompiledProgram.compile` is first called
for it, which lets the training loop announce every compilation and its duration before any progress bar
starts, and lets tests count compilations (:attr:`Programs.compilations`). With JAX's persistent compilation
cache (``jax_compilation_cache_dir``) a compilation in a later process is a cache read.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
from jax.sharding import Mesh

from segmime_jax.losses import LossProgram
from segmime_jax.train.optim import make_optimizer
from segmime_jax.train.state import TrainState
from segmime_jax.train.step import make_runs_eval_step, make_runs_train_step, over_runs
from segmime_jax.train.telemetry import gradient_probe_fn

_CACHE_EVENTS = {"/jax/compilation_cache/cache_hits": "hits", "/jax/compilation_cache/cache_misses": "misses"}
_cache_counts = {"hits": 0, "misses": 0}


def _count_cache_event(name: str, *args: Any, **kwargs: Any) -> None:
    if name in _CACHE_EVENTS:
        _cache_counts[_CACHE_EVENTS[name]] += 1


jax.monitoring.register_event_listener(_count_cache_event)


def _signature(state: TrainState, batch: dict[str, jax.Array]) -> tuple[Any, ...]:
    # state.step is (R,): the run count; the evaluation batch has no run axis
    image = batch["image"]
    runs = tuple(getattr(state.step, "shape", ()))
    return state.graphdef, runs, tuple(image.shape), str(image.dtype), getattr(image, "sharding", None)


class CompiledProgram:
    """A jitted function compiled ahead of time per ``(state graph, run count, batch shape, batch sharding)``.

    Call it like the function (``program(state, batch, *rest)``); the first call with a new signature compiles
    (see :meth:`compile`).
    """

    def __init__(self, jitted: Any, name: str):
        self.jitted = jitted
        self.name = name
        self._compiled: dict[tuple[Any, ...], Any] = {}

    @property
    def compilations(self) -> int:
        """How many signatures have been compiled."""
        return len(self._compiled)

    def is_compiled(self, state: TrainState, batch: dict[str, jax.Array]) -> bool:
        return _signature(state, batch) in self._compiled

    def compile(self, state: TrainState, batch: dict[str, jax.Array], *rest: Any) -> tuple[float, bool] | None:
        """Compile for these arguments (only their shapes, dtypes and shardings matter; nothing runs) unless
        already done. Returns ``(seconds, from_cache)``: the time it took and whether XLA's part came from the
        persistent compilation cache (tracing and lowering still run); ``None`` when it was compiled already."""
        key = _signature(state, batch)
        if key in self._compiled:
            return None
        start = time.perf_counter()
        misses = _cache_counts["misses"]
        hits = _cache_counts["hits"]
        self._compiled[key] = self.jitted.lower(state, batch, *rest).compile()
        from_cache = _cache_counts["hits"] > hits and _cache_counts["misses"] == misses
        return time.perf_counter() - start, from_cache

    def __call__(self, state: TrainState, batch: dict[str, jax.Array], *rest: Any) -> Any:
        compiled = self._compiled.get(_signature(state, batch))
        if compiled is None:
            self.compile(state, batch, *rest)
            compiled = self._compiled[_signature(state, batch)]
        return compiled(state, batch, *rest)


@dataclasses.dataclass(eq=False)
class Programs:
    """The three compiled programs of stacks with one structure (see the module docstring); every argument but
    the evaluation and probe batches, and every output, has a leading run axis R.

    Attributes:
      train_step: ``(state, batch, key, loss_params, active) -> (state, {"loss", "grad_norm", "updated"})``,
        state donated (:func:`~segmime_jax.train.step.make_runs_train_step`).
      eval_step: ``(state, batch, loss_params) -> {"loss", "num_real", "dice", "calibration", "prediction"}``.
      probe: ``(state, batch, loss_params) -> gradient telemetry`` (:mod:`segmime_jax.train.telemetry`).
    """

    train_step: CompiledProgram
    eval_step: CompiledProgram
    probe: CompiledProgram

    @property
    def compilations(self) -> dict[str, int]:
        """Compilations so far, per program."""
        return {p.name: p.compilations for p in (self.train_step, self.eval_step, self.probe)}


@functools.lru_cache(maxsize=32)
def programs_for(optimizer: str, loss: LossProgram, num_classes: int, *, augment: bool, mesh: Mesh) -> Programs:
    """The (memoised) :class:`Programs` of stacks with this optimiser kind, loss program, class count,
    augmentation and ``('runs', 'data')`` mesh."""
    tx = make_optimizer(optimizer)  # the structure only: the hyperparameters are in each run's state
    return Programs(
        train_step=CompiledProgram(
            make_runs_train_step(tx, loss, num_classes, augment=augment, mesh=mesh), "train step"
        ),
        eval_step=CompiledProgram(make_runs_eval_step(loss, num_classes, mesh=mesh), "evaluation step"),
        probe=CompiledProgram(over_runs(gradient_probe_fn(loss, num_classes), mesh, (0, None, 0)), "gradient probe"),
    )


def compile_announced(
    program: CompiledProgram, args: tuple[Any, ...], what: str, log: Callable[[str], None], *, tick_s: float = 20.0
) -> None:
    """``program.compile(*args)``, saying so through ``log`` before, every ``tick_s`` seconds while it lasts (a
    first compilation of ResidualUNet's train step takes minutes on a small CPU), and with its duration and
    whether the persistent compilation cache supplied it after (nothing when it was compiled already)."""
    if program.is_compiled(args[0], args[1]):
        return
    log(f"compiling the {program.name} ({what}) ...")
    done = threading.Event()

    def tick() -> None:
        start = time.perf_counter()
        while not done.wait(tick_s):
            log(f"  ... still compiling the {program.name}: {time.perf_counter() - start:.0f} s")

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    try:
        seconds, from_cache = program.compile(*args)
    finally:
        done.set()
        ticker.join()
    if from_cache:
        log(f"loaded the {program.name} ({what}) from the compilation cache in {seconds:.1f} s")
    else:
        log(f"compiled the {program.name} ({what}) in {seconds:.1f} s")
