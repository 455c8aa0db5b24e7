"""The configuration of one training run: :class:`TrainConfig` (paper §3.2 defaults)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax.numpy as jnp
import optax

from segmime_jax.cli import AT_LEAST_ONE, FRACTION, NON_NEGATIVE, POSITIVE, Range, check_options, option
from segmime_jax.losses import LossParams, loss_params
from segmime_jax.train.optim import OPTIMIZERS, default_learning_rate, make_optimizer

PRECISIONS = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
LAST_BATCH = ("trim", "drop")
#: Fields that may differ between a run and its resumption or reuse (they do not change the computed numbers).
RESUMABLE_CHANGES = frozenset({"epochs", "progress", "write_predictions", "num_examples", "checkpoints"})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines one training run (paper §3.2 defaults). Each field is a command-line option of
    the experiments (:mod:`segmime_jax.cli`), except where a grid sets it per run (model, loss, optimiser)."""

    model: str = option("enet", "network: enet | residualunet")
    loss: str = option(
        "ce", "loss spec (segmime_jax.losses.build_loss): ce, dsc, gdl, mime, nm, surrogate, or e.g. 1*ce+1*dsc"
    )
    loss_classes: tuple[int, ...] | None = option(
        None, "classes the loss looks at, comma-separated (none: all, background included)"
    )
    optimizer: str = option("adam", "optimizer", choices=OPTIMIZERS)
    learning_rate: float | None = option(
        None, "starting learning rate (none: 5e-4 for adam, 1e-2 for sgd)", within=POSITIVE
    )
    adam_b1: float = option(0.99, "Adam beta1", within=FRACTION)
    adam_b2: float = option(0.999, "Adam beta2", within=FRACTION)
    momentum: float = option(0.9, "SGD momentum", within=FRACTION)
    weight_decay: float = option(5e-4, "SGD weight decay, added to the gradient as PyTorch does", within=NON_NEGATIVE)
    epochs: int = option(100, "training epochs per run", within=AT_LEAST_ONE)
    batch_size: int = option(8, "training batch size (global)", within=AT_LEAST_ONE)
    eval_batch_size: int = option(16, "validation/test batch size (global)", within=AT_LEAST_ONE)
    plateau_patience: int = option(
        20, "halve the learning rate after this many epochs without a better validation DSC", within=AT_LEAST_ONE
    )
    plateau_factor: float = option(0.5, "learning-rate reduction factor", within=Range(0, 1, True, True))
    plateau_min_delta: float = option(
        0.0, "an improvement must exceed the best DSC by more than this", within=NON_NEGATIVE
    )
    augment: bool = option(False, "on-device augmentation: vertical flip, mirror, rotation in +-45 degrees, each p=0.5")
    precision: str = option(
        "float32", "compute dtype of the model (parameters stay float32)", choices=tuple(PRECISIONS)
    )
    seed: int = option(0, "training seed (initialisation, shuffling, dropout)", within=NON_NEGATIVE)
    checkpoints: bool = option(
        True,
        "keep orbax checkpoints of the latest and the best epoch (a rerun into the same --out continues an "
        "unfinished run from them)",
    )
    write_predictions: bool = option(True, "write NIfTI test predictions")
    num_examples: int = option(4, "test slices kept for Figure 4", within=NON_NEGATIVE)
    progress: bool = option(True, "report progress: bars on a terminal, one line per epoch otherwise")
    telemetry: bool = option(True, "per-epoch gradient telemetry on a fixed validation batch")
    last_batch: str = option(
        "trim", "last partial training batch: trim its padding (exact BatchNorm) or drop it", choices=LAST_BATCH
    )
    num_devices: int | None = option(
        None,
        "devices for data parallelism (none: as many local devices as divide both batch sizes)",
        within=AT_LEAST_ONE,
    )
    data_on_device: bool = option(True, "keep the uint8 slices on the device(s) and gather batches there")

    def __post_init__(self) -> None:
        check_options(self)
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {self.precision!r}")
        if self.last_batch not in LAST_BATCH:
            raise ValueError(f"last_batch must be one of {LAST_BATCH}, got {self.last_batch!r}")
        from segmime_jax.models import MODELS

        if self.model.lower() not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; valid: {', '.join(MODELS)}")
        from segmime_jax.losses import build_loss

        build_loss(self.loss, **self._class_option())  # a bad loss spec or class list fails here, before any data

    def _class_option(self) -> dict[str, tuple[int, ...]]:
        return {} if self.loss_classes is None else {"classes": tuple(self.loss_classes)}

    @property
    def base_learning_rate(self) -> float:
        """The starting learning rate (the paper's default for the optimiser when unset)."""
        return default_learning_rate(self.optimizer) if self.learning_rate is None else float(self.learning_rate)

    def loss_params(self, num_classes: int) -> LossParams:
        """The loss of this run as data (:class:`~segmime_jax.losses.LossParams`), for ``num_classes`` classes."""
        return loss_params(self.loss, num_classes, **self._class_option())

    def build_optimizer(self) -> optax.GradientTransformation:
        """The optimiser with this run's hyperparameters (they live in its state: see ``make_optimizer``)."""
        return make_optimizer(
            self.optimizer,
            learning_rate=self.base_learning_rate,
            adam_b1=self.adam_b1,
            adam_b2=self.adam_b2,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
        )


#: Fields that may differ between runs trained together (:mod:`segmime_jax.train.engine`): per-run arrays of the
#: step of a stack (the loss, the optimiser's hyperparameters, the seed), or fields that change no number.
STACKABLE_CHANGES = frozenset(
    {"loss", "loss_classes", "learning_rate", "adam_b1", "adam_b2", "momentum", "weight_decay", "seed"}
) | (RESUMABLE_CHANGES - {"epochs"})


def stack_key(config: TrainConfig) -> TrainConfig:
    """What runs trained together must share: ``config`` with its :data:`STACKABLE_CHANGES` set to the defaults
    (model, optimiser kind, batch sizes, epochs, augmentation, precision, devices, ...)."""
    defaults = TrainConfig()
    return dataclasses.replace(config, **{name: getattr(defaults, name) for name in STACKABLE_CHANGES})


def check_stackable(configs: Sequence[TrainConfig]) -> None:
    """ValueError naming the first field, other than :data:`STACKABLE_CHANGES`, in which the runs differ."""
    if not configs:
        raise ValueError("no runs to train")
    first = stack_key(configs[0])
    for config in configs[1:]:
        other = stack_key(config)
        if other != first:
            name = next(f.name for f in dataclasses.fields(first) if getattr(first, f.name) != getattr(other, f.name))
            raise ValueError(
                f"runs trained together must share {name} (got {getattr(first, name)!r} and {getattr(other, name)!r})"
            )
