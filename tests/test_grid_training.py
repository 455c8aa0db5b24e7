"""How a grid trains its runs (--grid-mode): which runs train together, and a diverged run that no longer stops
the others. The engine is replaced by a fake: nothing is trained here (test_train_stacked.py trains runs
together; test_train_sharding.py checks what each layout picks)."""

from __future__ import annotations

import types

import numpy as np
import pytest

from segmime_jax.commands import acdc
from segmime_jax.paper import grid
from segmime_jax.paper.grid import training as grid_training
from segmime_jax.paper.grid.config import GRID_MODES
from segmime_jax.train import NonFiniteLossError
from segmime_jax.train.layout import LAYOUTS


def _grid(tmp_path, *args):
    config = acdc.parse_args(
        ["--losses", "ce,dsc", "--optimizers", "adam,sgd", "--seeds", "2", "--out", str(tmp_path), *args]
    )
    return config, grid.grid_runs(config, model="enet", num_classes=4)


def _result(config):
    return types.SimpleNamespace(config=config, test_dsc=np.full((2, 4), 0.5), best_epoch=1, wall_time_s=1.0)


def _diverged(config):
    return NonFiniteLossError(float("nan"), epoch=2, step=3, checkpoint_epoch=1, checkpoint_dir="somewhere")


@pytest.fixture
def calls(monkeypatch):
    """Fake training: records each call; runs with the SGD dsc loss of seed 1 diverge."""
    made = {"calls": []}

    def outcome(config):
        return (
            _diverged(config) if (config.optimizer, config.loss, config.seed) == ("sgd", "dsc", 1) else _result(config)
        )

    def train_runs(configs, data, run_dirs, *, layout, **kwargs):
        made["calls"].append((layout, list(configs)))
        return [outcome(config) for config in configs]

    monkeypatch.setattr(grid_training, "train_runs", train_runs)
    return made


def test_runs_that_share_a_step_train_as_one_call(tmp_path, calls):
    config, runs = _grid(tmp_path, "--grid-mode", "stacked")
    log = []
    with pytest.raises(grid_training.DivergedRunsError, match="1 run\\(s\\) diverged.*sgd-dsc-seed1: non-finite"):
        grid_training.train_grid(
            runs, None, ("ce", "dsc"), mode="stacked", overwrite=False, model="enet", log=log.append
        )
    assert {layout for layout, _ in calls["calls"]} == {"stacked"}
    assert [[(c.optimizer, c.loss, c.seed) for c in stack] for _, stack in calls["calls"]] == [
        [("adam", "ce", 0), ("adam", "ce", 1), ("adam", "dsc", 0), ("adam", "dsc", 1)],
        [("sgd", "ce", 0), ("sgd", "ce", 1), ("sgd", "dsc", 0), ("sgd", "dsc", 1)],
    ]
    assert sum(line.startswith("[") for line in log) == 8 and any("sgd-dsc-seed1 diverged" in line for line in log)


def test_sequential_mode_goes_on_after_a_divergence(tmp_path, calls):
    _, runs = _grid(tmp_path)
    with pytest.raises(grid_training.DivergedRunsError) as caught:
        grid_training.train_grid(runs, None, ("ce", "dsc"), mode="sequential", overwrite=False, model="enet", log=print)
    assert [len(configs) for _, configs in calls["calls"]] == [1] * 8  # the runs after the diverged one trained too
    assert list(caught.value.errors) == ["sgd-dsc-seed1"]


def test_grid_modes_are_the_layouts():
    assert GRID_MODES == LAYOUTS
    assert acdc.parse_args(["--grid-mode", "parallel"]).grid_mode == "parallel"
    with pytest.raises(SystemExit):
        acdc.parse_args(["--grid-mode", "vmap"])
