"""train_and_evaluate end to end on a tiny network and dataset: outputs, resume, NaN guard, options."""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_support import ExplodingNet, TinyNet, read_event_scalars, tiny_factory, tiny_splits

from segmime_jax.data.dataset import DatasetSplits
from segmime_jax.losses import loss_from_spec
from segmime_jax.train import (
    NonFiniteLossError,
    TrainConfig,
    TrainState,
    load_run_result,
    make_eval_step,
    train_and_evaluate,
)
from segmime_jax.train import engine as loop_module
from segmime_jax.train.checkpoint import CheckpointStore
from segmime_jax.train.evaluate import evaluate
from segmime_jax.train.optim import PlateauState, plateau_update
from segmime_jax.train.tensorboard import epoch_scalars

# 9 training slices with batch 4: two full batches and a trimmed one of 1 slice per epoch.
CONFIG = TrainConfig(
    loss="dsc",
    epochs=3,
    batch_size=4,
    eval_batch_size=4,
    learning_rate=3e-2,
    plateau_patience=1,
    progress=False,
    num_examples=2,
)


TIMES = ("time_s", "train_s", "val_s", "telemetry_s", "checkpoint_s")


def _without_time(history):
    return [{k: v for k, v in h.items() if k not in TIMES} for h in history]


@pytest.fixture(scope="module")
def data():
    return tiny_splits(train_volumes=3, slices=3)


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    return run_dir, train_and_evaluate(CONFIG, data, run_dir, model_factory=tiny_factory)


def test_outputs(run, data):
    run_dir, result = run
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert [h["steps"] for h in result.history] == [3, 6, 9]
    assert result.history[-1]["val_dsc_fg"] > result.history[0]["val_dsc_fg"]
    assert result.class_names == ("background", "disk", "square")
    chex.assert_shape(result.test_dsc, (2, 3))
    chex.assert_shape(result.test_clece, (3,))
    for name in ("confidence", "accuracy", "count"):
        chex.assert_shape(result.reliability[name], (3, 15))
    assert result.reliability["count"].sum() == len(data.test) * 32 * 32 * 3
    chex.assert_shape(result.examples["image"], (2, 32, 32))
    chex.assert_shape(result.examples["prediction"], (2, 32, 32))
    assert result.test_volume_names == ["test00", "test01"]
    for h in result.history:  # the epoch's wall time and its parts
        parts = sum(h[k] for k in ("train_s", "val_s", "telemetry_s", "checkpoint_s"))
        assert 0 < parts <= h["time_s"] + 1e-9 and h["time_s"] - parts < 0.05 * h["time_s"] + 0.05
    telemetry = result.history[0]["grad_telemetry"]
    assert len(telemetry["fg_median"]) == 3 and telemetry["dynamic_range_db"] >= 0
    assert all(n <= 2 * CONFIG.batch_size for n in telemetry["fg_distinct"])  # Dice: 2 values per image
    # per (image, class) ranges, the paper's figure: no wider than the batch-pooled range of the class
    medians, maxima = telemetry["image_dynamic_range_db_median"], telemetry["image_dynamic_range_db_max"]
    assert len(medians) == len(maxima) == 3
    for median, largest, pooled in zip(medians, maxima, telemetry["class_dynamic_range_db"], strict=True):
        assert 0 <= median <= largest <= pooled + 1e-4
    # metrics.jsonl mirrors the history; result.json reloads to the same result
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert lines == result.history
    loaded = load_run_result(run_dir)
    assert loaded.config == CONFIG and loaded.best_epoch == result.best_epoch
    np.testing.assert_array_equal(loaded.test_dsc, result.test_dsc)
    np.testing.assert_array_equal(loaded.examples["prediction"], result.examples["prediction"])
    assert sorted(p.name for p in (run_dir / "predictions").iterdir()) == ["test00.nii.gz", "test01.nii.gz"]


def test_surface_metrics_and_the_per_volume_csv(run):
    """HD95 and ASSD per test volume and foreground class (the tiny dataset has no label files: its working-size
    labels are the ground truth, said in the result), saved, reloaded, and in test_metrics.csv."""
    run_dir, result = run
    chex.assert_shape(result.test_hd95, (2, 3))
    assert np.isnan(result.test_hd95[:, 0]).all() and np.isnan(result.test_assd[:, 0]).all()
    assert (result.test_assd[:, 1:] <= result.test_hd95[:, 1:] + 1e-9).all()  # where both defined
    assert "no label file" in result.surface["ground_truth"] and result.surface["time_s"] > 0
    loaded = load_run_result(run_dir)
    np.testing.assert_array_equal(loaded.test_hd95, result.test_hd95)
    np.testing.assert_array_equal(loaded.test_assd, result.test_assd)
    summary = result.summary()
    assert summary["test_hd95_undefined"] == int(np.isnan(result.test_hd95[:, 1:]).sum())
    rows = list(csv.DictReader((run_dir / "test_metrics.csv").open()))
    assert [(r["volume"], r["class"]) for r in rows] == [
        (v, c) for v in ("test00", "test01") for c in ("disk", "square")
    ]
    for row, (v, k) in zip(rows, [(v, k) for v in range(2) for k in (1, 2)], strict=True):
        assert float(row["dsc"]) == pytest.approx(result.test_dsc[v, k], rel=1e-5)
        assert float(row["hd95_mm"] or "nan") == pytest.approx(result.test_hd95[v, k], rel=1e-5, nan_ok=True)


