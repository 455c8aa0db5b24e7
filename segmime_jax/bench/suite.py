"""The benchmark cases: a compiled train step, forward-only inference, and a whole epoch with its pipeline.

One :class:`BenchCase` is a model, an image size, a global batch size, a precision and a device count.
:func:`run_case` builds the model and the very train step the training loop uses
(:func:`segmime_jax.train.make_train_step`: softmax, loss, gradients, optax update, BatchNorm statistics,
state donated, data-parallel over a ``'data'`` mesh) and measures:

- compile time (lowering + XLA compilation of the train step);
- milliseconds per train step (min / median / max over ``repeats`` timed calls after ``warmup`` calls, each
  call waited for with ``block_until_ready``) and images/s at the median;
- forward-only inference images/s (eval mode, argmax labels out);
- XLA's FLOP count of one train step and of one forward pass (cost analysis of the *unpartitioned*
  program, i.e. the global batch) and the FLOP/s achieved at the median time;
- memory: XLA's planned bytes for the train step (arguments + outputs + temporaries − donated buffers), and
  the device's ``peak_bytes_in_use`` where the backend reports it (a process-wide running maximum);
- what XLA made of the step (:mod:`segmime_jax.bench.program_audit`): kernels per step, op mix, library
  custom calls, host transfers, and whether the whole state is donated;
- optionally, a profile of a few steps (:mod:`segmime_jax.bench.profile`): time per XLA op and category and
  the fraction of the step the device was busy, and the optimised HLO text of the step.

:func:`run_epoch` times one training epoch through the real input pipeline
(:func:`segmime_jax.data.train_batches`) on in-memory random slices, against the same number of steps on one
pre-placed batch, to give the input pipeline's share of the epoch time.

Images are random: the time of a dense convolutional network does not depend on pixel values.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from segmime_jax.atomic_files import write_text_atomic
from segmime_jax.bench.device_info import compiled_memory_bytes, peak_memory_bytes
from segmime_jax.bench.profile import profile_steps
from segmime_jax.bench.program_audit import audit_compiled
from segmime_jax.bench.timing import TimingStats, time_call
from segmime_jax.losses import LossParams, loss_from_spec
from segmime_jax.models import build_model
from segmime_jax.models.analysis import cpu_lowered_flops, flops_from_cost_analysis
from segmime_jax.train import TrainState, make_mesh, make_optimizer, make_train_step
from segmime_jax.train.config import PRECISIONS
from segmime_jax.train.sharding import replicate, shard_batch
from segmime_jax.train.step import probabilities, train_step_fn


@dataclasses.dataclass(frozen=True)
class BenchCase:
    """One measured configuration. ``batch_size`` is the global batch, split over ``num_devices``."""

    model: str
    num_classes: int
    size: int
    batch_size: int
    precision: str = "float32"
    num_devices: int = 1
    loss: str = "1*ce+1*dsc"
    optimizer: str = "adam"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}")
        if self.batch_size % self.num_devices:
            raise ValueError(f"batch size {self.batch_size} does not split over {self.num_devices} devices")

    @property
    def label(self) -> str:
        return f"{self.model} {self.size}x{self.size} b{self.batch_size} {self.precision} {self.num_devices}dev"

    @property
    def slug(self) -> str:
        """The label as a file name."""
        return self.label.replace(" ", "_")


@dataclasses.dataclass
class Setup:
    """A compiled train step with its (current) state and one batch, ready to be called.

    The step donates its state: :meth:`step` replaces ``state`` with the new one after each call.
    """

    case: BenchCase
    state: TrainState
    batch: dict[str, jax.Array]
    compiled: Any  # the jax.stages.Compiled train step
    compile_s: float
    mesh: jax.sharding.Mesh
    flops: float | None  # of the global (unpartitioned) program
    key: jax.Array
    flops_source: str | None = None  # see flops_with_fallback
    loss_params: LossParams | None = None  # the case's loss, as the step's data argument

    def step(self, batch: dict[str, jax.Array] | None = None) -> dict[str, jax.Array]:
        """One train step on ``batch`` (default: the fixed batch); returns its metrics (not waited for)."""
        self.state, metrics = self.compiled(
            self.state, self.batch if batch is None else batch, self.key, self.loss_params
        )
        return metrics

    def step_outputs(self) -> tuple[dict[str, jax.Array], TrainState]:
        """One train step on the fixed batch; returns everything it produced (metrics and the new state), for
        timing calls that wait for the whole step, optimiser update included."""
        metrics = self.step()
        return metrics, self.state


def random_batch(case: BenchCase, seed: int = 0) -> dict[str, np.ndarray]:
    """A host batch in the pipeline's layout: float32 images in [0, 1], int32 labels, all-True mask."""
    rng = np.random.default_rng(seed)
    shape = (case.batch_size, case.size, case.size)
    return {
        "image": rng.random(shape + (1,), dtype=np.float32),
        "label": rng.integers(0, case.num_classes, size=shape, dtype=np.int32),
        "mask": np.ones((case.batch_size,), dtype=bool),
        "volume_id": np.zeros((case.batch_size,), dtype=np.int32),
        "slice_index": np.arange(case.batch_size, dtype=np.int32),
    }


