"""Orbax checkpoints of a run (latest and best) and the guard that stops a run on a non-finite loss.

Layout: ``<dir>/latest/<epoch>/`` (the last completed epoch, kept for ``resume``) and ``<dir>/best/<epoch>/``
(the epoch with the best validation metric, used for the test evaluation). ``latest`` keeps one checkpoint;
``best`` keeps the two most recent improvements: an epoch's two checkpoints are written asynchronously, so a
run killed in between may have either. Resumed from the previous epoch, it drops the orphaned best
(:meth:`CheckpointStore.discard_best_after`) and still has the previous best; resumed from this epoch, the
training loop writes a lost best copy again from the latest checkpoint.
Each checkpoint holds two items: ``state`` (parameters, BatchNorm statistics, optimiser state, step; see
:meth:`~segmime_jax.train.state.TrainState.checkpoint_tree`) and ``meta`` (JSON: epoch, history, plateau
state, ...). Orbax writes into a temporary directory and renames it when complete, so a killed run leaves
either the previous or the new checkpoint, never half of one.

The tree is saved as nested dicts named after the pytree paths (``params/conv/kernel/value``), which keeps
the files readable and independent of how ``nnx.State`` or optax namedtuples flatten.
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp


class NonFiniteLossError(FloatingPointError):
    """The training loss, the gradient or the trained state became NaN or infinite; the run stopped and its
    last good checkpoint was kept. ``what`` says which (e.g. ``"training loss (nan)"``)."""

    def __init__(self, value: float, *, epoch: int, step: int | None, checkpoint_epoch: int | None = None,
                 checkpoint_dir: str | None = None, what: str | None = None):
        self.value, self.epoch, self.step = value, epoch, step
        self.checkpoint_epoch = checkpoint_epoch
        what = f"training loss ({value})" if what is None else what
        when = f"at epoch {epoch}, step {step}" if step is not None else f"after epoch {epoch}"
        where = (f"the last good checkpoint (epoch {checkpoint_epoch}) is kept in {checkpoint_dir}"
                 if checkpoint_epoch is not None else "no checkpoint had been written yet")
        super().__init__(f"non-finite {what} {when}: training stopped; "
                         f"{where}. Lower the learning rate, or check the data and the loss options.")


def _raise_non_finite(value: float, *, epoch: int, step: int | None, store: CheckpointStore | None,
                      what: str) -> None:
    checkpoint_epoch = store.latest_epoch() if store is not None else None
    raise NonFiniteLossError(float(value), epoch=epoch, step=step, checkpoint_epoch=checkpoint_epoch,
                             checkpoint_dir=str(store.latest_dir) if store is not None else None, what=what)


def check_finite(value: float, *, epoch: int, step: int, store: CheckpointStore | None = None,
                 grad_norm: float | None = None) -> None:
    """Raise :class:`NonFiniteLossError` when the loss ``value`` (or the gradient norm ``grad_norm``, when
    given) is NaN or infinite: a finite loss with a NaN gradient would poison the parameters silently. (A
    norm also overflows for gradient elements of ~1e19 and more: a divergence, stopped as well.)"""
    if not math.isfinite(float(value)):
        _raise_non_finite(value, epoch=epoch, step=step, store=store, what=f"training loss ({float(value)})")
    if grad_norm is not None and not math.isfinite(float(grad_norm)):
        _raise_non_finite(value, epoch=epoch, step=step, store=store,
                          what=f"gradient (norm {float(grad_norm)}, loss {float(value)})")


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def check_state_finite(tree: Any, *, epoch: int, store: CheckpointStore | None = None) -> None:
    """Raise :class:`NonFiniteLossError` when a floating leaf of ``tree`` (e.g. ``state.checkpoint_tree()``)
    holds NaN or inf: checked before a checkpoint is written, so a poisoned state never becomes "last good"."""
    if not bool(_all_finite(tree)):
        _raise_non_finite(float("nan"), epoch=epoch, step=None, store=store,
                          what="parameters, BatchNorm statistics or optimiser state")


def _key_name(entry: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def to_named_tree(tree: Any) -> dict[str, Any]:
    """Nested dicts keyed by the names along each leaf's pytree path (leaves unchanged)."""
    named: dict[str, Any] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        node = named
        names = [_key_name(p) for p in path]
        for name in names[:-1]:
            node = node.setdefault(name, {})
        if names[-1] in node:
            raise ValueError(f"duplicate checkpoint path {'/'.join(names)}")
        node[names[-1]] = leaf
    return named


