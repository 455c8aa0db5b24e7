"""Matplotlib for the paper's figures: the Agg backend (nothing is shown on screen) and figures saved whole or not
at all (through a temporary file in the destination folder, renamed when complete)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend."""
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path, dpi: int) -> Path:
    """Write ``fig`` to ``path`` (its suffix picks the format; PNG without one), close it, return the path."""
    from segmime_jax.atomic_files import atomic_output

    try:
        with atomic_output(Path(path)) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=Path(path).suffix.lstrip(".") or "png")
    finally:
        pyplot().close(fig)
    return Path(path)