def _flops(lowered: Any) -> float | None:
    """XLA's FLOP estimate of a lowered (not yet partitioned: global batch) program, where available."""
    try:
        return flops_from_cost_analysis(lowered.cost_analysis())
    except (RuntimeError, NotImplementedError, AttributeError):
        return None


def flops_with_fallback(lowered: Any, fn: Any, *args: Any) -> tuple[float | None, str | None]:
    """``(FLOPs, source)`` of ``lowered`` (``jax.jit(fn)`` lowered on ``args``): its own cost analysis where the
    backend gives one (``"device lowering"``), else the same function lowered for the CPU on abstract copies of
    ``args`` (``"cpu lowering"``; nothing is compiled or run). Backends reached through the PJRT C API, the CUDA
    plugin among them, give no cost analysis of a lowered program, and XLA:GPU's analysis of the compiled one
    counts cuDNN convolutions (custom calls) as no FLOPs."""
    flops = _flops(lowered)
    if flops:  # None, or 0.0 from an analysis without a "flops" entry: try the CPU
        return flops, "device lowering"
    flops = cpu_lowered_flops(fn, *args)
    return flops, None if flops is None else "cpu lowering"


def build_setup(case: BenchCase, *, seed: int = 0) -> Setup:
    """Model, optimiser, replicated state, sharded batch and the compiled train step of ``case``."""
    model = build_model(case.model, case.num_classes, rngs=nnx.Rngs(seed), dtype=PRECISIONS[case.precision])
    tx = make_optimizer(case.optimizer)
    mesh = make_mesh(case.num_devices, batch_sizes=(case.batch_size,))
    state = replicate(TrainState.create(model, tx), mesh)
    batch = shard_batch(random_batch(case, seed), mesh)
    loss, loss_params = loss_from_spec(case.loss, case.num_classes)
    loss_params = replicate(loss_params, mesh)
    step = make_train_step(tx, loss, case.num_classes, mesh=mesh)
    key = jax.random.key(seed)
    start = time.perf_counter()
    lowered = step.lower(state, batch, key, loss_params)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    flops, source = flops_with_fallback(
        lowered, train_step_fn(tx, loss, case.num_classes), state, batch, key, loss_params
    )
    return Setup(case, state, batch, compiled, compile_s, mesh, flops, key, source, loss_params)


def _forward_fn(graphdef: nnx.GraphDef):
    def predict(params, batch_stats, rngs, image):
        model = nnx.merge(graphdef, params, batch_stats, rngs)
        model.eval()
        return jnp.argmax(probabilities(model, image), axis=-1).astype(jnp.uint8)

    return predict


def run_case(
    setup: Setup,
    *,
    warmup: int = 2,
    repeats: int = 10,
    profile: int = 0,
    profile_dir: pathlib.Path | None = None,
    hlo_dir: pathlib.Path | None = None,
) -> dict[str, Any]:
    """Measure the case of ``setup`` (see the module docstring); returns a JSON-ready dict.

    ``profile`` > 0 traces that many more steps into ``profile_dir/<case slug>`` and adds their summary
    (``"profile"``; a profiler failure is recorded there as ``{"error": ...}``, the timings are kept);
    ``hlo_dir`` receives the optimised HLO text of the train step as ``<case slug>.hlo.txt``.
    """
    case = setup.case
    train: TimingStats = time_call(setup.step_outputs, warmup=warmup, repeats=repeats)
    loss = float(setup.step()["loss"])

    state = setup.state
    args = (state.params, state.batch_stats, state.rngs, setup.batch["image"])
    forward_lowered = jax.jit(_forward_fn(state.graphdef)).lower(*args)
    forward = forward_lowered.compile()
    infer: TimingStats = time_call(lambda: forward(*args), warmup=warmup, repeats=repeats)
    train_flops = setup.flops
    hlo_text = setup.compiled.as_text()
    forward_flops, _ = flops_with_fallback(forward_lowered, _forward_fn(state.graphdef), *args)

    result = {
        "case": dataclasses.asdict(case),
        "label": case.label,
        "compile_s": setup.compile_s,
        "train_step": train.to_json(),
        "train_images_per_s": train.per_second(case.batch_size),
        "inference": infer.to_json(),
        "inference_images_per_s": infer.per_second(case.batch_size),
        "train_step_flops": train_flops,
        "flops_source": setup.flops_source,
        "train_tflops_per_s": None if train_flops is None else train_flops / train.median_s / 1e12,
        "forward_flops": forward_flops,
        "inference_tflops_per_s": None if forward_flops is None else forward_flops / infer.median_s / 1e12,
        "planned_memory_bytes": compiled_memory_bytes(setup.compiled),
        "peak_memory_bytes_so_far": peak_memory_bytes(),
        "final_loss": loss,
        "program": audit_compiled(setup.compiled, donated=setup.state, hlo_text=hlo_text),
    }
    if hlo_dir is not None:
        write_text_atomic(pathlib.Path(hlo_dir) / f"{case.slug}.hlo.txt", hlo_text)
    if profile > 0:
        if profile_dir is None:
            raise ValueError("profile > 0 needs a profile_dir")
        try:
            result["profile"] = profile_steps(
                setup.step_outputs, steps=profile, log_dir=pathlib.Path(profile_dir) / case.slug
            )
            # kernel time against the untraced step (the traced one is slowed down by the profiler)
            result["profile"]["busy_vs_untraced"] = result["profile"]["op_ms_per_step"] / train.median_ms
        except Exception as error:  # noqa: BLE001 - a profiler failure must not lose the timings above
            result["profile"] = {"error": f"{type(error).__name__}: {error}"}
    return result


