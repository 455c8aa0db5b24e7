"""Training engine: optimisers and plateau halving, train state, data-parallel jitted steps, metrics
(3D DSC, ClECE; HD95 and ASSD in mm), gradient telemetry, orbax checkpoints, TensorBoard events, and the training
loop.

Entry point::

    from segmime_jax.train import TrainConfig, train_and_evaluate
    result = train_and_evaluate(TrainConfig(loss="dsc", optimizer="sgd", epochs=100), splits, "runs/acdc_dsc")

Modules: :mod:`~segmime_jax.train.optim`, :mod:`~segmime_jax.train.state`, :mod:`~segmime_jax.train.sharding`,
:mod:`~segmime_jax.train.step`, :mod:`~segmime_jax.train.programs`, :mod:`~segmime_jax.train.metrics`,
:mod:`~segmime_jax.train.evaluate`, :mod:`~segmime_jax.train.telemetry`, :mod:`~segmime_jax.train.checkpoint`,
:mod:`~segmime_jax.train.config`, :mod:`~segmime_jax.train.results`, :mod:`~segmime_jax.train.progress`,
:mod:`~segmime_jax.train.surface`, :mod:`~segmime_jax.train.tensorboard`, :mod:`~segmime_jax.train.run`,
:mod:`~segmime_jax.train.loop`, :mod:`~segmime_jax.train.epoch_end`; runs trained together over a run axis:
:mod:`~segmime_jax.train.stacked` (:func:`train_stacked`), :mod:`~segmime_jax.train.stacked_group`,
:mod:`~segmime_jax.train.stacked_step`.
"""

from segmime_jax.train.checkpoint import CheckpointStore, NonFiniteLossError, check_finite, check_state_finite
from segmime_jax.train.config import TrainConfig
from segmime_jax.train.evaluate import Evaluation, evaluate
from segmime_jax.train.loop import step_key, train_and_evaluate
from segmime_jax.train.metrics import (
    NUM_BINS,
    CalibrationStats,
    bin_index,
    calibration_counts,
    dice_counts,
    dice_from_counts,
    mean_foreground,
)
from segmime_jax.train.optim import (
    PlateauState,
    default_learning_rate,
    get_learning_rate,
    make_optimizer,
    plateau_update,
    set_learning_rate,
    sgd_pytorch,
)
from segmime_jax.train.programs import Programs, programs_for
from segmime_jax.train.results import RunResult, load_run_result, save_run_result
from segmime_jax.train.sharding import (
    batch_sharding,
    choose_num_devices,
    make_data_mesh,
    replicate,
    replicated_sharding,
    shard_batch,
)
from segmime_jax.train.stacked import train_stacked
from segmime_jax.train.state import TrainState
from segmime_jax.train.step import eval_step_fn, make_eval_step, make_train_step, probabilities, train_step_fn
from segmime_jax.train.telemetry import make_gradient_probe, summarize_gradient

__all__ = [
    "NUM_BINS",
    "CalibrationStats",
    "CheckpointStore",
    "Evaluation",
    "NonFiniteLossError",
    "PlateauState",
    "Programs",
    "RunResult",
    "TrainConfig",
    "TrainState",
    "batch_sharding",
    "bin_index",
    "calibration_counts",
    "check_finite",
    "check_state_finite",
    "choose_num_devices",
    "default_learning_rate",
    "dice_counts",
    "dice_from_counts",
    "eval_step_fn",
    "evaluate",
    "get_learning_rate",
    "load_run_result",
    "make_data_mesh",
    "make_eval_step",
    "make_gradient_probe",
    "make_optimizer",
    "make_train_step",
    "mean_foreground",
    "plateau_update",
    "probabilities",
    "programs_for",
    "replicate",
    "replicated_sharding",
    "save_run_result",
    "set_learning_rate",
    "sgd_pytorch",
    "shard_batch",
    "step_key",
    "summarize_gradient",
    "train_and_evaluate",
    "train_stacked",
    "train_step_fn",
]
