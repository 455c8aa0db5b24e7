"""Runs trained together (train_runs, vmapped: the 'stacked' layout) on one CPU device: each run ends as the run
trained alone, a diverging run is frozen without touching the others, and an interrupted stack resumes exactly.
Runs over 4 and 8 fake devices are in test_train_runs_sharding.py.

SGD throughout: with Adam, a parameter whose gradient is ~0 moves by ±lr depending on float rounding (see
test_train_sharding.py), so two correct computations can differ by more than rounding.
"""

from __future__ import annotations

import dataclasses
import shutil

import jax
import numpy as np
import pytest
from flax import nnx
from train_support import tiny_factory, tiny_splits

from segmime_jax.train import NonFiniteLossError, TrainConfig, TrainState, engine, train_and_evaluate, train_runs
from segmime_jax.train.checkpoint import CheckpointStore
from segmime_jax.train.config import check_stackable
from segmime_jax.train.layout import choose_layout

BASE = TrainConfig(
    optimizer="sgd",
    epochs=4,
    batch_size=4,
    eval_batch_size=4,
    plateau_patience=1,
    progress=False,
    num_examples=2,
)
# (loss, learning rate, seed): seed 0 twice (the same batches), and a rate that the plateau rule halves
RUNS = (("ce", 0.1, 0), ("dsc", 0.05, 1), ("mime", 0.1, 0))
TERMS = ("ce", "dsc", "mime")
TIMES = ("time_s", "train_s", "val_s", "telemetry_s", "checkpoint_s")
METRICS = ("train_loss", "val_loss", "val_dsc", "val_dsc_fg")


def _configs(runs=RUNS):
    return [dataclasses.replace(BASE, loss=loss, learning_rate=lr, seed=seed) for loss, lr, seed in runs]


def _quiet(text: str) -> None:
    pass


def _without_time(history):
    return [{k: v for k, v in h.items() if k not in TIMES} for h in history]


def _params(run_dir, config):
    template = TrainState.create(tiny_factory(3, rngs=nnx.Rngs(0)), config.build_optimizer())
    with CheckpointStore(run_dir / "checkpoints") as store:
        _, tree, _ = store.restore(template.checkpoint_tree())
    return jax.tree.leaves(tree["params"])


def assert_same_run(a, b, *, tol=1e-5):
    """Two results of one run: same epochs, rates, best epoch; metrics and test DSC within ``tol``."""
    assert len(a.history) == len(b.history) and a.best_epoch == b.best_epoch
    for ha, hb in zip(a.history, b.history, strict=True):
        assert (ha["learning_rate"], ha["steps"], ha["best"]) == (hb["learning_rate"], hb["steps"], hb["best"])
        for k in METRICS:
            np.testing.assert_allclose(ha[k], hb[k], rtol=tol, atol=tol, err_msg=k)
    np.testing.assert_allclose(a.test_dsc, b.test_dsc, rtol=tol, atol=tol)
    np.testing.assert_allclose(a.test_clece, b.test_clece, rtol=tol, atol=tol)


@pytest.fixture(scope="module")
def data():
    return tiny_splits(train_volumes=3, slices=3)  # 9 slices, batch 4: two batches and a trimmed one of 1


@pytest.fixture(scope="module")
def alone(data, tmp_path_factory):
    out = []
    for config in _configs():
        run_dir = tmp_path_factory.mktemp("alone")
        result = train_and_evaluate(config, data, run_dir, model_factory=tiny_factory, loss_terms=TERMS, log=_quiet)
        out.append((run_dir, result))
    return out


@pytest.fixture(scope="module")
def stacked(data, tmp_path_factory):
    dirs = [tmp_path_factory.mktemp("stacked") for _ in RUNS]
    results = train_runs(
        _configs(), data, dirs, layout="stacked", model_factory=tiny_factory, loss_terms=TERMS, log=_quiet
    )
    return list(zip(dirs, results, strict=True))


def _files(run_dir) -> set[tuple[str, ...]]:
    """The files of a run (TensorBoard's event files by kind: their names hold a time and a process id)."""
    parts = {p.relative_to(run_dir).parts[:2] for p in run_dir.rglob("*") if p.is_file()}
    return {("events",) if part[0].startswith("events.out.tfevents") else part for part in parts}


def test_each_stacked_run_ends_as_the_run_alone(alone, stacked):
    rates = [[h["learning_rate"] for h in s.history] for _, s in stacked]
    assert any(r[-1] < r[0] for r in rates) and any(r[-1] == r[0] for r in rates)  # per-run plateau halving
    for (alone_dir, a), (stacked_dir, s), config in zip(alone, stacked, _configs(), strict=True):
        assert s.config == config
        assert_same_run(a, s)
        for pa, ps in zip(_params(alone_dir, config), _params(stacked_dir, config), strict=True):
            np.testing.assert_allclose(pa, ps, rtol=1e-5, atol=1e-6)
        # the same files, the same checkpoints (latest and best)
        assert _files(alone_dir) == _files(stacked_dir)
        assert (stacked_dir / "metrics.jsonl").read_text().count("\n") == 4
        telemetry_a, telemetry_s = a.history[-1]["grad_telemetry"], s.history[-1]["grad_telemetry"]
        np.testing.assert_allclose(telemetry_a["fg_median"], telemetry_s["fg_median"], rtol=1e-4)