def test_tensorboard_events_equal_metrics_jsonl(run):
    pytest.importorskip("tensorboardX", reason="tensorboardX (the tensorboard extra) is not installed")
    run_dir, result = run
    scalars = read_event_scalars(run_dir)
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for line in lines:
        expected = epoch_scalars(line, result.class_names)
        assert {"loss/train", "val_dsc/disk", "val_dsc/square", "learning_rate", "time/time_s"} <= set(expected)
        assert "gradient/dynamic_range_db" in expected
        for tag, value in expected.items():
            assert scalars[tag][line["epoch"]] == np.float32(value), tag
    assert {tag: sorted(steps) for tag, steps in scalars.items()} == {tag: [1, 2, 3] for tag in expected}


def test_plateau_and_best_epoch_follow_the_validation_dsc(run):
    _, result = run
    plateau = PlateauState()
    for h in result.history:
        assert h["learning_rate"] == pytest.approx(CONFIG.learning_rate * plateau.scale, rel=1e-12)
        plateau = plateau_update(plateau, h["val_dsc_fg"], patience=CONFIG.plateau_patience)
    dsc = [h["val_dsc_fg"] for h in result.history]
    assert result.best_epoch == int(np.argmax(dsc)) + 1


def test_test_metrics_come_from_the_best_checkpoint(run, data):
    run_dir, result = run
    template = TrainState.create(tiny_factory(3, rngs=__import__("flax").nnx.Rngs(0)), CONFIG.build_optimizer())
    with CheckpointStore(run_dir / "checkpoints") as store:
        assert store.epochs() == sorted({result.best_epoch, CONFIG.epochs})  # orbax kept the latest and the best
        epoch, tree, _ = store.restore(template.checkpoint_tree(), result.best_epoch)
    assert epoch == result.best_epoch
    best = template.replace_from_checkpoint(tree)
    program, params = loss_from_spec(CONFIG.loss, 3)
    again = evaluate(make_eval_step(program, 3), best, data.test, 3, params)  # another batch size than the run's
    np.testing.assert_allclose(again.dsc, result.test_dsc, rtol=1e-6)
    np.testing.assert_allclose(again.calibration.clece(), result.test_clece, rtol=1e-5)


