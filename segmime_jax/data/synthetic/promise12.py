"""The synthetic PROMISE12-like dataset: the drawing of one case (geometry, anatomy, image formation), and the
writer (MetaImage, through SimpleITK).

The anatomy is described in :mod:`segmime_jax.data.synthetic`. All the randomness of a case comes from one
generator, drawn in a fixed order: grid, prostate shape, intensities, pelvis, rectum, bladder, prostate zones,
image formation, then orientation and origin. Changing the order of the draws changes every file.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

import numpy as np

from segmime_jax.atomic_files import atomic_directory
from segmime_jax.data.filters import gaussian_blur
from segmime_jax.data.synthetic.shapes import check_new_folder, ellipse, harmonics, rician, smooth_field
from segmime_jax.data.synthetic.shapes import uniform as _u

PROMISE12_SIZES: tuple[int, ...] = (256, 288, 320)


@dataclasses.dataclass(frozen=True)
class _Grid:
    """A case's voxel grid; coordinates in mm from the volume's centre, broadcastable to ``shape`` (z, y, x)."""

    shape: tuple[int, int, int]
    spacing: float  # in-plane
    thickness: float
    z: np.ndarray  # (nz, 1, 1)
    y: np.ndarray  # (1, n, 1)
    x: np.ndarray  # (1, 1, n)


@dataclasses.dataclass(frozen=True)
class _Gland:
    """The prostate: centre and semi-axes (mm), and its normalised radius ``rho`` (< 1 inside) at every voxel."""

    x0: float
    y0: float
    z0: float
    ax: float
    ay: float
    az: float
    rho: np.ndarray

    @property
    def mask(self) -> np.ndarray:
        return self.rho < 1


@dataclasses.dataclass(frozen=True)
class _Tones:
    """A case's tissue intensities: each case its own contrast, like PROMISE12's four centres."""

    fat: float
    muscle: float
    central: float
    peripheral: float
    soft: float


@dataclasses.dataclass(frozen=True)
class _Rectum:
    """What the endorectal-coil bias needs: the content, the distance (mm) from the rectum's axis, the radius."""

    content: str
    distance: np.ndarray
    radius: float


def _case_grid(rng: np.random.Generator, scale: float, zoom: float) -> _Grid:
    """Matrix (256-320 scaled), field of view (120-200 mm divided by ``zoom``), 15-30 slices of 2.2-4 mm."""
    n = max(8, round(int(rng.choice(PROMISE12_SIZES)) * scale))
    fov = _u(rng, 120.0, 200.0) / zoom
    sp = fov / n
    thickness = _u(rng, 2.2, 4.0)
    nz = int(np.clip(round(_u(rng, 60.0, 100.0) / thickness), 15, 30))
    z = ((np.arange(nz, dtype=np.float32) - (nz - 1) / 2) * thickness)[:, None, None]
    yx = (np.arange(n, dtype=np.float32) - (n - 1) / 2) * sp
    return _Grid(shape=(nz, n, n), spacing=sp, thickness=thickness, z=z, y=yx[None, :, None], x=yx[None, None, :])


def _prostate(rng: np.random.Generator, g: _Grid) -> _Gland:
    """A lobulated ellipsoid near the centre, wider at the base (superior, +z)."""
    x, y, z = g.x, g.y, g.z
    x0, y0, z0 = _u(rng, -12, 12), _u(rng, -10, 10), _u(rng, -8, 8)
    ax, ay, az = _u(rng, 18, 28), _u(rng, 13, 20), _u(rng, 15, 24)
    taper = _u(rng, 0.1, 0.25)
    widen = 1 + taper * np.clip((z - z0) / az, -1, 1)
    phi = np.arctan2(y - y0, x - x0)
    lobes = harmonics(rng, (2, 3, 4), 0.05)
    surface = 1 + lobes(phi) + 0.04 * np.cos(np.pi * (z - z0) / az + _u(rng, 0, np.pi))
    rho = np.sqrt(((x - x0) / (ax * widen)) ** 2 + ((y - y0) / (ay * widen)) ** 2 + ((z - z0) / az) ** 2) / surface
    return _Gland(x0=x0, y0=y0, z0=z0, ax=ax, ay=ay, az=az, rho=rho)


