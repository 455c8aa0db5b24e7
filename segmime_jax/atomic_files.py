"""Whole-or-nothing writes: a file or a folder is written under a temporary name next to its target, then renamed
into place, so that a reader (or a rerun after a crash) sees all of it or none of it. Three shapes: one file
(:func:`atomic_output`), a whole folder (:func:`atomic_directory`), several files moved into an existing folder
(:func:`atomic_files_into`). Also the JSON writer of the package (:func:`write_json_atomic`, with
:func:`json_ready` for arrays, NaN and dataclasses).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path, PurePath
from typing import Any

import numpy as np


def _process_umask() -> int:
    """The process umask, read without changing it (``os.umask`` can only be read by setting it, which would
    briefly give files that other threads create, e.g. orbax's asynchronous checkpoint writes, mode 0666):
    Linux reports it in ``/proc/self/status``; elsewhere it is read once and cached."""
    global _UMASK
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    if _UMASK is None:
        _UMASK = os.umask(0o022)
        os.umask(_UMASK)
    return _UMASK


_UMASK: int | None = None


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success give it the usual permissions and rename it to
    ``path``, on error delete it: a reader sees the whole file or none.

    ``suffix`` (default: ``path``'s last suffix) ends the temporary name, for writers that infer the format
    from it (e.g. ``".nii.gz"`` for nibabel).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=path.suffix if suffix is None else suffix, dir=path.parent
    )
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_process_umask())  # mkstemp makes 0600 files
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through :func:`atomic_output`."""
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, *, exists: str = "error") -> Iterator[Path]:
    """Yield a new, empty temporary folder next to ``path``; on success it is renamed to ``path``, on error
    deleted with what it holds.

    Args:
      path: the folder to create.
      exists: what happens when ``path`` exists at the end: ``"error"`` (FileExistsError, unless it is an empty
        folder, which is replaced), ``"replace"`` (the old folder is moved aside, ours renamed in, the old one
        deleted), ``"keep"`` (another writer got there first: ours is deleted and theirs kept).
    """
    if exists not in ("error", "replace", "keep"):
        raise ValueError(f"exists must be 'error', 'replace' or 'keep', got {exists!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_process_umask())  # mkdtemp makes it private; the result is an ordinary folder
    try:
        yield tmp
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        try:
            os.rename(tmp, path)
        except OSError:
            if not path.exists() or exists == "error":
                raise FileExistsError(f"{path}: exists and is not an empty folder") from None
            if exists == "replace":
                trash = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
                try:
                    os.rename(path, trash / path.name)
                    os.rename(tmp, path)
                finally:
                    shutil.rmtree(trash, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_files_into(folder: str | os.PathLike, *, stale: Iterable[str] = ()) -> Iterator[Path]:
    """Yield a new, empty staging folder inside ``folder``; on success move every file written into it to
    ``folder``, on error delete it with what it holds and leave ``folder`` as it was.

    For a set of outputs that share a folder with other files (which are left alone): nothing of a failed run
    reaches ``folder``, and the files of a successful one replace those of the same name only once all of them are
    written. Each file is renamed on its own (names in sorted order), so a crash during the moves themselves can
    still leave old and new files side by side; every single file is whole. Files keep the permissions they were
    written with.

    Args:
      folder: where the files go; created (with its parents) if missing.
      stale: names of files in ``folder`` that belong to the same set of outputs but are optional: those that
        were not written into the staging folder this time are deleted after the moves, so that no output of an
        earlier run stays beside the new ones.

    Yields:
      The staging folder: write plain files directly into it (no subfolders).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder))  # same file system: the renames work
    try:
        yield staging
        staged = sorted(staging.iterdir())
        if not all(p.is_file() and not p.is_symlink() for p in staged):
            raise ValueError(f"atomic_files_into moves plain files only; the staging folder holds {staged}")
        for path in staged:
            os.replace(path, folder / path.name)
        for name in set(stale).difference(p.name for p in staged):
            (folder / name).unlink(missing_ok=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def json_ready(value: Any) -> Any:
    """``value`` with arrays (numpy, jax) as nested lists, NaN and infinities as ``None``, numpy scalars as
    Python numbers, paths as strings, tuples as lists and dataclasses as dicts of their fields, recursively."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: json_ready(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    if isinstance(value, PurePath):
        return str(value)
    if hasattr(value, "__array__") and not isinstance(value, str | bytes | np.generic):
        return json_ready(np.asarray(value).tolist())
    if isinstance(value, np.generic):
        return json_ready(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value


def array_from_json(value: Any, dtype: Any = np.float64) -> np.ndarray:
    """Inverse of :func:`json_ready` for numeric arrays: nested lists to an array, ``None`` back to NaN."""

    def fix(v: Any) -> Any:
        if isinstance(v, list):
            return [fix(x) for x in v]
        return np.nan if v is None else v

    return np.asarray(fix(value), dtype=dtype)


def write_json_atomic(path: str | os.PathLike, data: Any, *, indent: int = 1) -> Path:
    """Write ``json_ready(data)`` as JSON indented by ``indent`` spaces, plus a final newline, to ``path`` through
    :func:`atomic_output`. Returns ``path``."""
    return write_text_atomic(path, json.dumps(json_ready(data), indent=indent) + "\n")