def test_resume_equals_uninterrupted(run, data, tmp_path, monkeypatch):
    _, uninterrupted = run
    calls = {"n": 0}
    real_evaluate = loop_module.evaluate

    def killed_in_epoch_3(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # the validation of epoch 3: its training is lost, epoch 2 is on disk
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(loop_module, "evaluate", killed_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        train_and_evaluate(CONFIG, data, tmp_path, model_factory=tiny_factory)
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
    monkeypatch.setattr(loop_module, "evaluate", real_evaluate)
    with pytest.raises(FileExistsError, match="resume=True"):
        train_and_evaluate(CONFIG, data, tmp_path, model_factory=tiny_factory)
    with pytest.raises(ValueError, match="other data \\(different train;"):
        other = tiny_splits(train_volumes=4, slices=3)
        train_and_evaluate(
            CONFIG,
            DatasetSplits(train=other.train, val=data.val, test=data.test, name=data.name),
            tmp_path,
            resume=True,
            model_factory=tiny_factory,
        )
    with pytest.raises(ValueError, match="configuration changed.*loss"):
        train_and_evaluate(
            dataclasses.replace(CONFIG, loss="ce"), data, tmp_path, resume=True, model_factory=tiny_factory
        )
    resumed = train_and_evaluate(CONFIG, data, tmp_path, resume=True, model_factory=tiny_factory)
    assert _without_time(resumed.history) == _without_time(uninterrupted.history)
    # the wall time counts the interrupted call's epochs too
    assert resumed.wall_time_s >= sum(h["time_s"] for h in resumed.history)
    assert resumed.best_epoch == uninterrupted.best_epoch
    np.testing.assert_array_equal(resumed.test_dsc, uninterrupted.test_dsc)
    np.testing.assert_array_equal(resumed.test_clece, uninterrupted.test_clece)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert _without_time(lines) == _without_time(uninterrupted.history)
    np.testing.assert_array_equal(resumed.test_hd95, uninterrupted.test_hd95)
    if importlib.util.find_spec("tensorboardX") is not None:  # two event files, the same numbers as metrics.jsonl
        assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2
        scalars = read_event_scalars(tmp_path)
        for line in lines:
            for tag, value in epoch_scalars(line, resumed.class_names).items():
                assert scalars[tag][line["epoch"]] == np.float32(value), tag


def test_resume_after_halving_and_a_kill_during_a_save(data, tmp_path, monkeypatch):
    """Five epochs: the rate halves at epochs 4 and 5 (the plateau state must survive a resume), and epoch 2
    improves; a kill while epoch 2's checkpoint is written (nothing of it on disk) resumes from epoch 1."""
    config = dataclasses.replace(CONFIG, epochs=5, write_predictions=False, telemetry=False)
    uninterrupted = train_and_evaluate(config, data, tmp_path / "whole", model_factory=tiny_factory)
    rates = [h["learning_rate"] for h in uninterrupted.history]
    assert rates == pytest.approx([0.03, 0.03, 0.03, 0.015, 0.0075])
    assert uninterrupted.history[1]["best"]

    real_evaluate, calls = loop_module.evaluate, {"n": 0}

    def killed_in_epoch_5(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(loop_module, "evaluate", killed_in_epoch_5)
    with pytest.raises(KeyboardInterrupt):
        train_and_evaluate(config, data, tmp_path / "a", model_factory=tiny_factory)
    monkeypatch.setattr(loop_module, "evaluate", real_evaluate)
    resumed = train_and_evaluate(config, data, tmp_path / "a", resume=True, model_factory=tiny_factory)
    assert _without_time(resumed.history) == _without_time(uninterrupted.history)

    real_save = CheckpointStore.save

    def killed_while_saving_epoch_2(self, epoch, *args, **kwargs):
        if epoch == 2:
            raise KeyboardInterrupt
        return real_save(self, epoch, *args, **kwargs)

    monkeypatch.setattr(CheckpointStore, "save", killed_while_saving_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train_and_evaluate(config, data, tmp_path / "b", model_factory=tiny_factory)
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir() if p.name.isdigit()) == ["1"]
    monkeypatch.setattr(CheckpointStore, "save", real_save)
    resumed = train_and_evaluate(config, data, tmp_path / "b", resume=True, model_factory=tiny_factory)
    assert _without_time(resumed.history) == _without_time(uninterrupted.history)
    assert resumed.best_epoch == uninterrupted.best_epoch
    np.testing.assert_array_equal(resumed.test_dsc, uninterrupted.test_dsc)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(data, tmp_path):
    def exploding(num_classes, *, rngs, dtype):
        return ExplodingNet(num_classes, rngs=rngs, dtype=dtype, explode_after=3)  # NaN from step 4 = epoch 2

    with pytest.raises(NonFiniteLossError, match="at epoch 2, step 3.*last good checkpoint \\(epoch 1\\)"):
        train_and_evaluate(CONFIG, data, tmp_path, model_factory=exploding)
    template = TrainState.create(
        exploding(3, rngs=__import__("flax").nnx.Rngs(0), dtype=np.float32), CONFIG.build_optimizer()
    )
    with CheckpointStore(tmp_path / "checkpoints") as store:
        epoch, tree, meta = store.restore(template.checkpoint_tree())
    assert epoch == 1 and len(meta["history"]) == 1
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(tree["params"]))
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1
    assert not (tmp_path / "result.json").exists()


class _GradientNaNNet(ExplodingNet):
    """Finite logits, but a NaN gradient on the 3rd train step (the last of epoch 1): the loss alone would
    not show it, and the NaN parameters would be saved as the epoch's checkpoint."""

    def __call__(self, x):
        logits = TinyNet.__call__(self, x)
        if not self.bn.use_running_average:
            self.calls[...] = self.calls[...] + 1
        eps = jnp.where(self.calls[...] == 3, 0.0, 1.0)
        return logits + 0.0 * jnp.sqrt(self.conv2.bias[...][0] * 0.0 + eps)  # d sqrt(x)/dx at 0 is inf


def test_non_finite_gradient_stops_before_the_checkpoint(data, tmp_path):
    def factory(num_classes, *, rngs, dtype):
        return _GradientNaNNet(num_classes, rngs=rngs, dtype=dtype)

    with pytest.raises(NonFiniteLossError, match="non-finite gradient .* at epoch 1, step 2.*no checkpoint"):
        train_and_evaluate(CONFIG, data, tmp_path, model_factory=factory)
    assert not (tmp_path / "metrics.jsonl").read_text()
    with CheckpointStore(tmp_path / "checkpoints") as store:
        assert store.epochs() == []


def test_sgd_drop_last_without_checkpoints(data, tmp_path):
    config = dataclasses.replace(
        CONFIG,
        optimizer="sgd",
        learning_rate=None,
        epochs=2,
        last_batch="drop",
        checkpoints=False,
        write_predictions=False,
        telemetry=False,
        loss="ce",
    )
    result = train_and_evaluate(config, data, tmp_path, model_factory=tiny_factory)
    assert [h["steps"] for h in result.history] == [2, 4]
    assert result.history[0]["learning_rate"] == pytest.approx(1e-2)
    assert result.history[0]["grad_telemetry"] == {}
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "predictions").exists()
    assert (tmp_path / "result.json").exists() and np.isfinite(result.test_dsc).all()


def test_config_validation():
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="rmsprop")
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="float16")
    with pytest.raises(ValueError, match="unknown model"):
        TrainConfig(model="unet")
    with pytest.raises(ValueError):
        TrainConfig(loss="dice+focal")