def _case_tones(rng: np.random.Generator) -> _Tones:
    fat, muscle = _u(rng, 0.6, 0.9), _u(rng, 0.15, 0.3)
    central, peripheral = _u(rng, 0.25, 0.5), _u(rng, 0.5, 0.85)
    soft = _u(rng, 0.3, 0.5)
    return _Tones(fat=fat, muscle=muscle, central=central, peripheral=peripheral, soft=soft)


def _paint_pelvis(rng: np.random.Generator, g: _Grid, gl: _Gland, tones: _Tones) -> np.ndarray:
    """The float32 image of the pelvis around the prostate: body outline, ragged periprostatic fat, tissue
    texture, obturator internus / levator ani muscles (as dark as the central gland), pubic bones in front."""
    x, y, shape = g.x, g.y, g.shape
    img = np.full(shape, tones.soft, dtype=np.float32)
    body = ellipse(x, y, _u(rng, -5, 5), _u(rng, -5, 10), _u(rng, 140, 190), _u(rng, 100, 140)) < 1
    body = np.broadcast_to(body, shape)
    img[~body] = 0.0
    ragged = smooth_field(rng, shape, (4, 8, 8), -0.3, 0.3)
    img[(ellipse(x, y, gl.x0, gl.y0, gl.ax * 2.0, gl.ay * 1.9) + ragged < 1) & body] = tones.fat
    texture = smooth_field(rng, shape, (4, 6, 6), 0.85, 1.15)
    img *= texture
    for side in (-1, 1):
        mx = gl.x0 + side * (gl.ax + _u(rng, 14, 24))
        img[
            np.broadcast_to(
                ellipse(x, y, mx, gl.y0 + _u(rng, 0, 10), _u(rng, 7, 12), _u(rng, 25, 40), side * _u(rng, 0.1, 0.4))
                < 1,
                shape,
            )
        ] = tones.muscle
    py = gl.y0 - gl.ay - _u(rng, 14, 24)
    for side in (-1, 1):
        bone = np.broadcast_to(ellipse(x, y, gl.x0 + side * _u(rng, 14, 20), py, _u(rng, 10, 14), _u(rng, 6, 9)), shape)
        img[bone < 1] = 0.08  # cortex
        img[bone < 0.75] = _u(rng, 0.4, 0.6)  # marrow
    return img


def _paint_rectum(rng: np.random.Generator, img: np.ndarray, g: _Grid, gl: _Gland, tones: _Tones) -> _Rectum:
    """The rectum behind the prostate, a vertical cylinder: air, fluid or an endorectal-coil balloon, dark wall."""
    radius = _u(rng, 10, 17)
    ry = gl.y0 + gl.ay + radius + _u(rng, 1, 4)
    rx = gl.x0 + _u(rng, -4, 4)
    distance = np.broadcast_to(np.hypot(g.x - rx, g.y - ry), g.shape)
    content = rng.choice(["air", "fluid", "coil"])
    img[distance < radius + 3] = tones.muscle * 1.1
    img[distance < radius] = {"air": 0.02, "fluid": 0.9, "coil": 0.05}[content]
    return _Rectum(content=content, distance=distance, radius=radius)


def _paint_bladder(rng: np.random.Generator, img: np.ndarray, g: _Grid, gl: _Gland, tones: _Tones) -> None:
    """The bladder above the base: bright urine in a dark wall."""
    bz = gl.z0 + gl.az + _u(rng, 10, 25)
    bladder = (
        ellipse(g.x, g.y, gl.x0 + _u(rng, -5, 5), gl.y0 - _u(rng, 0, 10), _u(rng, 30, 50), _u(rng, 22, 35)) ** 2
        + ((g.z - bz) / _u(rng, 18, 30)) ** 2
    )
    img[bladder < 1.25] = tones.muscle * 1.3
    img[bladder < 1] = _u(rng, 0.85, 1.0)


def _paint_prostate_zones(rng: np.random.Generator, img: np.ndarray, g: _Grid, gl: _Gland, tones: _Tones) -> None:
    """Nodular central gland, bright peripheral zone posteriorly, and the capsule, visible in patches."""
    prostate, rho = gl.mask, gl.rho
    nodules = smooth_field(rng, g.shape, (5, 9, 9), 0.75, 1.25)
    img[prostate] = tones.central * nodules[prostate]
    pz = prostate & (rho > _u(rng, 0.55, 0.7)) & (g.y > gl.y0 - 0.1 * gl.ay)
    img[pz] = tones.peripheral
    patches = smooth_field(rng, g.shape, (4, 6, 6), 0.0, 1.0) > _u(rng, 0.35, 0.65)
    img[(rho >= 1) & (rho < 1.06) & patches] = tones.muscle * _u(rng, 1.0, 1.6)


