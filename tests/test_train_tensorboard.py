"""TensorBoard event files (segmime_jax.train.tensorboard): the tags of a metrics.jsonl record, the one message
without tensorboardX, and a resumed run's purge as TensorBoard itself reads it."""

from __future__ import annotations

import sys

import numpy as np
from train_support import read_event_scalars

from segmime_jax.train import tensorboard
from segmime_jax.train.tensorboard import EpochEvents, epoch_scalars

CLASSES = ("background", "RV", "MYO", "LV")


def record(epoch: int, loss: float) -> dict:
    return {
        "epoch": epoch,
        "train_loss": loss,
        "learning_rate": 2e-3,
        "steps": 10 * epoch,
        "train_s": 5.0,
        "val_loss": loss + 0.1,
        "val_dsc": [0.99, 0.7, 0.6, 0.8],
        "val_dsc_fg": 0.7,
        "best": True,
        "grad_telemetry": {"dynamic_range_db": 12.5, "class_dynamic_range_db": [1.0, 2.0, None, 4.0]},
        "telemetry_s": 0.1,
        "checkpoint_s": None,
        "time_s": 6.0,
    }


def test_epoch_scalars_are_the_record_values():
    scalars = epoch_scalars(record(3, 0.25), CLASSES)
    assert scalars == {
        "loss/train": 0.25,
        "loss/val": 0.35,
        "val_dsc/foreground_mean": 0.7,
        "learning_rate": 2e-3,
        "val_dsc/RV": 0.7,
        "val_dsc/MYO": 0.6,
        "val_dsc/LV": 0.8,
        "gradient/dynamic_range_db": 12.5,
        "gradient/dynamic_range_db/background": 1.0,
        "gradient/dynamic_range_db/RV": 2.0,
        "gradient/dynamic_range_db/LV": 4.0,  # None (no foreground in the batch) left out
        "time/time_s": 6.0,
        "time/train_s": 5.0,
        "time/telemetry_s": 0.1,
    }
    assert "gradient/dynamic_range_db" not in epoch_scalars({**record(1, 0.5), "grad_telemetry": {}}, CLASSES)


def test_without_tensorboardx_a_run_says_once_how_to_get_the_logs(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import tensorboardX raises ImportError
    monkeypatch.setattr(tensorboard, "_said_missing", False)
    said: list[str] = []
    for run in ("a", "b"):
        events = EpochEvents(tmp_path / run, CLASSES, log=said.append)
        events.write(record(1, 0.5))
        events.write(record(2, 0.4))
        events.close()
    assert len(said) == 1 and "pip install 'segmime_jax[tensorboard]'" in said[0]
    assert not list(tmp_path.rglob("events.out.tfevents.*"))


def test_resumed_events_purge_what_the_killed_run_logged_past_its_checkpoint(tmp_path):
    """Epochs 1-3 logged, the run killed and resumed from its epoch-1 checkpoint: epochs 2 and 3 are logged again
    (other values). TensorBoard shows the new values only; the raw files hold both."""
    # tensorboardX (the tensorboard extra) and TensorBoard itself come with the dev extra: no skip.
    from tensorboard.backend.event_processing import event_accumulator

    first = EpochEvents(tmp_path, CLASSES)
    for epoch in (1, 2, 3):
        first.write(record(epoch, 1.0 / epoch))
    first.close()
    resumed = EpochEvents(tmp_path, CLASSES, first_epoch=2)
    for epoch in (2, 3):
        resumed.write(record(epoch, 10.0 + epoch))
    resumed.close()
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2
    ours = read_event_scalars(tmp_path)
    assert ours["loss/train"] == {1: 1.0, 2: 12.0, 3: 13.0}
    assert ours["val_dsc/LV"][3] == np.float32(0.8)
    accumulator = event_accumulator.EventAccumulator(str(tmp_path))
    accumulator.Reload()
    shown = {e.step: e.value for e in accumulator.Scalars("loss/train")}
    assert shown == {1: 1.0, 2: 12.0, 3: 13.0}
    assert accumulator.Scalars("val_dsc/RV")[-1].value == np.float32(0.7)
