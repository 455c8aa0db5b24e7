"""One writer per run (segmime_jax.train.run_lock): a second process is refused with one line naming the holder
and touches nothing; kill -9 leaves no stale lock; the grid checks the lock before it plans anything."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from train_support import tiny_factory, tiny_splits

from segmime_jax.train import TrainConfig, train_and_evaluate
from segmime_jax.train.run_lock import RunInUseError, RunLock, lock_path

HOLDER = """
import sys, time
from segmime_jax.train.run_lock import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(600)
"""


@pytest.fixture
def held_by_another_process(tmp_path):
    """``tmp_path / "run"`` locked by a child process; yields (run folder, process)."""
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    yield run_dir, holder
    holder.kill()
    holder.wait()


def test_a_second_writer_is_refused_naming_the_holder_and_touches_nothing(held_by_another_process):
    run_dir, holder = held_by_another_process
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"epoch": 1}\n')
    config = TrainConfig(epochs=1, batch_size=4, progress=False, telemetry=False)
    with pytest.raises(RunInUseError, match=rf"{run_dir} is being trained by another process \(pid {holder.pid} on "):
        train_and_evaluate(config, tiny_splits(), run_dir, resume=True, model_factory=tiny_factory)
    assert sorted(p.name for p in run_dir.iterdir()) == ["metrics.jsonl"]
    assert (run_dir / "metrics.jsonl").read_text() == '{"epoch": 1}\n'


def test_kill_9_leaves_no_stale_lock(held_by_another_process):
    run_dir, holder = held_by_another_process
    with pytest.raises(RunInUseError):
        RunLock(run_dir).acquire()
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with RunLock(run_dir):  # the OS released it with the process
        assert f"pid {os.getpid()} on " in lock_path(run_dir).read_text()
    assert not run_dir.exists()  # the lock file lies beside the folder, not in it


def test_the_grid_refuses_a_run_another_command_trains(tmp_path):
    from segmime_jax.commands import acdc
    from segmime_jax.paper import grid
    from segmime_jax.paper.grid import training as grid_training

    config = acdc.parse_args(["--losses", "ce,dsc", "--out", str(tmp_path)])
    runs = grid.grid_runs(config, model="enet", num_classes=4)
    runs[1].directory.mkdir(parents=True)
    (runs[1].directory / "metrics.jsonl").write_text("partial\n")  # would be "restart": cleared and retrained
    with RunLock(runs[1].directory), pytest.raises(RunInUseError, match="adam-dsc-seed0 is being trained"):
        grid_training.train_grid(runs, None, ("ce", "dsc"), mode="sequential", overwrite=False, model="enet", log=print)
    assert (runs[1].directory / "metrics.jsonl").read_text() == "partial\n"
    assert not runs[0].directory.exists()  # refused while planning, before any run trained
