"""Input pipeline: fixed-shape, padded, device-resident batches of slices.

A batch (:data:`Batch`) is a dict of device arrays:

- ``"image"``: float32 ``(B, H, W, 1)`` in [0, 1] (the stored uint8 divided by 255, on the device);
- ``"label"``: int32 ``(B, H, W)``;
- ``"mask"``: bool ``(B,)``, False on padding;
- ``"volume_id"``, ``"slice_index"``: int32 ``(B,)``, -1 on padding.

Every batch has the same shape: the last, partial batch is padded with zero images and labels and a False
mask (pass the mask to the losses/metrics). Images travel to the device as uint8 (4× less traffic than
float32) and are converted there. ``prefetch`` batches are kept in flight with :func:`jax.device_put`
(asynchronous), so transfers overlap the training step.

``sharding`` (e.g. ``NamedSharding(mesh, PartitionSpec("data"))``) places every array of a batch with the
batch axis split over devices; a batch whose size the devices do not divide (a trimmed last batch) is
replicated instead. In a multi-process run each process reads, decodes and sends only the rows of each global
batch that its own devices hold (:mod:`segmime_jax.data.placement`); the epoch order, derived from
``(seed, epoch)``, is the same in every process.

Small datasets can live on the device: ``to_device(dataset)`` returns a :class:`DeviceDataset` (uint8,
replicated over the sharding's devices) that :func:`train_batches` and :func:`eval_batches` accept in
place of a :class:`SliceDataset`; batches are then gathered on the device by index and only the indices
cross the host-device boundary.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from segmime_jax.data.dataset import SliceDataset, VolumeInfo
from segmime_jax.data.placement import fitting, place_blocks

Batch = dict[str, jax.Array]

BATCH_KEYS = ("image", "label", "mask", "volume_id", "slice_index")
#: What :func:`train_batches` does with the last, partial batch of an epoch.
LAST_BATCH = ("pad", "trim", "drop")


@dataclass(frozen=True, eq=False)
class DeviceDataset:
    """A :class:`SliceDataset` whose uint8 images and labels are held on the device(s).

    Metadata (volumes, slice positions, class names) stays on the host in ``host``.
    """

    host: SliceDataset
    images: jax.Array
    labels: jax.Array
    sharding: jax.sharding.Sharding | None

    @property
    def volumes(self) -> tuple[VolumeInfo, ...]:
        return self.host.volumes

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.host.class_names

    @property
    def num_classes(self) -> int:
        return self.host.num_classes

    @property
    def image_size(self) -> tuple[int, int]:
        return self.host.image_size

    def __len__(self) -> int:
        return len(self.host)

    def slices_of(self, volume_id: int) -> np.ndarray:
        return self.host.slices_of(volume_id)


AnyDataset = SliceDataset | DeviceDataset


def _replicated(sharding: jax.sharding.Sharding | None) -> jax.sharding.Sharding | None:
    if sharding is None:
        return None
    if isinstance(sharding, jax.sharding.NamedSharding):
        return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
    devices = sorted(sharding.device_set, key=lambda d: d.id)
    if len(devices) == 1:
        return jax.sharding.SingleDeviceSharding(devices[0])
    mesh = jax.sharding.Mesh(np.array(devices), ("devices",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def to_device(dataset: SliceDataset, *, sharding: jax.sharding.Sharding | None = None) -> DeviceDataset:
    """Copy ``dataset``'s images and labels (uint8) to the device(s); ``sharding`` is the batch sharding
    later batches will use (the data itself is replicated on each of its devices)."""
    if isinstance(dataset, DeviceDataset):
        return dataset
    placement = _replicated(sharding)
    images = jax.device_put(dataset.images, placement) if placement is not None else jax.device_put(dataset.images)
    labels = jax.device_put(dataset.labels, placement) if placement is not None else jax.device_put(dataset.labels)
    return DeviceDataset(host=dataset, images=images, labels=labels, sharding=sharding)


def num_batches(dataset: AnyDataset, batch_size: int, last_batch: str = "pad") -> int:
    """Number of batches :func:`train_batches` yields per epoch."""
    _check_batch_size(batch_size)
    if last_batch == "drop":
        return len(dataset) // batch_size
    return math.ceil(len(dataset) / batch_size)


def _check_batch_size(batch_size: int) -> None:
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


@jax.jit
def _finalize(image: jax.Array, label: jax.Array) -> tuple[jax.Array, jax.Array]:
    return (image.astype(jnp.float32) / 255.0)[..., None], label.astype(jnp.int32)


@jax.jit
def _gather(images: jax.Array, labels: jax.Array, index: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    image = jnp.where(valid[..., None, None], jnp.take(images, index, axis=0, mode="clip"), 0)
    label = jnp.where(valid[..., None, None], jnp.take(labels, index, axis=0, mode="clip"), 0)
    return (image.astype(jnp.float32) / 255.0)[..., None], label.astype(jnp.int32)


def _make_batch(
    dataset: AnyDataset, chunks: Sequence[np.ndarray], batch_size: int, sharding: jax.sharding.Sharding | None
) -> Batch:
    """One batch of ``batch_size`` rows per chunk of dataset positions: ``(B, ...)`` for one chunk given as an
    array, ``(R, B, ...)`` for a list of R chunks (one per run); rows past a chunk's end are padding."""
    host = dataset.host if isinstance(dataset, DeviceDataset) else dataset
    grid = [chunks] if isinstance(chunks, np.ndarray) else list(chunks)
    mask = np.stack([np.arange(batch_size) < len(chunk) for chunk in grid])
    padded = np.zeros(mask.shape, dtype=np.int32)
    for row, chunk in zip(padded, grid, strict=True):
        row[: len(chunk)] = chunk
    if isinstance(chunks, np.ndarray):
        mask, padded = mask[0], padded[0]
    sharding = fitting(sharding, batch_size, axis=padded.ndim - 1)
    volume_id = np.where(mask, host.volume_ids[padded], -1).astype(np.int32)
    slice_index = np.where(mask, host.slice_indices[padded], -1).astype(np.int32)
    if isinstance(dataset, DeviceDataset):
        # Gather with replicated indices (unambiguous under explicit and automatic sharding alike), then
        # split the batch over the devices: a local slice of replicated data, no communication.
        placement = dataset.images.sharding
        image, label = _gather(
            dataset.images, dataset.labels, jax.device_put(padded, placement), jax.device_put(mask, placement)
        )
        if sharding is not None:
            image, label = jax.device_put(image, sharding), jax.device_put(label, sharding)
    else:
        # Each process reads only the slices its own devices hold (place_blocks): the rows of its runs' batches.
        def read(images: np.ndarray) -> Callable[[tuple[slice, ...]], np.ndarray]:
            def block(where: tuple[slice, ...]) -> np.ndarray:
                index, real = padded[where[: padded.ndim]], mask[where[: padded.ndim]]
                out = np.zeros((*index.shape, *images.shape[1:]), np.uint8)
                out[real] = images[index[real]]
                return out

            return block

        shape = (*padded.shape, *host.image_size)
        image, label = _finalize(
            place_blocks(shape, sharding, read(host.images)), place_blocks(shape, sharding, read(host.labels))
        )
    ids = (mask, volume_id, slice_index)
    mask, volume_id, slice_index = (place_blocks(x.shape, sharding, lambda where, x=x: x[where]) for x in ids)
    return {"image": image, "label": label, "mask": mask, "volume_id": volume_id, "slice_index": slice_index}


