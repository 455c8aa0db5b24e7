"""Training: one engine for one run and for many (:mod:`~segmime_jax.train.engine`), on one device, several, or
several processes.

Entry points::

    from segmime_jax.train import TrainConfig, train_and_evaluate, train_runs
    result = train_and_evaluate(TrainConfig(loss="dsc", optimizer="sgd", epochs=100), splits, "runs/acdc_dsc")
    results = train_runs([TrainConfig(loss=loss) for loss in ("ce", "dsc")], splits, ["runs/ce", "runs/dsc"])

Modules, in the order of the data flow: :mod:`~segmime_jax.train.config` (the run's configuration),
:mod:`~segmime_jax.train.optim` (optimisers, plateau halving), :mod:`~segmime_jax.train.state`,
:mod:`~segmime_jax.train.sharding` (the ``('runs', 'data')`` mesh), :mod:`~segmime_jax.train.layout` (which runs
train together, on which devices), :mod:`~segmime_jax.train.step` (the jitted steps),
:mod:`~segmime_jax.train.programs` (compiled once, shared), :mod:`~segmime_jax.train.metrics`,
:mod:`~segmime_jax.train.evaluate`, :mod:`~segmime_jax.train.surface` (HD95, ASSD),
:mod:`~segmime_jax.train.telemetry` (the gradient's dynamic range), :mod:`~segmime_jax.train.checkpoint`,
:mod:`~segmime_jax.train.run` and :mod:`~segmime_jax.train.run_lock` (one run's folder),
:mod:`~segmime_jax.train.epoch_end`, :mod:`~segmime_jax.train.engine` (the loop),
:mod:`~segmime_jax.train.results`, :mod:`~segmime_jax.train.progress`, :mod:`~segmime_jax.train.tensorboard`.
Helpers stay importable from their modules; this package re-exports what a researcher calls.
"""

from segmime_jax.train.checkpoint import NonFiniteLossError
from segmime_jax.train.config import TrainConfig
from segmime_jax.train.engine import train_and_evaluate, train_runs
from segmime_jax.train.optim import make_optimizer
from segmime_jax.train.results import RunResult, load_run_result, save_run_result
from segmime_jax.train.sharding import make_mesh
from segmime_jax.train.state import TrainState
from segmime_jax.train.step import make_eval_step, make_runs_eval_step, make_runs_train_step, make_train_step

__all__ = [
    "NonFiniteLossError",
    "RunResult",
    "TrainConfig",
    "TrainState",
    "load_run_result",
    "make_eval_step",
    "make_mesh",
    "make_optimizer",
    "make_runs_eval_step",
    "make_runs_train_step",
    "make_train_step",
    "save_run_result",
    "train_and_evaluate",
    "train_runs",
]