def synthetic_slices(num_slices: int, size: int, num_classes: int, *, seed: int = 0):
    """An in-memory :class:`~segmime_jax.data.SliceDataset` of random uint8 slices (one volume per slice)."""
    from segmime_jax.data.dataset import SliceDataset, VolumeInfo

    rng = np.random.default_rng(seed)
    volumes = tuple(
        VolumeInfo(
            volume_id=v,
            name=f"random{v:04d}",
            patient=f"random{v:04d}",
            image_path="",
            label_path="",
            original_shape=(size, size, 1),
            affine=np.eye(4),
            spacing=(1.0, 1.0, 1.0),
            num_slices=1,
        )
        for v in range(num_slices)
    )
    return SliceDataset(
        images=rng.integers(0, 256, size=(num_slices, size, size), dtype=np.uint8),
        labels=rng.integers(0, num_classes, size=(num_slices, size, size), dtype=np.uint8),
        volume_ids=np.arange(num_slices, dtype=np.int32),
        slice_indices=np.zeros(num_slices, dtype=np.int32),
        volumes=volumes,
        class_names=("background",) + tuple(f"class{k}" for k in range(1, num_classes)),
    )


def run_epoch(setup: Setup, *, steps: int = 20, seed: int = 0) -> list[dict[str, Any]]:
    """One epoch of ``steps`` batches through the input pipeline, against ``steps`` steps on a fixed batch.

    Two epochs are timed with the compiled step of ``setup``: slices in host memory (batches assembled on the
    host and prefetched with ``jax.device_put``) and slices resident on the device
    (:func:`segmime_jax.data.to_device`, batches gathered there). The pipeline's share is
    ``1 − fixed-batch time / epoch time``.
    """
    from segmime_jax.data.pipeline import to_device, train_batches
    from segmime_jax.train.sharding import batch_sharding

    case = setup.case
    dataset = synthetic_slices(steps * case.batch_size, case.size, case.num_classes, seed=seed)
    sharding = batch_sharding(setup.mesh)
    jax.block_until_ready(setup.step())  # warm-up

    start = time.perf_counter()
    for _ in range(steps):
        metrics = setup.step()
    jax.block_until_ready((setup.state, metrics))
    fixed_s = time.perf_counter() - start

    results = []
    for resident in (False, True):
        source = to_device(dataset, sharding=sharding) if resident else dataset
        # Warm-up: the pipeline's own small jitted functions (uint8 -> float32, on-device gather) compile once.
        jax.block_until_ready(next(train_batches(source, case.batch_size, seed=seed, epoch=1, sharding=sharding)))
        start = time.perf_counter()
        for batch in train_batches(source, case.batch_size, seed=seed, epoch=0, sharding=sharding):
            metrics = setup.step(batch)
        jax.block_until_ready((setup.state, metrics))
        epoch_s = time.perf_counter() - start
        results.append(
            {
                "case": dataclasses.asdict(case),
                "label": case.label,
                "steps": steps,
                "resident": resident,
                "epoch_s": epoch_s,
                "fixed_batch_s": fixed_s,
                "pipeline_share": max(0.0, 1.0 - fixed_s / epoch_s),
                "epoch_images_per_s": steps * case.batch_size / epoch_s,
            }
        )
    return results
