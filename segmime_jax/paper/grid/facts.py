"""The facts of a finished grid, as two long tables every number of its report is computed from.

- :func:`volume_facts`: one row per (optimizer, loss, seed, volume, class) of the test set, foreground classes only,
  with ``dsc`` (3D DSC in [0, 1], on the working grid), ``hd95_mm`` and ``assd_mm`` (on the original voxel grid;
  NaN where undefined: a class missed, or predicted where there is none) and ``measured`` (False for a run
  finished before surface distances were measured: its distances are NaN and mean "not measured").
- :func:`epoch_facts`: one row per (optimizer, loss, seed, epoch) of training, with the run's per-epoch history
  (``train_loss``, ``val_dsc_fg``, ...) and ``grad_range_db_fg``, the gradient's dynamic range during training
  (:mod:`segmime_jax.train.telemetry`: the median over the probe batch's images per class, averaged over the
  foreground classes; NaN without telemetry).

Rows follow the grid's order (optimiser, loss, seed), then volume and class (or epoch): the order of the runs'
own arrays, so that a statistic over a group adds its values up in the order the runs hold them. ``optimizer``
and ``loss`` are ordered categoricals (the grid's order), which groupings keep.

Example:
  >>> import numpy as np
  >>> from segmime_jax.train import RunResult, TrainConfig
  >>> dsc = np.array([[1.0, 0.8, 0.6], [1.0, 0.9, 0.7]])
  >>> run = RunResult(config=TrainConfig(), history=[], best_epoch=1, test_volume_names=["p1", "p2"],
  ...                 test_dsc=dsc, test_clece=np.zeros(3), reliability={}, examples={},
  ...                 class_names=["bg", "rv", "lv"], wall_time_s=0.0)
  >>> facts = volume_facts({("adam", "dsc", 0): run})
  >>> print(facts[["volume", "class", "dsc"]].to_string(index=False))
  volume class  dsc
      p1    rv  0.8
      p1    lv  0.6
      p2    rv  0.9
      p2    lv  0.7
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from segmime_jax.train import RunResult

#: The columns that name a run.
RUN_KEYS = ("optimizer", "loss", "seed")

#: Per-epoch history fields kept in :func:`epoch_facts` when the runs record them.
EPOCH_FIELDS = ("train_loss", "val_loss", "val_dsc", "val_dsc_fg", "learning_rate", "train_s", "time_s")

RunKey = tuple[str, str, int]


def _ordered(frame: pd.DataFrame, runs: Mapping[RunKey, RunResult]) -> pd.DataFrame:
    """``optimizer`` and ``loss`` as categoricals in the order the runs come in."""
    for j, column in enumerate(("optimizer", "loss")):
        order = list(dict.fromkeys(key[j] for key in runs))
        frame[column] = pd.Categorical(frame[column], categories=order, ordered=True)
    return frame


def volume_facts(runs: Mapping[RunKey, RunResult]) -> pd.DataFrame:
    """The test-set facts of ``runs`` (see the module docstring).

    Args:
      runs: ``{(optimizer, loss, seed): result}`` in the grid's order.

    Returns:
      A DataFrame with columns ``optimizer, loss, seed, volume, class, dsc, hd95_mm, assd_mm, measured``, one row
      per run, test volume and foreground class (``len(runs) × V × (K − 1)`` rows).
    """
    frames = []
    for (optimizer, loss, seed), result in runs.items():
        frame = pd.DataFrame(result.volume_rows())
        frame.insert(0, "seed", seed)
        frame.insert(0, "loss", loss)
        frame.insert(0, "optimizer", optimizer)
        frame["measured"] = result.test_hd95 is not None
        frames.append(frame)
    return _ordered(pd.concat(frames, ignore_index=True), runs)


def _foreground_range(record: Mapping) -> float:
    medians = (record.get("grad_telemetry") or {}).get("image_dynamic_range_db_median") or []
    values = [v for v in medians[1:] if v is not None]
    return float(np.mean(values)) if values else np.nan


def epoch_facts(runs: Mapping[RunKey, RunResult]) -> pd.DataFrame:
    """The training facts of ``runs``, one row per run and epoch (see the module docstring).

    Args:
      runs: ``{(optimizer, loss, seed): result}`` in the grid's order.

    Returns:
      A DataFrame with columns ``optimizer, loss, seed, epoch``, the :data:`EPOCH_FIELDS` the histories hold, and
      ``grad_range_db_fg``.
    """
    rows = [
        {
            "optimizer": optimizer,
            "loss": loss,
            "seed": seed,
            "epoch": record["epoch"],
            **{name: record[name] for name in EPOCH_FIELDS if name in record},
            "grad_range_db_fg": _foreground_range(record),
        }
        for (optimizer, loss, seed), result in runs.items()
        for record in result.history
    ]
    return _ordered(pd.DataFrame(rows), runs)


def curves(epochs: pd.DataFrame, value: str) -> dict[tuple[str, str], list[np.ndarray]]:
    """``{(optimizer, loss): [(epochs, values) of each seed]}``: one column of :func:`epoch_facts` per run, for
    the figures (empty runs left out)."""
    out: dict[tuple[str, str], list[np.ndarray]] = {}
    for (optimizer, loss, _), run in epochs.groupby(list(RUN_KEYS), observed=True, sort=False):
        out.setdefault((optimizer, loss), []).append(run[["epoch", value]].to_numpy(np.float64).T)
    return out


def run_keys(facts: pd.DataFrame) -> Sequence[tuple[str, str]]:
    """The ``(optimizer, loss)`` rows of a report, in the grid's order."""
    pairs = facts[["optimizer", "loss"]].drop_duplicates()
    return [(str(o), str(l)) for o, l in pairs.itertuples(index=False)]