def _prefetch(items: Iterable, size: int) -> Iterator:
    """Keep up to ``size`` items (whose device transfers are already dispatched) ahead of the consumer."""
    queue: collections.deque = collections.deque()
    iterator = iter(items)
    for item in iterator:
        queue.append(item)
        if len(queue) > max(size, 0):
            yield queue.popleft()
    while queue:
        yield queue.popleft()


def epoch_order(num_items: int, *, seed: int, epoch: int) -> np.ndarray:
    """The shuffled slice order of one epoch: ``numpy.random.default_rng([seed, epoch]).permutation``."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(num_items)


def train_batches(
    dataset: AnyDataset,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    sharding: jax.sharding.Sharding | None = None,
    prefetch: int = 2,
    last_batch: str = "pad",
) -> Iterator[Batch]:
    """One epoch of shuffled batches (same order for the same ``(seed, epoch)``).

    Every slice appears exactly once. The last, partial batch is padded to ``batch_size`` (mask False on the
    padding: ``last_batch="pad"``), holds only its real slices (``"trim"``: a smaller batch, replicated when
    the devices do not divide it) or is left out (``"drop"``).
    """
    return run_train_batches(
        dataset, batch_size, seeds=seed, epoch=epoch, sharding=sharding, prefetch=prefetch, last_batch=last_batch
    )


def run_train_batches(
    dataset: AnyDataset,
    batch_size: int,
    *,
    seeds: int | Sequence[int],
    epoch: int,
    sharding: jax.sharding.Sharding | None = None,
    prefetch: int = 2,
    last_batch: str = "pad",
) -> Iterator[Batch]:
    """One epoch of shuffled batches for one run (``seeds`` an int: ``(B, ...)`` batches) or for each of R runs
    trained together (``seeds`` a list: ``(R, B, ...)``, entry r in the order of ``seeds[r]``).

    Args:
      dataset: the slices (a :class:`DeviceDataset`, or host slices).
      batch_size: slices per batch (the last one as ``last_batch`` says: see :func:`train_batches`).
      seeds: the run's seed, or the R runs' seeds; with ``epoch``, a seed fixes the order (:func:`epoch_order`).
      epoch: the epoch.
      sharding: the batches' placement, e.g. ``NamedSharding(mesh, P('runs', 'data'))`` for R runs (a trimmed
        last batch that the devices of its batch axis do not divide keeps that axis whole).
      prefetch: batches kept in flight.
      last_batch: ``"pad"``, ``"trim"`` or ``"drop"``, as for :func:`train_batches`.

    Returns:
      An iterator of batches.
    """
    _check_batch_size(batch_size)
    if last_batch not in LAST_BATCH:
        raise ValueError(f"last_batch must be one of {LAST_BATCH}, got {last_batch!r}")
    orders = [epoch_order(len(dataset), seed=seed, epoch=epoch) for seed in np.atleast_1d(seeds)]
    starts = list(range(0, len(dataset), batch_size))
    if starts and len(dataset) - starts[-1] < batch_size and last_batch == "drop":
        starts.pop()

    def batch(start: int) -> Batch:
        chunks = [order[start : start + batch_size] for order in orders]
        size = len(chunks[0]) if last_batch == "trim" else batch_size
        return _make_batch(dataset, chunks[0] if np.ndim(seeds) == 0 else chunks, size, sharding)

    return _prefetch((batch(start) for start in starts), prefetch)


def eval_batches(
    dataset: AnyDataset, batch_size: int, *, sharding: jax.sharding.Sharding | None = None, prefetch: int = 2
) -> Iterator[tuple[np.ndarray, Batch]]:
    """Every slice once, volume after volume (each volume's slices in :meth:`SliceDataset.slices_of` order),
    packed into fixed-shape batches: ``(index, batch)`` with ``index`` the dataset positions of the batch's
    real slices (host int array, the padding excluded).

    A batch may hold the end of one volume and the start of the next: per-slice outputs are summed per volume
    by the caller (``dataset.volume_ids[index]``), so no batch is mostly padding when volumes are short.
    """
    _check_batch_size(batch_size)
    order = evaluation_order(dataset)
    chunks = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    return _prefetch(((chunk, _make_batch(dataset, chunk, batch_size, sharding)) for chunk in chunks), prefetch)


def evaluation_order(dataset: AnyDataset) -> np.ndarray:
    """The dataset positions of all slices, volume after volume, in the order :func:`eval_batches` yields them."""
    parts = [np.asarray(dataset.slices_of(info.volume_id)) for info in dataset.volumes]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)
