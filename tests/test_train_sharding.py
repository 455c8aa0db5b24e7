"""Data parallelism: the same run on 1 and on 8 (fake CPU) devices gives the same numbers.

The comparison uses SGD: with Adam, the first updates are ``lr·g/(|g| + eps)``, so a parameter whose
gradient is ~0 moves by ±lr depending on float rounding of the all-reduce; the runs then differ by more
than rounding although both are correct.
"""

from __future__ import annotations

import textwrap

import jax
import numpy as np
import pytest
from train_support import run_on_fake_devices

from segmime_jax.train import make_mesh
from segmime_jax.train.layout import choose_layout
from segmime_jax.train.sharding import choose_num_devices, shard_batch

SCRIPT = textwrap.dedent("""
    import json, os, sys, tempfile
    sys.path.insert(0, sys.argv[1])
    import helpers  # noqa: F401  (persistent compilation cache, float32 defaults)
    import jax, numpy as np
    from flax import nnx
    from train_support import tiny_factory, tiny_splits
    from segmime_jax.train import TrainConfig, TrainState, train_and_evaluate
    from segmime_jax.train import stack
    from segmime_jax.train.checkpoint import CheckpointStore

    assert jax.device_count() == 8, jax.devices()
    meshes = []  # the meshes the runs really used

    def recording_mesh(*args, **kwargs):
        meshes.append(real_mesh(*args, **kwargs))
        return meshes[-1]

    real_mesh, stack.make_mesh = stack.make_mesh, recording_mesh
    # 12 training slices, batch 8: one full batch split over the devices, one trimmed batch of 4 (replicated)
    data = tiny_splits(train_volumes=4, slices=3)
    out = {}
    for n in (1, 8):
        config = TrainConfig(loss="1*ce+1*dsc", optimizer="sgd", learning_rate=0.1, epochs=2, batch_size=8,
                             eval_batch_size=8, progress=False, write_predictions=False, telemetry=False,
                             num_devices=n, augment=True)
        run_dir = tempfile.mkdtemp()
        result = train_and_evaluate(config, data, run_dir, model_factory=tiny_factory)
        template = TrainState.create(tiny_factory(3, rngs=nnx.Rngs(0)), config.build_optimizer())
        with CheckpointStore(os.path.join(run_dir, "checkpoints")) as store:
            _, tree, _ = store.restore(template.checkpoint_tree())
        out[n] = {
            "history": [{k: h[k] for k in ("train_loss", "val_loss", "val_dsc", "val_dsc_fg")} for h in result.history],
            "test_dsc": result.test_dsc.tolist(),
            "params": [np.asarray(x).ravel().tolist() for x in jax.tree.leaves(tree["params"])],
            "batch_stats": [np.asarray(x).ravel().tolist() for x in jax.tree.leaves(tree["batch_stats"])],
            "mesh": meshes[-1].devices.size,
        }
    print("RESULT" + json.dumps(out))
""")


def test_one_and_eight_devices_agree(tmp_path):
    out = run_on_fake_devices(SCRIPT, tmp_path, timeout=600)
    one, eight = out["1"], out["8"]
    assert one["mesh"] == 1 and eight["mesh"] == 8
    for a, b in zip(one["history"], eight["history"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
        np.testing.assert_allclose(a["val_dsc"], b["val_dsc"], atol=2e-3)  # argmax may flip a pixel
    np.testing.assert_allclose(one["test_dsc"], eight["test_dsc"], atol=2e-3)
    for name in ("params", "batch_stats"):
        for a, b in zip(one[name], eight[name], strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_device_choice_and_batch_placement():
    assert choose_num_devices((8, 16), available=8) == 8
    assert choose_num_devices((6, 16), available=8) == 2
    assert choose_num_devices((5,), available=8) == 5
    mesh = make_mesh(batch_sizes=(4,))
    assert mesh.axis_names == ("runs", "data") and mesh.shape["runs"] == 1
    batch = shard_batch({"x": np.zeros((4, 2), np.float32)}, mesh)
    assert batch["x"].sharding.spec == jax.sharding.PartitionSpec("data")
    with pytest.raises(ValueError, match=r"device\(s\) are available"):
        make_mesh(jax.local_device_count() + 1)


def test_the_layout_auto_picks():
    """(R, D) = (4, 1): one run at a time; (4, 4): one stack, one run per device; (8, 4): two such stacks;
    (2, 8): one stack, each run over 4 devices."""

    def picked(runs, devices):
        layout = choose_layout(runs, devices, backend="gpu", batch_sizes=(8, 8))
        return layout.mode, layout.stacks, layout.meshes

    assert picked(4, 1) == ("sequential", (1, 1, 1, 1), ((1, 1),) * 4)
    assert picked(4, 4) == ("parallel", (4,), ((4, 1),))
    assert picked(8, 4) == ("parallel", (4, 4), ((4, 1), (4, 1)))
    assert picked(2, 8) == ("parallel", (2,), ((2, 4),))
    assert picked(5, 4) == ("parallel", (4, 1), ((4, 1), (1, 4)))
    assert picked(1, 8) == ("sequential", (1,), ((1, 8),))
    assert choose_layout(8, 4, mode="stacked", batch_sizes=(8,)).meshes == ((4, 1),)  # two runs per device
    assert choose_layout(4, 4, mode="sequential").stacks == (1, 1, 1, 1)
    assert choose_layout(8, 4, backend="gpu", batch_sizes=(8,)).describe() == (
        "8 runs, parallel: 2 stacks of 4 x (one run per device, 1 device per run); 8 runs and 4 devices: whole "
        "runs to devices"
    )
    with pytest.raises(ValueError, match="--grid-mode must be one of"):
        choose_layout(2, 1, mode="vmap")