def test_a_diverging_run_is_frozen_and_the_others_go_on(data, alone, tmp_path):
    # SGD at 1e10 gives a NaN loss at epoch 2, step 3 (as alone: test_train_loop's guard), after a checkpoint
    runs = (*RUNS[:2], ("dsc", 1e10, 2), RUNS[2])
    dirs = [tmp_path / str(i) for i in range(len(runs))]
    messages = []
    results = train_runs(
        _configs(runs), data, dirs, layout="stacked", model_factory=tiny_factory, loss_terms=TERMS, log=messages.append
    )
    error = results[2]
    assert isinstance(error, NonFiniteLossError)
    assert "at epoch 2, step 3" in str(error) and "last good checkpoint (epoch 1)" in str(error)
    assert any("the other runs go on" in m for m in messages)
    with CheckpointStore(dirs[2] / "checkpoints") as store:
        assert store.epochs() == [1]
    assert (dirs[2] / "metrics.jsonl").read_text().count("\n") == 1 and not (dirs[2] / "result.json").exists()
    for (_, a), s in zip(alone, (results[0], results[1], results[3]), strict=True):
        assert_same_run(a, s)


def test_an_interrupted_stack_resumes_exactly_stacked_or_alone(data, stacked, tmp_path, monkeypatch):
    dirs = [tmp_path / str(i) for i in range(len(RUNS))]
    real, calls = engine.evaluate, {"n": 0}

    def killed_in_epoch_3(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # the validation of epoch 3: its training is lost, epoch 2 is on disk
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "evaluate", killed_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        train_runs(_configs(), data, dirs, layout="stacked", model_factory=tiny_factory, loss_terms=TERMS, log=_quiet)
    monkeypatch.setattr(engine, "evaluate", real)
    shutil.copytree(dirs[1], tmp_path / "alone")  # continued alone below: the checkpoints are the same as a run's
    with pytest.raises(FileExistsError, match="resume=True"):
        train_runs(_configs(), data, dirs, layout="stacked", model_factory=tiny_factory, loss_terms=TERMS, log=_quiet)
    resumed = train_runs(
        _configs(), data, dirs, resume=True, layout="stacked", model_factory=tiny_factory, loss_terms=TERMS, log=_quiet
    )
    for (_, whole), again, run_dir in zip(stacked, resumed, dirs, strict=True):
        assert _without_time(again.history) == _without_time(whole.history)
        np.testing.assert_array_equal(again.test_dsc, whole.test_dsc)
        assert _without_time(load_lines(run_dir)) == _without_time(whole.history)
    alone = train_and_evaluate(
        _configs()[1], data, tmp_path / "alone", resume=True, model_factory=tiny_factory, loss_terms=TERMS, log=_quiet
    )
    assert_same_run(alone, stacked[1][1])


def load_lines(run_dir):
    import json

    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_runs_killed_at_different_epochs_resume_as_separate_stacks(data, stacked, tmp_path, monkeypatch):
    """A kill while the second run's epoch-2 checkpoint is written: run 0 is at epoch 2, runs 1 and 2 at 1."""
    dirs = [tmp_path / str(i) for i in range(len(RUNS))]
    real_save = CheckpointStore.save

    def killed_saving(self, epoch, *args, **kwargs):
        if epoch == 2 and self.directory == (dirs[1] / "checkpoints").absolute():
            raise KeyboardInterrupt
        return real_save(self, epoch, *args, **kwargs)

    monkeypatch.setattr(CheckpointStore, "save", killed_saving)
    with pytest.raises(KeyboardInterrupt):
        train_runs(_configs(), data, dirs, layout="stacked", model_factory=tiny_factory, loss_terms=TERMS, log=_quiet)
    monkeypatch.setattr(CheckpointStore, "save", real_save)
    messages = []
    resumed = train_runs(
        _configs(),
        data,
        dirs,
        resume=True,
        layout="stacked",
        model_factory=tiny_factory,
        loss_terms=TERMS,
        log=messages.append,
    )
    assert [m for m in messages if ", stacked:" in m] == [  # a stack of 2 runs at epoch 1, one of 1 at epoch 2
        "2 runs, stacked: a stack of 2 x (2 runs per device, 1 device per run); chosen by --grid-mode stacked",
        "1 run, stacked: a stack of 1 x (one run per device, 1 device per run); chosen by --grid-mode stacked",
    ]
    for (_, whole), again in zip(stacked, resumed, strict=True):
        assert_same_run(whole, again)  # other stack sizes: equal to float32 rounding


def test_what_stacks_and_the_mesh():
    check_stackable(_configs())  # loss, learning rate, seed: per-run data
    check_stackable([BASE, dataclasses.replace(BASE, adam_b1=0.9, momentum=0.5, weight_decay=0.0, progress=True)])
    with pytest.raises(ValueError, match="must share optimizer"):
        check_stackable([BASE, dataclasses.replace(BASE, optimizer="adam")])
    with pytest.raises(ValueError, match="must share epochs"):
        check_stackable([BASE, dataclasses.replace(BASE, epochs=5)])
    assert choose_layout(3, 1, mode="stacked", batch_sizes=(4,)).meshes == ((1, 1),)
