"""The one exception the data layer raises for bad input."""

from __future__ import annotations

import os


class DataError(ValueError):
    """Bad input data: the message names the offending file (or folder) and the problem.

    ``DataError(path, problem)`` formats as ``"<path>: <problem>"`` and keeps both as attributes;
    ``DataError(message)`` keeps a free-form message (``path`` is then ``None``).
    """

    def __init__(self, path: str | os.PathLike | None, problem: str | None = None):
        if problem is None:
            self.path = None
            self.problem = str(path)
            super().__init__(self.problem)
        else:
            self.path = os.fspath(path) if path is not None else None
            self.problem = problem
            super().__init__(f"{self.path}: {problem}" if self.path is not None else problem)
