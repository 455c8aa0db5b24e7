"""Image filters shared by the synthetic datasets and the gradient study."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def gaussian_blur(image: np.ndarray, sigma: float, axes: Sequence[int] = (-2, -1)) -> np.ndarray:
    """Separable Gaussian blur of ``image`` along ``axes``, edge values repeated at the borders.

    The kernel has ``2·max(1, ⌈3σ⌉) + 1`` taps, normalised to sum to 1 in the image's dtype, and the taps are
    added in order, from the left: float32 images are blurred in float32, float64 ones in float64. ``sigma <= 0``
    returns the image unchanged.

    Args:
      image: a float array.
      sigma: standard deviation in pixels.
      axes: the axes to blur (default: the last two).

    Returns:
      An array of the shape and dtype of ``image``.
    """
    if sigma <= 0:
        return image
    radius = max(1, int(np.ceil(3 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2).astype(image.dtype)
    taps /= taps.sum()
    out = image
    for axis in (a % image.ndim for a in axes):
        pad = [(0, 0)] * image.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="edge")
        size = out.shape[axis]
        acc = np.zeros_like(out)
        for k, weight in enumerate(taps):
            acc += weight * np.take(padded, np.arange(k, k + size), axis=axis)
        out = acc
    return out
