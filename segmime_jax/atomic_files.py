"""Whole-or-nothing file writes: write next to the target, then rename (used by data, train and report)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


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
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix if suffix is None else suffix,
                                dir=path.parent)
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