def from_named_tree(template: Any, named: Mapping[str, Any]) -> Any:
    """Inverse of :func:`to_named_tree`: the leaves of ``named`` put into the structure of ``template``."""
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(template)
    leaves = []
    for path, _ in leaves_with_path:
        node: Any = named
        for name in (_key_name(p) for p in path):
            node = node[name]
        leaves.append(node)
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _abstract(tree: Any) -> Any:
    def spec(x: Any) -> Any:
        sharding = getattr(x, "sharding", None)
        return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)

    return jax.tree.map(spec, tree)


class CheckpointStore:
    """The latest and best checkpoints of one run, in ``directory`` (created when missing).

    Args:
      directory: e.g. ``run_dir / "checkpoints"``.
      async_save: let orbax write in a background thread (arrays are copied to host memory before
        :meth:`save_latest` returns, so the state may be donated right after).
    """

    def __init__(self, directory: str | pathlib.Path, *, async_save: bool = True):
        self.directory = pathlib.Path(directory).absolute()
        self.latest_dir = self.directory / "latest"
        self.best_dir = self.directory / "best"
        options = dict(max_to_keep=1, create=True, enable_async_checkpointing=async_save,
                       cleanup_tmp_directories=True)
        self._latest = ocp.CheckpointManager(self.latest_dir, options=ocp.CheckpointManagerOptions(**options))
        self._best = ocp.CheckpointManager(
            self.best_dir,
            options=ocp.CheckpointManagerOptions(best_fn=lambda m: m["metric"], best_mode="max",
                                                 **dict(options, max_to_keep=2)))

    # -------------------------------------------------------------------------------------------- saving
    @staticmethod
    def _args(tree: Any, meta: Mapping[str, Any]) -> ocp.args.Composite:
        return ocp.args.Composite(state=ocp.args.StandardSave(to_named_tree(tree)),
                                  meta=ocp.args.JsonSave(dict(meta)))

    def save_latest(self, epoch: int, tree: Any, meta: Mapping[str, Any]) -> None:
        """Save ``tree`` (e.g. ``state.checkpoint_tree()``) and JSON ``meta`` as the latest checkpoint."""
        self._latest.save(epoch, args=self._args(tree, meta), force=True)

    def save_best(self, epoch: int, tree: Any, meta: Mapping[str, Any], metric: float) -> None:
        """Save as the best checkpoint (call it when ``metric`` improved; the two best are kept)."""
        self._best.save(epoch, args=self._args(tree, meta), metrics={"metric": float(metric)}, force=True)

    def discard_best_after(self, epoch: int) -> list[int]:
        """Delete best checkpoints of epochs after ``epoch`` (left by a run killed between an epoch's best and
        latest saves; resuming from ``epoch`` re-runs those epochs). Returns the epochs deleted."""
        self._best.wait_until_finished()
        stale = [step for step in self._best.all_steps() if step > epoch]
        for step in stale:
            self._best.delete(step)
        return stale

    # ----------------------------------------------------------------------------------------- restoring
    def latest_epoch(self) -> int | None:
        return self._latest.latest_step()

    def best_epoch(self) -> int | None:
        return self._best.best_step()

    @staticmethod
    def _restore(manager: ocp.CheckpointManager, epoch: int, template: Any) -> tuple[Any, dict[str, Any]]:
        manager.wait_until_finished()
        restored = manager.restore(epoch, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_abstract(to_named_tree(template))), meta=ocp.args.JsonRestore()))
        return from_named_tree(template, restored["state"]), dict(restored["meta"])

    def restore_latest(self, template: Any) -> tuple[int, Any, dict[str, Any]] | None:
        """``(epoch, tree, meta)`` of the latest checkpoint, the tree in the structure, dtypes and shardings
        of ``template``; ``None`` when there is none."""
        self._latest.wait_until_finished()
        epoch = self._latest.latest_step()
        if epoch is None:
            return None
        tree, meta = self._restore(self._latest, epoch, template)
        return epoch, tree, meta

    def restore_best(self, template: Any) -> tuple[int, Any, dict[str, Any]] | None:
        """``(epoch, tree, meta)`` of the best checkpoint (see :meth:`restore_latest`)."""
        self._best.wait_until_finished()
        epoch = self._best.best_step()
        if epoch is None:
            return None
        tree, meta = self._restore(self._best, epoch, template)
        return epoch, tree, meta

    def wait(self) -> None:
        """Block until pending asynchronous saves are on disk."""
        self._latest.wait_until_finished()
        self._best.wait_until_finished()

    def close(self) -> None:
        self.wait()
        self._latest.close()
        self._best.close()

    def __enter__(self) -> CheckpointStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
