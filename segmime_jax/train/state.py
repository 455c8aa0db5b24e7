"""The train state: a pytree of everything a step reads and writes.

A Flax NNX model is split with ``nnx.split(model, nnx.Param, nnx.BatchStat, ...)`` into a static graph
definition and three states: trainable parameters, BatchNorm running statistics, and the rest (the RNG
streams of the dropout layers). The train step merges them back, runs, and splits again, so it is a pure
function of arrays. The RNG streams are reseeded at every step from the step key, so their stored value
never matters and they are neither updated nor checkpointed.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct


@struct.dataclass
class TrainState:
    """Model parameters, BatchNorm statistics, optimiser state and step counter.

    Attributes:
      graphdef: the model structure (static: not a pytree leaf).
      params: ``nnx.State`` of the ``nnx.Param`` variables (float32).
      batch_stats: ``nnx.State`` of the ``nnx.BatchStat`` variables (running mean / variance).
      rngs: ``nnx.State`` of everything else (RNG keys and counts of the dropout streams).
      opt_state: the optax state (its ``hyperparams['learning_rate']`` is the current rate).
      step: int32 scalar, the number of optimiser steps taken.
    """

    graphdef: nnx.GraphDef = struct.field(pytree_node=False)
    params: nnx.State
    batch_stats: nnx.State
    rngs: nnx.State
    opt_state: optax.OptState
    step: jax.Array

    @classmethod
    def create(cls, model: nnx.Module, tx: optax.GradientTransformation) -> TrainState:
        """Split ``model`` and initialise the optimiser on its parameters."""
        graphdef, params, batch_stats, rngs = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
        return cls(
            graphdef=graphdef,
            params=params,
            batch_stats=batch_stats,
            rngs=rngs,
            opt_state=tx.init(params),
            step=jnp.zeros((), jnp.int32),
        )

    def model(self) -> nnx.Module:
        """A fresh model holding (references to) this state's arrays."""
        return nnx.merge(self.graphdef, self.params, self.batch_stats, self.rngs)

    def checkpoint_tree(self) -> dict[str, Any]:
        """What a checkpoint stores: parameters, BatchNorm statistics, optimiser state and step."""
        return {"params": self.params, "batch_stats": self.batch_stats, "opt_state": self.opt_state, "step": self.step}

    def replace_from_checkpoint(self, tree: dict[str, Any]) -> TrainState:
        """This state with the fields of :meth:`checkpoint_tree` taken from ``tree`` (same structure)."""
        return self.replace(
            params=tree["params"], batch_stats=tree["batch_stats"], opt_state=tree["opt_state"], step=tree["step"]
        )
