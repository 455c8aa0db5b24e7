"""Several processes on loopback: 2 processes x 2 fake CPU devices (gloo collectives) train exactly as 1 process
x 4 devices; a killed process stops the other within a bounded time, and resuming both ends as the
uninterrupted run.

SGD, as in test_train_sharding.py: Adam's first updates, lr·g/(|g| + eps), turn the all-reduce's rounding of
near-zero gradients into ±lr steps.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from segmime_jax.distributed import DistributedConfig

TESTS = pathlib.Path(__file__).resolve().parent

WORKER = textwrap.dedent("""
    import dataclasses, json, os, sys
    tests, out, port, pid, nproc, kill_after, resume, runs = sys.argv[1:9]
    sys.path.insert(0, tests)
    import helpers  # noqa: F401  (persistent compilation cache, float32 defaults)
    from segmime_jax.distributed import DistributedConfig, initialize
    if int(nproc) > 1:
        initialize(DistributedConfig(coordinator=f"127.0.0.1:{port}", num_processes=int(nproc),
                                     process_id=int(pid), init_timeout_s=60, heartbeat_timeout_s=5))
    import jax, numpy as np
    from flax import nnx
    from train_support import tiny_factory, tiny_splits
    from segmime_jax.train import TrainConfig, TrainState, train_and_evaluate, train_runs
    from segmime_jax.train import engine
    from segmime_jax.train.checkpoint import CheckpointStore

    if int(kill_after):  # die in the middle of an epoch, after that many steps
        checked, steps = engine._account, []
        def dying(*args, **kwargs):
            steps.append(1)
            if len(steps) == int(kill_after):
                os._exit(9)
            return checked(*args, **kwargs)
        engine._account = dying
    # 14 training slices, batch 8: a batch split over the 4 devices and a trimmed one of 6 (replicated)
    data = tiny_splits(train_volumes=7, slices=2)
    config = TrainConfig(loss="1*ce+1*dsc", optimizer="sgd", learning_rate=0.1, epochs=3, batch_size=8,
                         eval_batch_size=4, progress=False, write_predictions=False, augment=True,
                         data_on_device=True)
    if int(runs):  # that many runs (seeds 0, 1, ...), whole runs to devices: one per process with one device each
        configs = [dataclasses.replace(config, seed=seed) for seed in range(int(runs))]
        run_dirs = [os.path.join(out, f"run{seed}") for seed in range(int(runs))]
        results = train_runs(configs, data, run_dirs, model_factory=tiny_factory, resume=resume == "1")
    else:
        configs, run_dirs = [config], [os.path.join(out, "run")]
        results = [train_and_evaluate(config, data, run_dirs[0], model_factory=tiny_factory, resume=resume == "1")]
    template = TrainState.create(tiny_factory(3, rngs=nnx.Rngs(0)), config.build_optimizer())
    summaries = []
    for result, run_dir in zip(results, run_dirs):
        with CheckpointStore(os.path.join(run_dir, "checkpoints")) as store:
            _, tree, _ = store.restore(template.checkpoint_tree())
        summaries.append({
            "devices": jax.device_count(),
            "processes": jax.process_count(),
            "history": [{k: h[k] for k in ("train_loss", "val_loss", "val_dsc", "val_dsc_fg")} for h in result.history],
            "test_dsc": result.test_dsc.tolist(),
            "params": [np.asarray(x).ravel().tolist() for x in jax.tree.leaves(tree["params"])],
            "files": sorted(os.listdir(run_dir)),
        })
    if jax.process_index() == 0:
        with open(os.path.join(out, "summary.json"), "w") as handle:
            json.dump(summaries if int(runs) else summaries[0], handle)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(
    tmp: pathlib.Path,
    out: pathlib.Path,
    nproc: int,
    *,
    kill_after: int = 0,
    resume: bool = False,
    runs: int = 0,
    devices: int = 4,
):
    """``nproc`` workers sharing ``devices`` CPU devices; ``runs`` > 0: ``train_runs`` of that many seeds."""
    script = tmp / "worker.py"
    script.write_text(WORKER)
    devices = devices // nproc
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    port = _free_port()
    return [
        subprocess.Popen(
            [sys.executable, str(script), str(TESTS), str(out), str(port), str(pid), str(nproc), str(kill_after * pid)]
            + ["1" if resume else "0", str(runs)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for pid in range(nproc)
    ]


def _finish(procs, timeout: float = 600) -> list[tuple[int, str]]:
    results = []
    for proc in procs:
        _, err = proc.communicate(timeout=timeout)
        results.append((proc.returncode, err))
    return results


def _summary(out: pathlib.Path) -> dict:
    return json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("single")
    [(code, err)] = _finish(_launch(tmp, tmp, 1))
    assert code == 0, err[-3000:]
    return _summary(tmp)


def _assert_same_run(multi: dict, single: dict, *, devices: tuple[int, int] = (4, 4), atol: float = 0.0) -> None:
    """``multi`` (2 processes) trained as ``single`` (1 process): losses within 1e-5, metrics within ``atol``."""
    assert (multi["processes"], single["processes"]) == (2, 1)
    assert (multi["devices"], single["devices"]) == devices
    for a, b in zip(multi["history"], single["history"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_dsc"] == pytest.approx(b["val_dsc"], abs=atol)
    np.testing.assert_allclose(multi["test_dsc"], single["test_dsc"], atol=atol, rtol=0)
    for a, b in zip(multi["params"], single["params"], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def test_two_processes_train_as_one(tmp_path, single):
    results = _finish(_launch(tmp_path, tmp_path, 2))
    for pid, (code, err) in enumerate(results):
        assert code == 0, f"process {pid}: {err[-3000:]}"
    multi = _summary(tmp_path)
    _assert_same_run(multi, single)
    # one set of outputs, written by process 0 (TensorBoard events too, when tensorboardX is installed)
    events = [name for name in multi["files"] if name.startswith("events.out.tfevents")]
    assert len(events) <= 1
    assert sorted(set(multi["files"]) - set(events)) == [
        "checkpoints",
        "examples.npz",
        "metrics.jsonl",
        "result.json",
        "test_metrics.csv",
    ]
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 3


@pytest.mark.slow
def test_a_killed_process_stops_the_other_and_both_resume(tmp_path, single):
    # process 1 dies in epoch 2 (after its 3rd step); process 0 must not wait for it forever
    procs = _launch(tmp_path, tmp_path, 2, kill_after=3)
    procs[1].wait(timeout=600)
    died = time.monotonic()
    [(code, err)] = _finish(procs[:1], timeout=120)
    waited = time.monotonic() - died
    assert procs[1].returncode == 9
    assert code != 0, "the surviving process exited cleanly"
    assert waited < 60, f"the surviving process took {waited:.0f} s to stop"
    assert not (tmp_path / "summary.json").exists()
    results = _finish(_launch(tmp_path, tmp_path, 2, resume=True))
    for pid, (code, err) in enumerate(results):
        assert code == 0, f"process {pid} (resumed): {err[-3000:]}"
    _assert_same_run(_summary(tmp_path), single)


@pytest.fixture(scope="module")
def single_runs(tmp_path_factory):
    """Two runs (seeds 0 and 1) one after the other in one process with one device."""
    tmp = tmp_path_factory.mktemp("single_runs")
    [(code, err)] = _finish(_launch(tmp, tmp, 1, runs=2, devices=1))
    assert code == 0, err[-3000:]
    return _summary(tmp)


def _assert_same_runs(out: pathlib.Path, single: list[dict]) -> None:
    multi = _summary(out)
    assert len(multi) == len(single) == 2
    for a, b in zip(multi, single, strict=True):
        _assert_same_run(a, b, devices=(2, 1), atol=1e-5)


@pytest.mark.slow
def test_runs_over_two_processes_train_as_in_one(tmp_path, single_runs):
    # 2 processes x 1 device, 2 runs: `auto` puts one whole run on each process's device
    results = _finish(_launch(tmp_path, tmp_path, 2, runs=2, devices=2))
    for pid, (code, err) in enumerate(results):
        assert code == 0, f"process {pid}: {err[-3000:]}"
    _assert_same_runs(tmp_path, single_runs)


@pytest.mark.slow
def test_a_killed_process_stops_the_runs_of_the_other_and_both_resume(tmp_path, single_runs):
    procs = _launch(tmp_path, tmp_path, 2, kill_after=3, runs=2, devices=2)
    procs[1].wait(timeout=600)
    died = time.monotonic()
    [(code, err)] = _finish(procs[:1], timeout=120)
    assert procs[1].returncode == 9
    assert code != 0, "the surviving process exited cleanly"
    assert time.monotonic() - died < 60
    results = _finish(_launch(tmp_path, tmp_path, 2, resume=True, runs=2, devices=2))
    for pid, (code, err) in enumerate(results):
        assert code == 0, f"process {pid} (resumed): {err[-3000:]}"
    _assert_same_runs(tmp_path, single_runs)


def test_launch_options_are_checked():
    with pytest.raises(ValueError, match="needs all of"):
        DistributedConfig(coordinator="localhost:1234")
    with pytest.raises(ValueError, match="HOST:PORT"):
        DistributedConfig(coordinator="localhost", num_processes=2, process_id=0)
    with pytest.raises(ValueError, match=r"process-id must be in \[0, 2\)"):
        DistributedConfig(coordinator="localhost:1234", num_processes=2, process_id=2)
    with pytest.raises(ValueError, match="--distributed off"):
        DistributedConfig(distributed="off", coordinator="localhost:1234", num_processes=2, process_id=0)
    assert DistributedConfig(coordinator="[::1]:80", num_processes=1, process_id=0).manual


PROBE = textwrap.dedent("""
    import sys
    from segmime_jax.distributed import DistributedConfig, initialize
    port, n, pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    initialize(DistributedConfig(coordinator=f"127.0.0.1:{port}", num_processes=n, process_id=pid,
                                 init_timeout_s=3, heartbeat_timeout_s=5))
    print("joined")
""")


def _probe(tmp: pathlib.Path, port: int, n: int, pid: int) -> subprocess.Popen:
    script = tmp / "probe.py"
    script.write_text(PROBE)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.Popen(
        [sys.executable, str(script), str(port), str(n), str(pid)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_misconfigured_launches_end_with_an_error(tmp_path):
    # nobody listens at the coordinator's address: a clear error after the start-up timeout
    start = time.monotonic()
    [(code, err)] = _finish([_probe(tmp_path, _free_port(), 2, 1)], timeout=60)
    assert code != 0 and "ConnectionError: the coordinator 127.0.0.1:" in err and "did not answer within 3 s" in err
    assert time.monotonic() - start < 30
    # process counts that disagree
    port = _free_port()
    first = _probe(tmp_path, port, 2, 0)
    time.sleep(0.5)
    [(code, err)] = _finish([_probe(tmp_path, port, 3, 1)], timeout=60)
    first.kill()
    assert code != 0 and "--num-processes 3, but the coordinator at 127.0.0.1" in err and "for 2 processes" in err
