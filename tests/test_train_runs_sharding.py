"""Runs over 8 fake CPU devices. One run per device (the 'parallel' layout: 4 runs on 4 devices, 8 runs on 4 as two
stacks, 8 on 8) runs the one-run program, but XLA compiles it inside the shard_map over 'runs' with other float
rounding in places (a last bit of some parameters); several runs per device (the 'stacked' layout: 8 vmapped on
1 device, 4 on 2) and runs over several devices each (2 runs on 8: 4 devices per run) are other float
computations. Every run ends with the parameters and metrics of the run trained alone within 1e-5."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
from train_support import run_on_fake_devices

SCRIPT = textwrap.dedent("""
    import dataclasses, json, os, sys, tempfile
    sys.path.insert(0, sys.argv[1])
    import helpers  # noqa: F401  (persistent compilation cache, float32 defaults)
    import jax, numpy as np
    from flax import nnx
    from train_support import tiny_factory, tiny_splits
    from segmime_jax.train import TrainConfig, TrainState, train_and_evaluate, train_runs
    from segmime_jax.train.checkpoint import CheckpointStore

    assert jax.device_count() == 8, jax.devices()
    data = tiny_splits(train_volumes=4, slices=3, size=16)  # 12 slices: 3 batches of 4
    base = TrainConfig(optimizer="sgd", epochs=2, batch_size=4, eval_batch_size=4, plateau_patience=1,
                       progress=False, write_predictions=False, telemetry=False, num_examples=0)
    runs = [("ce", 0.1, 0), ("dsc", 0.05, 1), ("mime", 0.1, 2), ("nm", 0.2, 0),
            ("ce", 0.3, 1), ("dsc", 0.1, 0), ("mime", 0.02, 1), ("nm", 0.1, 2)]
    configs = [dataclasses.replace(base, loss=l, learning_rate=lr, seed=s) for l, lr, s in runs]
    terms = ("ce", "dsc", "mime", "nm")

    def summary(result, run_dir):
        template = TrainState.create(tiny_factory(3, rngs=nnx.Rngs(0)), result.config.build_optimizer())
        with CheckpointStore(os.path.join(run_dir, "checkpoints")) as store:
            _, tree, _ = store.restore(template.checkpoint_tree())
        return {
            "history": [{k: h[k] for k in ("train_loss", "val_loss", "val_dsc", "learning_rate")}
                        for h in result.history],
            "test_dsc": result.test_dsc.tolist(),
            "params": np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree["params"])]).tolist(),
        }

    out = {"alone": []}
    for config in configs:
        run_dir = tempfile.mkdtemp()
        result = train_and_evaluate(dataclasses.replace(config, num_devices=1), data, run_dir,
                                    model_factory=tiny_factory, loss_terms=terms, log=lambda s: None)
        out["alone"].append(summary(result, run_dir))
    messages = []
    cases = (("parallel 4 on 4", 4, 4, "parallel"), ("parallel 8 on 4", 8, 4, "parallel"),
             ("parallel 8 on 8", 8, 8, "auto"), ("stacked 8 on 1", 8, 1, "stacked"),
             ("stacked 4 on 2", 4, 2, "stacked"), ("parallel 2 on 8", 2, 8, "auto"))
    for name, count, devices, layout in cases:
        dirs = [tempfile.mkdtemp() for _ in range(count)]
        chosen = [dataclasses.replace(c, num_devices=devices) for c in configs[:count]]
        results = train_runs(chosen, data, dirs, layout=layout, model_factory=tiny_factory, loss_terms=terms,
                             log=messages.append)
        out[name] = [summary(r, d) for r, d in zip(results, dirs)]
    out["messages"] = [m for m in messages if ", parallel: " in m or ", stacked: " in m]
    print("RESULT" + json.dumps(out))
""")


@pytest.mark.slow
def test_runs_over_devices_end_as_runs_alone(tmp_path):
    out = run_on_fake_devices(SCRIPT, tmp_path, timeout=900)
    assert out["messages"] == [
        "4 runs, parallel: a stack of 4 x (one run per device, 1 device per run); chosen by --grid-mode parallel",
        "8 runs, parallel: 2 stacks of 4 x (one run per device, 1 device per run); chosen by --grid-mode parallel",
        "8 runs, parallel: a stack of 8 x (one run per device, 1 device per run); 8 runs and 8 devices: whole runs "
        "to devices",
        "8 runs, stacked: a stack of 8 x (8 runs per device, 1 device per run); chosen by --grid-mode stacked",
        "4 runs, stacked: a stack of 4 x (2 runs per device, 1 device per run); chosen by --grid-mode stacked",
        "2 runs, parallel: a stack of 2 x (one run per device, 4 devices per run); 2 runs and 8 devices: whole runs "
        "to devices",
    ]
    for name in (
        "parallel 4 on 4",
        "parallel 8 on 4",
        "parallel 8 on 8",
        "stacked 8 on 1",
        "stacked 4 on 2",
        "parallel 2 on 8",
    ):
        for alone, stacked in zip(out["alone"], out[name], strict=False):
            for a, s in zip(alone["history"], stacked["history"], strict=True):
                assert a["learning_rate"] == s["learning_rate"]
                for key in ("train_loss", "val_loss", "val_dsc"):
                    np.testing.assert_allclose(a[key], s[key], rtol=1e-5, atol=1e-5, err_msg=f"{name} {key}")
            np.testing.assert_allclose(alone["test_dsc"], stacked["test_dsc"], atol=1e-5, err_msg=name)
            np.testing.assert_allclose(alone["params"], stacked["params"], rtol=1e-5, atol=1e-6, err_msg=name)
