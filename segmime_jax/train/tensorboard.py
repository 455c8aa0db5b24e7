"""TensorBoard event files of a run, next to its ``metrics.jsonl``: the same numbers, watched while it trains.

``tensorboard --logdir results/acdc/demo/runs`` shows every run of a grid (one TensorBoard "run" per folder).
Written through tensorboardX (the optional ``tensorboard`` extra: ``pip install 'segmime_jax[tensorboard]'``,
a small pure-Python writer over protobuf; TensorBoard itself is only needed to look at the files). Without it a
run trains as usual and says once, per process, how to get the logs.

One event per epoch (step = epoch), each value the one of that epoch's ``metrics.jsonl`` line (TensorBoard
stores scalars in float32): see :func:`epoch_scalars` for the tags. A resumed run starts its new event file
with a purge at its first epoch, so TensorBoard drops what a killed run had logged past its last checkpoint,
as ``metrics.jsonl`` is rewritten to that checkpoint's history.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

INSTALL_HINT = "pip install 'segmime_jax[tensorboard]' (or pip install tensorboardX)"
_TIMES = ("time_s", "train_s", "val_s", "telemetry_s", "checkpoint_s")
_said_missing = False


def epoch_scalars(record: Mapping[str, Any], class_names: Sequence[str]) -> dict[str, float]:
    """The TensorBoard scalars of one ``metrics.jsonl`` record (``None`` values left out).

    Tags: ``loss/train``, ``loss/val``, ``val_dsc/<class>`` per foreground class and ``val_dsc/foreground_mean``
    (the paper's "All", which picks the best epoch), ``learning_rate``, ``gradient/dynamic_range_db`` (∂L/∂s on
    the telemetry batch, all classes pooled) and ``gradient/dynamic_range_db/<class>``, ``time/<part>`` for
    ``time_s`` (the epoch), ``train_s``, ``val_s``, ``telemetry_s``, ``checkpoint_s``.
    """
    values: dict[str, Any] = {
        "loss/train": record.get("train_loss"),
        "loss/val": record.get("val_loss"),
        "val_dsc/foreground_mean": record.get("val_dsc_fg"),
        "learning_rate": record.get("learning_rate"),
    }
    for name, dsc in zip(class_names[1:], (record.get("val_dsc") or [])[1:], strict=False):
        values[f"val_dsc/{name}"] = dsc
    telemetry = record.get("grad_telemetry") or {}
    values["gradient/dynamic_range_db"] = telemetry.get("dynamic_range_db")
    for name, db in zip(class_names, telemetry.get("class_dynamic_range_db") or [], strict=False):
        values[f"gradient/dynamic_range_db/{name}"] = db
    for part in _TIMES:
        values[f"time/{part}"] = record.get(part)
    return {tag: float(v) for tag, v in values.items() if v is not None}


class EpochEvents:
    """Writes :func:`epoch_scalars` of each epoch into ``run_dir`` (the event file is opened at the first write).

    Args:
      run_dir: the run's folder (where ``metrics.jsonl`` is).
      class_names: background first.
      first_epoch: the first epoch this call of the run writes; above 1 (a resumed run) TensorBoard is told to
        purge the events of that epoch and later from earlier files.
      log: where the one message about a missing tensorboardX goes.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        class_names: Sequence[str],
        *,
        first_epoch: int = 1,
        log: Callable[[str], None] = print,
    ):
        self.run_dir = pathlib.Path(run_dir)
        self.class_names = tuple(class_names)
        self.first_epoch = first_epoch
        self.log = log
        self._writer: Any = None
        self._available = True

    def write(self, record: Mapping[str, Any]) -> None:
        """Add one epoch's scalars and flush them to disk (TensorBoard shows them at its next reload)."""
        writer = self._open()
        if writer is None:
            return
        epoch = int(record["epoch"])
        for tag, value in epoch_scalars(record, self.class_names).items():
            writer.add_scalar(tag, value, global_step=epoch)
        writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _open(self) -> Any:
        global _said_missing
        if self._writer is None and self._available:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                self._available = False
                if not _said_missing:
                    _said_missing = True
                    self.log(f"TensorBoard logs not written (tensorboardX is not installed): {INSTALL_HINT}")
                return None
            self._writer = SummaryWriter(
                logdir=str(self.run_dir),
                purge_step=self.first_epoch if self.first_epoch > 1 else None,
                # tensorboardX names files by the second and the host: the process and the epoch keep a quickly
                # resumed run from reusing a file name.
                filename_suffix=f".{os.getpid()}.epoch{self.first_epoch}",
            )
        return self._writer
