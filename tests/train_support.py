"""Test-only helpers for the training tests: a tiny network and a tiny in-memory dataset.

ENet's first compilation of a train step takes about a minute on the 2-core CPU machine, so the loop tests
train this two-layer stand-in instead (same interface: ``(num_classes, *, rngs, dtype)``, BatchNorm and
dropout included); the losses, data pipeline, augmentation and metrics are the real ones.
"""

from __future__ import annotations

import json
import os
import pathlib
import struct
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from segmime_jax.data.dataset import DatasetSplits, SliceDataset, VolumeInfo
from segmime_jax.environment import child_process_environment


class TinyNet(nnx.Module):
    """conv3×3 → BatchNorm → ReLU → dropout → conv1×1: logits ``(B, H, W, K)`` in float32."""

    def __init__(self, num_classes: int, *, rngs: nnx.Rngs, dtype=jnp.float32, width: int = 32):
        self.conv1 = nnx.Conv(1, width, (3, 3), dtype=dtype, rngs=rngs)
        self.bn = nnx.BatchNorm(width, momentum=0.9, epsilon=1e-5, dtype=dtype, rngs=rngs)
        self.dropout = nnx.Dropout(0.1, rngs=rngs)
        self.conv2 = nnx.Conv(width, num_classes, (1, 1), dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = nnx.relu(self.bn(self.conv1(x)))
        return self.conv2(self.dropout(h)).astype(jnp.float32)


class ExplodingNet(TinyNet):
    """TinyNet whose logits become NaN from its ``explode_after + 1``-th train-mode forward pass on."""

    def __init__(self, num_classes: int, *, rngs: nnx.Rngs, dtype=jnp.float32, explode_after: int = 2):
        super().__init__(num_classes, rngs=rngs, dtype=dtype)
        self.calls = nnx.BatchStat(jnp.zeros((), jnp.int32))  # train-mode forward passes (a "statistic")
        self.explode_after = explode_after

    def __call__(self, x: jax.Array) -> jax.Array:
        logits = super().__call__(x)
        if not self.bn.use_running_average:
            self.calls[...] = self.calls[...] + 1
        return jnp.where(self.calls[...] > self.explode_after, jnp.nan, logits)


def tiny_factory(num_classes: int, *, rngs: nnx.Rngs, dtype=jnp.float32) -> TinyNet:
    return TinyNet(num_classes, rngs=rngs, dtype=dtype)


def _volume(volume_id: int, name: str, slices: int, size: int) -> VolumeInfo:
    return VolumeInfo(
        volume_id=volume_id,
        name=name,
        patient=name,
        image_path=f"{name}.nii.gz",
        label_path=f"{name}_gt.nii.gz",
        original_shape=(size, size, slices),
        affine=np.eye(4),
        spacing=(1.0, 1.0, 1.0),
        num_slices=slices,
    )


def tiny_dataset(
    volumes: int, slices: int, *, size: int = 32, num_classes: int = 3, seed: int = 0, prefix: str = "vol"
) -> SliceDataset:
    """Slices with a bright disk (class 1), a mid-grey square (class 2, when K = 3) and a noisy background.

    The classes are separable by intensity, so a 3×3 convolution learns them in a few dozen steps.
    """
    rng = np.random.default_rng(seed)
    n = volumes * slices
    images = np.zeros((n, size, size), np.float32)
    labels = np.zeros((n, size, size), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
        radius = rng.integers(size // 8, size // 4)
        labels[i][(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = 1
        if num_classes > 2:
            sy, sx = rng.integers(0, size - size // 3, 2)
            square = (yy >= sy) & (yy < sy + size // 3) & (xx >= sx) & (xx < sx + size // 3) & (labels[i] == 0)
            labels[i][square] = 2
        intensity = np.array([0.1, 0.9, 0.5, 0.7][:num_classes])
        images[i] = intensity[labels[i]] + rng.normal(0, 0.05, (size, size))
    images = np.clip(np.round(np.clip(images, 0, 1) * 255), 0, 255).astype(np.uint8)
    class_names = ("background", "disk", "square", "other")[:num_classes]
    infos = tuple(_volume(v, f"{prefix}{v:02d}", slices, size) for v in range(volumes))
    return SliceDataset(
        images=images,
        labels=labels,
        volume_ids=np.repeat(np.arange(volumes), slices).astype(np.int32),
        slice_indices=np.tile(np.arange(slices), volumes).astype(np.int32),
        volumes=infos,
        class_names=class_names,
    )


def tiny_splits(*, train_volumes: int = 4, slices: int = 3, size: int = 32, num_classes: int = 3) -> DatasetSplits:
    """Train/val/test splits of :func:`tiny_dataset` (different seeds and volume names)."""
    return DatasetSplits(
        train=tiny_dataset(train_volumes, slices, size=size, num_classes=num_classes, seed=1, prefix="train"),
        val=tiny_dataset(2, slices, size=size, num_classes=num_classes, seed=2, prefix="val"),
        test=tiny_dataset(2, slices, size=size, num_classes=num_classes, seed=3, prefix="test"),
        name="tiny",
    )


def read_event_scalars(folder: pathlib.Path) -> dict[str, dict[int, float]]:
    """``{tag: {step: value}}`` of the scalars in a folder's TensorBoard event files, read with tensorboardX's
    protobuf classes from the TFRecord framing (u64 length, u32 CRC, the Event, u32 CRC); files in name order
    (their names start with the second they were opened), a later value of a step replacing an earlier one."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, dict[int, float]] = {}
    for path in sorted(pathlib.Path(folder).glob("events.out.tfevents.*")):
        data, position = path.read_bytes(), 0
        while position < len(data):
            (length,) = struct.unpack("<Q", data[position : position + 8])
            event = event_pb2.Event.FromString(data[position + 12 : position + 12 + length])
            position += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars


def run_on_fake_devices(script: str, folder: pathlib.Path, *, devices: int = 8, timeout: int = 600) -> dict:
    """Run ``script`` in a child Python on ``devices`` fake CPU devices with this checkout's package, the tests'
    folder as its first argument; return the JSON it prints after ``RESULT`` (asserting that it ended well)."""
    flags = f"--xla_force_host_platform_device_count={devices}"
    env = child_process_environment(dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu"))
    path = folder / "run.py"
    path.write_text(script)
    tests = pathlib.Path(__file__).resolve().parent
    proc = subprocess.run(
        [sys.executable, str(path), str(tests)], capture_output=True, text=True, env=env, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT"))
    return json.loads(line[len("RESULT") :])
