"""On-disk cache of preprocessed datasets: compressed ``.npz`` arrays plus a JSON sidecar, never pickle.

One cache entry is one folder ``<cache_dir>/<dataset>-<root hash>-<key>/`` holding ``slices.npz``
(``images``, ``labels``, ``volume_ids``, ``slice_indices``) and ``meta.json`` (the volumes' records, the
class names and what the key was computed from). The key is a SHA-256 of the dataset name, the cache format
version, the resolved dataset root, the preprocessing options (e.g. working size) and, for every source file,
its path, size and modification time in nanoseconds: touching, replacing or adding a source file, or changing
an option, gives a new key, so a stale entry is never read. When a new entry is stored, older entries of the
same dataset root are deleted.

Entries are written into a temporary folder next to the final one and renamed into place
(:func:`segmime_jax.atomic_files.atomic_directory`), so an error (or an interrupted run) never leaves a
half-written entry; a corrupt entry is ignored, rebuilt and replaced.

Default location (``cache_dir=None``): ``$SEGMIME_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/segmime_jax``,
else ``~/.cache/segmime_jax``. A per-user folder rather than one inside the dataset, because datasets are
often on read-only or shared storage. ``cache_dir=False`` disables caching.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import shutil
import zipfile
from collections.abc import Callable, Iterable, Mapping
from typing import Literal

import numpy as np

from segmime_jax.atomic_files import atomic_directory
from segmime_jax.data.dataset import SliceDataset, VolumeInfo

logger = logging.getLogger(__name__)

#: Bump when the preprocessing or the entry layout changes: old entries then stop matching.
CACHE_FORMAT_VERSION = 1

CacheDir = str | os.PathLike | None | Literal[False]

_ARRAYS = ("images", "labels", "volume_ids", "slice_indices")


def default_cache_dir() -> pathlib.Path:
    """``$SEGMIME_CACHE_DIR``, else ``$XDG_CACHE_HOME/segmime_jax``, else ``~/.cache/segmime_jax``."""
    explicit = os.environ.get("SEGMIME_CACHE_DIR")
    if explicit:
        return pathlib.Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "segmime_jax"


def resolve_cache_dir(cache_dir: CacheDir) -> pathlib.Path | None:
    """The folder to use: ``None`` → :func:`default_cache_dir`, ``False`` → no cache (``None``)."""
    if cache_dir is False:
        return None
    if cache_dir is None:
        return default_cache_dir()
    return pathlib.Path(cache_dir).expanduser()


def file_fingerprints(paths: Iterable[str | os.PathLike]) -> list[list]:
    """``[path, size, mtime_ns]`` of each file (the cache key's view of the source data)."""
    out = []
    for path in paths:
        stat = os.stat(path)
        out.append([os.fspath(path), int(stat.st_size), int(stat.st_mtime_ns)])
    return out


def cache_key(dataset: str, root: str | os.PathLike, options: Mapping, files: Iterable[str | os.PathLike]) -> dict:
    """The JSON-ready description that is hashed into the cache key."""
    return {
        "format": CACHE_FORMAT_VERSION,
        "dataset": dataset,
        "root": os.fspath(pathlib.Path(root).resolve()),
        "options": json.loads(json.dumps(dict(options))),
        "files": file_fingerprints(files),
    }


def _digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _entry_prefix(description: Mapping) -> str:
    return f"{description['dataset']}-{_digest(description['root'])[:10]}-"


def entry_path(cache_dir: pathlib.Path, description: Mapping) -> pathlib.Path:
    """Folder of the cache entry for ``description`` (see :func:`cache_key`)."""
    return cache_dir / (_entry_prefix(description) + _digest(description)[:24])


def _read_entry(path: pathlib.Path, description: Mapping, *, quiet: bool = False) -> SliceDataset | None:
    meta_file, data_file = path / "meta.json", path / "slices.npz"
    if not (meta_file.is_file() and data_file.is_file()):
        return None
    try:
        meta = json.loads(meta_file.read_text())
        if meta.get("key") != json.loads(json.dumps(dict(description))):
            return None
        with np.load(data_file, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in _ARRAYS}
        return SliceDataset(
            **arrays,
            volumes=tuple(VolumeInfo.from_json(v) for v in meta["volumes"]),
            class_names=tuple(meta["class_names"]),
        )
    except Exception as err:  # a corrupt or foreign entry: rebuild it
        if not quiet:
            logger.warning("ignoring unreadable cache entry %s (%s)", path, err)
        return None


def _save_npz(path: pathlib.Path, arrays: Mapping[str, np.ndarray]) -> None:
    """A compressed ``.npz`` (what ``numpy.savez_compressed`` writes, read by ``numpy.load``) with the fastest
    deflate level: the noisy images compress to about the same size at level 1 as at numpy's level 6, in about
    half the time."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as handle:
                np.lib.format.write_array(handle, np.ascontiguousarray(array), allow_pickle=False)


def _write_entry(path: pathlib.Path, description: Mapping, dataset: SliceDataset) -> None:
    """Store ``dataset`` as the entry at ``path`` (whole or not at all; an entry already there, corrupt or one a
    concurrent writer stored, is replaced), then delete the other entries of the same dataset root."""
    with atomic_directory(path, exists="replace") as tmp:
        _save_npz(tmp / "slices.npz", {name: getattr(dataset, name) for name in _ARRAYS})
        meta = {
            "key": dict(description),
            "class_names": list(dataset.class_names),
            "volumes": [v.to_json() for v in dataset.volumes],
            "num_slices": len(dataset),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    prefix = _entry_prefix(description)
    for other in path.parent.iterdir():
        if other.name.startswith(prefix) and other != path and (other / "meta.json").is_file():
            shutil.rmtree(other, ignore_errors=True)


def cached(cache_dir: CacheDir, description: Mapping, build: Callable[[], SliceDataset]) -> SliceDataset:
    """Return the cached dataset for ``description``, or ``build()`` it and store it (atomically)."""
    folder = resolve_cache_dir(cache_dir)
    if folder is None:
        return build()
    path = entry_path(folder, description)
    hit = _read_entry(path, description)
    if hit is not None:
        logger.info("loaded %s from cache %s", description["dataset"], path)
        return hit
    dataset = build()
    try:
        _write_entry(path, description, dataset)
        logger.info("cached %s in %s", description["dataset"], path)
    except OSError as err:  # an unwritable cache must not stop training
        logger.warning("could not write cache entry %s (%s)", path, err)
    return dataset
