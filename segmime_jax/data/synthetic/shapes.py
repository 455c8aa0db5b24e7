"""Drawing and randomness helpers shared by the ACDC and PROMISE12 generators, and their output-folder check.

Every helper that draws takes the generator as its first argument and draws in a fixed order, so a dataset is
the same for the same seed.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable, Sequence

import numpy as np

from segmime_jax.data.preprocess import resize_linear_axis


def uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    """One draw from U(lo, hi), as a Python float."""
    return float(rng.uniform(lo, hi))


def harmonics(rng: np.random.Generator, orders: Sequence[int], amplitude: float) -> Callable[[np.ndarray], np.ndarray]:
    """A random smooth periodic function of an angle: ``sum_k a_k cos(k t + phi_k)``."""
    amps = [rng.uniform(0.3, 1.0) * amplitude for _ in orders]
    phases = [rng.uniform(0, 2 * np.pi) for _ in orders]

    def fn(theta: np.ndarray) -> np.ndarray:
        out = np.zeros_like(theta)
        for k, a, p in zip(orders, amps, phases, strict=True):
            out += a * np.cos(k * theta + p)
        return out

    return fn


def smooth_field(
    rng: np.random.Generator, shape: Sequence[int], coarse: Sequence[int], lo: float, hi: float
) -> np.ndarray:
    """A smooth random field of ``shape`` with values in [lo, hi]: a coarse random grid, interpolated."""
    field = rng.uniform(lo, hi, size=tuple(coarse)).astype(np.float32)
    for axis, n_out in enumerate(shape):
        field = resize_linear_axis(field, n_out, axis)
    return field


def rician(rng: np.random.Generator, signal: np.ndarray, sigma: float) -> np.ndarray:
    """Magnitude of a complex signal with Gaussian noise on both channels (Rician; Rayleigh where signal=0)."""
    real = signal + sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    return np.sqrt(real * real + imag * imag)


def ellipse(u: np.ndarray, v: np.ndarray, cu: float, cv: float, au: float, av: float, angle: float = 0.0) -> np.ndarray:
    """Normalised elliptic radius (< 1 inside) of an ellipse centred at (cu, cv), rotated by ``angle``."""
    c, s = np.cos(angle), np.sin(angle)
    du, dv = u - cu, v - cv
    p, q = c * du + s * dv, -s * du + c * dv
    return np.sqrt((p / max(au, 1e-3)) ** 2 + (q / max(av, 1e-3)) ** 2)


def check_new_folder(out_dir: str | os.PathLike) -> pathlib.Path:
    """``out_dir`` as a path; FileExistsError unless it is missing or an empty folder (checked before any work)."""
    out_dir = pathlib.Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir}: exists and is not an empty folder; choose a new output folder")
    return out_dir
