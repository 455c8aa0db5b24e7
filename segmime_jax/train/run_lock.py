"""One writer per run folder: an OS file lock held while a run trains.

Two commands writing into the same ``--out`` at once would otherwise both train a run into one folder
(``metrics.jsonl`` listing epochs 1, 2, 1, 2; two TensorBoard event files). :class:`RunLock` takes an exclusive
``fcntl.flock`` on ``<parent>/.<run name>.lock`` (beside the run folder, so that the folder holds only the run's
own files) for as long as the run trains. The operating system releases it when the process ends, however it
ends, so a run killed with ``kill -9`` leaves no stale lock. A second process gets :class:`RunInUseError`, one
line naming the holder's pid and host, before it touches anything of the run.
"""

from __future__ import annotations

import fcntl
import os
import pathlib
import socket
from typing import IO


class RunInUseError(FileExistsError):
    """Another process is training this run (it holds the run's lock)."""


def lock_path(run_dir: pathlib.Path) -> pathlib.Path:
    """The lock file of ``run_dir``: ``<parent>/.<name>.lock``."""
    run_dir = pathlib.Path(run_dir)
    return run_dir.parent / f".{run_dir.name}.lock"


class RunLock:
    """The exclusive lock of one run folder (see the module docstring).

    Example:
      >>> import tempfile
      >>> folder = pathlib.Path(tempfile.mkdtemp()) / "adam-dsc-seed0"
      >>> with RunLock(folder):
      ...     try:
      ...         RunLock(folder).acquire()  # a second writer, even in the same process
      ...     except RunInUseError as error:
      ...         print(str(error).split(" (")[0].endswith("adam-dsc-seed0 is being trained by another process"))
      True
      >>> RunLock(folder).acquire().release()  # given back
    """

    def __init__(self, run_dir: pathlib.Path):
        self.run_dir = pathlib.Path(run_dir)
        self.path = lock_path(self.run_dir)
        self._file: IO[str] | None = None

    def acquire(self) -> RunLock:
        """Take the lock, or raise :class:`RunInUseError` naming the process that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        file = open(self.path, "a+")  # noqa: SIM115  (held open for as long as the lock)
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip() or "unknown"
            file.close()
            raise RunInUseError(
                f"{self.run_dir} is being trained by another process ({holder}); wait for it to end, or choose "
                "another --out"
            ) from None
        file.seek(0)
        file.truncate()
        file.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        file.flush()
        self._file = file
        return self

    def release(self) -> None:
        """Give the lock back (closing the file releases it); nothing if not held."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def check_not_in_use(run_dir: pathlib.Path) -> None:
    """:class:`RunInUseError` if another process holds ``run_dir``'s lock (taken and given back at once)."""
    RunLock(run_dir).acquire().release()