def _form_image(rng: np.random.Generator, img: np.ndarray, g: _Grid, rectum: _Rectum) -> np.ndarray:
    """The acquired int16 image: partial-volume blur, smooth bias field (with a strong fall-off from an
    endorectal coil), gain and Rician noise."""
    img = gaussian_blur(img, _u(rng, 0.5, 0.9))
    bias = smooth_field(rng, g.shape, (3, 3, 3), 0.75, 1.25)
    if rectum.content == "coil":
        strength = _u(rng, 1.0, 3.0)  # drawn before the fall-off length
        fall_off = np.exp(-np.maximum(rectum.distance - rectum.radius, 0) / _u(rng, 15, 30))
        bias = bias * (1 + strength * fall_off)
    gain = _u(rng, 200, 1500)
    noisy = rician(rng, img * bias * gain, _u(rng, 0.02, 0.06) * gain)
    return np.clip(np.rint(noisy), 0, 32767).astype(np.int16)


def _case_geometry(rng: np.random.Generator, g: _Grid) -> dict:
    """MetaImage spacing (x, y, z), origin and direction cosines: some cases oblique (rotated about x)."""
    tilt = _u(rng, -0.25, 0.25) if rng.uniform() < 0.3 else 0.0
    direction = (1.0, 0.0, 0.0, 0.0, np.cos(tilt), -np.sin(tilt), 0.0, np.sin(tilt), np.cos(tilt))
    return {
        "spacing": (g.spacing, g.spacing, g.thickness),
        "origin": (_u(rng, -100, -50), _u(rng, -100, -50), _u(rng, -60, 0)),
        "direction": direction,
    }


def _promise12_case(rng: np.random.Generator, scale: float, zoom: float = 1.0) -> tuple[np.ndarray, np.ndarray, dict]:
    """One case: int16 image and uint8 mask, ``(z, y, x)``, and its geometry (``zoom``: see
    :func:`write_synthetic_promise12`)."""
    g = _case_grid(rng, scale, zoom)
    gland = _prostate(rng, g)
    tones = _case_tones(rng)
    img = _paint_pelvis(rng, g, gland, tones)
    rectum = _paint_rectum(rng, img, g, gland, tones)
    _paint_bladder(rng, img, g, gland, tones)
    _paint_prostate_zones(rng, img, g, gland, tones)
    image = _form_image(rng, img, g, rectum)
    return image, gland.mask.astype(np.uint8), _case_geometry(rng, g)


def write_synthetic_promise12(
    out_dir: str | os.PathLike, *, cases: int = 20, seed: int = 0, scale: float = 1.0, zoom: float = 1.0
) -> pathlib.Path:
    """Write a PROMISE12-like dataset (``CaseNN.mhd/.raw`` + ``CaseNN_segmentation.mhd/.raw``) to ``out_dir``.

    Needs SimpleITK. ``out_dir`` must not exist or be empty. ``scale`` multiplies the in-plane matrix size
    at a constant field of view. ``zoom`` divides the field of view (120-200 mm) at a constant matrix size,
    around the image centre, where the prostate is (within 12 mm): the prostate is ``zoom`` times as many
    pixels across; 1.5 still shows the whole gland. Case i is drawn from ``default_rng([seed, i])``, its
    anatomy the same for every zoom.
    """
    from segmime_jax.data.promise12 import import_simpleitk

    sitk = import_simpleitk()
    if cases < 1 or not scale > 0 or not zoom >= 1:
        raise ValueError(f"need cases >= 1, scale > 0 and zoom >= 1; got {cases}, {scale}, {zoom}")
    out_dir = check_new_folder(out_dir)
    with atomic_directory(out_dir) as tmp:
        for i in range(cases):
            image, label, geometry = _promise12_case(np.random.default_rng([seed, i]), scale, zoom)
            for array, suffix in ((image, ""), (label, "_segmentation")):
                itk = sitk.GetImageFromArray(array)
                itk.SetSpacing(geometry["spacing"])
                itk.SetOrigin(geometry["origin"])
                itk.SetDirection(geometry["direction"])
                sitk.WriteImage(itk, os.fspath(tmp / f"Case{i:02d}{suffix}.mhd"))
    return out_dir
