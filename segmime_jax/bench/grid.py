"""Grid throughput: R runs trained stacked (one compiled step over a run axis) against one after another.

:func:`run_grid_case` times one *grid step*, every one of R runs taking one optimiser step, two ways:

- sequential: R calls of the training loop's one-run step (:func:`segmime_jax.train.make_train_step`, data
  parallel over the case's devices), dispatched back to back and waited for at the end, as consecutive runs
  of a grid would (their inputs never wait for each other);
- stacked: one call of the step of a stack of R runs (:func:`segmime_jax.train.make_runs_train_step`) on the
  ``('runs', 'data')`` mesh the ``stacked`` layout gives the case's devices (:mod:`segmime_jax.train.layout`:
  several runs vmapped per device), each run with its own initial weights (seed r), loss parameters and batch.

Both report run-images/s: R × batch size over the grid step's median time; ``speedup`` is stacked over
sequential. The losses are the case's for every run (the loss is data: its value does not change the time).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from segmime_jax.bench.suite import BenchCase, Setup, random_batch
from segmime_jax.bench.timing import time_call
from segmime_jax.losses import loss_from_spec
from segmime_jax.models import build_model
from segmime_jax.train import TrainState, make_mesh, make_optimizer, make_runs_train_step
from segmime_jax.train.config import PRECISIONS
from segmime_jax.train.layout import choose_layout
from segmime_jax.train.sharding import runs_batch_sharding, shard_runs, stack_runs


@dataclasses.dataclass
class StackedSetup:
    """A compiled stacked step with its stacked state and arguments; :meth:`step` runs one grid step."""

    runs: int
    state: TrainState
    args: tuple[Any, ...]  # (batch, keys, loss_params, active)
    compiled: Any
    compile_s: float
    mesh: jax.sharding.Mesh

    def step(self) -> tuple[dict[str, jax.Array], TrainState]:
        self.state, metrics = self.compiled(self.state, *self.args)
        return metrics, self.state


def build_stacked_setup(case: BenchCase, runs: int) -> StackedSetup:
    """R runs of ``case`` (initial weights from seeds 0..R-1) stacked on a mesh of ``case.num_devices``."""
    tx = make_optimizer(case.optimizer)
    dtype = PRECISIONS[case.precision]
    states = [
        TrainState.create(build_model(case.model, case.num_classes, rngs=nnx.Rngs(r), dtype=dtype), tx)
        for r in range(runs)
    ]
    layout = choose_layout(runs, case.num_devices, mode="stacked", batch_sizes=(case.batch_size,))
    ((mesh_runs, mesh_data),) = layout.meshes
    mesh = make_mesh(mesh_data, runs=mesh_runs, batch_sizes=(case.batch_size,))
    loss, params = loss_from_spec(case.loss, case.num_classes)
    batch = jax.device_put({k: np.stack([v] * runs) for k, v in random_batch(case).items()}, runs_batch_sharding(mesh))
    keys = shard_runs(jnp.stack([jax.random.key(r) for r in range(runs)]), mesh)
    args = (batch, keys, shard_runs(stack_runs([params] * runs), mesh), shard_runs(jnp.ones(runs, bool), mesh))
    state = shard_runs(stack_runs(states), mesh)
    step = make_runs_train_step(tx, loss, case.num_classes, mesh=mesh)
    start = time.perf_counter()
    compiled = step.lower(state, *args).compile()
    return StackedSetup(runs, state, args, compiled, time.perf_counter() - start, mesh)


def run_grid_case(setup: Setup, runs: int, *, warmup: int = 2, repeats: int = 10) -> dict[str, Any]:
    """Time one grid step of ``runs`` runs of ``setup.case``, sequential and stacked (see the module docstring).

    Args:
      setup: the case's one-run step (:func:`~segmime_jax.bench.suite.build_setup`).
      runs: R.
      warmup, repeats: untimed and timed grid steps.

    Returns:
      A JSON-ready dict: ``runs``, ``case``, ``sequential_ms`` and ``stacked_ms`` (per grid step),
      ``*_run_images_per_s``, ``speedup`` (stacked over sequential throughput), ``stacked_compile_s`` and the
      stacked mesh's shape.
    """
    case = setup.case

    def sequential() -> Any:
        metrics = [setup.step() for _ in range(runs)]  # each step donates the state the previous one made
        return metrics, setup.state

    sequential_ms = time_call(sequential, warmup=warmup, repeats=repeats).median_ms
    stacked = build_stacked_setup(case, runs)
    stacked_ms = time_call(stacked.step, warmup=warmup, repeats=repeats).median_ms
    images = runs * case.batch_size
    return {
        "runs": runs,
        "case": dataclasses.asdict(case),
        "label": case.label,
        "mesh": dict(stacked.mesh.shape),
        "sequential_ms": sequential_ms,
        "stacked_ms": stacked_ms,
        "sequential_run_images_per_s": 1e3 * images / sequential_ms,
        "stacked_run_images_per_s": 1e3 * images / stacked_ms,
        "speedup": sequential_ms / stacked_ms,
        "stacked_compile_s": stacked.compile_s,
    }
