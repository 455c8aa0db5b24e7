"""Synthetic ACDC-like and PROMISE12-like datasets, in the real layouts and file formats.

They let every experiment, test and benchmark run without the (registration-only) real data. Same seed,
same files; each patient/case is drawn from its own generator ``numpy.random.default_rng([seed, index])``,
so patient 7 is the same whatever the number of cases.

**ACDC-like** (``write_synthetic_acdc``): ``<out>/training/patientNNN/Info.cfg``,
``patientNNN_frameFF.nii.gz`` and ``patientNNN_frameFF_gt.nii.gz`` for the ED and ES frames (int16 images,
uint8 labels, NIfTI affine with the voxel spacing). The cine ``patientNNN_4d.nii.gz`` is not written
(no loader reads it; it would multiply the size by the number of frames). Short-axis slices from base to
apex of a thorax: body with subcutaneous fat and chest-wall muscle, lungs with vessels, liver and stomach
towards the apex, spine, paraspinal muscles and descending aorta; the heart has an LV blood pool (with
papillary muscles, labelled LV as in ACDC), a myocardial ring and an RV crescent with a thin unlabelled free
wall, and patchy pericardial fat. Groups NOR/MINF/DCM/HCM/RV (balanced) change cavity size, wall thickness
(regional thinning for MINF), ejection fraction and RV size; ES has smaller cavities, thicker walls and a
shorter heart (apical slices empty). Sizes, positions, orientation (±20° around 0° or 90°), contours and
intensities vary per patient; LV, RV and aorta share the blood intensity, myocardium overlaps liver, muscle
and RV wall, so no class is an intensity threshold. In-plane sizes as ACDC (216×256, 256×232, ...),
in-plane spacing 1.2-1.6 mm (real ACDC: about 1.4-1.7 mm), slices 5-10 mm, 6-16 slices. Image formation:
partial-volume blur, smooth multiplicative bias field, random gain, Rician noise.

**PROMISE12-like** (``write_synthetic_promise12``): ``<out>/CaseNN.mhd`` + ``CaseNN.raw`` (int16) and
``CaseNN_segmentation.mhd`` + ``.raw`` (uint8, 0/1), written with SimpleITK; arrays ``(z, y, x)``,
15-30 slices of 2.2-4 mm, in-plane 256²-320² at 0.375-0.78 mm (field of view 120-200 mm; real PROMISE12
cases go down to 0.27 mm), some oblique direction cosines. A lobulated
ellipsoidal prostate (wider at the base) with a bright peripheral zone and a nodular central gland, in
periprostatic fat, between obturator/levator muscles (as dark as the central gland), the rectum (air,
fluid or an endorectal-coil balloon) behind, the bladder above, the pubic bones in front. Contrast, gain,
bias (a strong endorectal-coil fall-off in some cases) and noise vary per case, like PROMISE12's four centres.

Command line: ``python -m segmime_jax.data.synthetic {acdc,promise12} OUT_DIR [--cases N] [--seed S]``.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time
from collections.abc import Sequence

import numpy as np

from segmime_jax.atomic_files import atomic_directory
from segmime_jax.data.preprocess import resize_linear_axis

ACDC_SIZES: tuple[tuple[int, int], ...] = (
    (216, 256), (256, 216), (232, 256), (256, 232), (224, 256), (256, 256), (208, 256), (240, 240),
)
PROMISE12_SIZES: tuple[int, ...] = (256, 288, 320)

# Base endocardial radius (mm), wall thickness (mm), ES/ED cavity radius ratio, RV size factor.
_GROUPS = {
    "NOR": {"endo": (22.0, 27.0), "thick": (7.0, 10.0), "es": (0.60, 0.72), "rv": (0.95, 1.05)},
    "DCM": {"endo": (30.0, 37.0), "thick": (5.0, 7.0), "es": (0.84, 0.94), "rv": (0.9, 1.1)},
    "HCM": {"endo": (16.0, 21.0), "thick": (13.0, 18.0), "es": (0.42, 0.58), "rv": (0.85, 1.0)},
    "MINF": {"endo": (25.0, 32.0), "thick": (6.0, 9.0), "es": (0.76, 0.88), "rv": (0.9, 1.1)},
    "RV": {"endo": (19.0, 24.0), "thick": (7.0, 9.0), "es": (0.62, 0.74), "rv": (1.35, 1.6)},
}
ACDC_GROUP_NAMES: tuple[str, ...] = tuple(_GROUPS)


# ----------------------------------------------------------------------------------------------- helpers

def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _harmonics(rng: np.random.Generator, orders: Sequence[int], amplitude: float):
    """A random smooth periodic function of an angle: ``sum_k a_k cos(k t + phi_k)``."""
    amps = [rng.uniform(0.3, 1.0) * amplitude for _ in orders]
    phases = [rng.uniform(0, 2 * np.pi) for _ in orders]

    def fn(theta: np.ndarray) -> np.ndarray:
        out = np.zeros_like(theta)
        for k, a, p in zip(orders, amps, phases, strict=True):
            out += a * np.cos(k * theta + p)
        return out

    return fn


def _blur2d(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of the last two axes (edge values repeated at the borders)."""
    radius = max(1, int(np.ceil(3 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / max(sigma, 1e-3)) ** 2).astype(np.float32)
    taps /= taps.sum()
    out = image
    for axis in (image.ndim - 2, image.ndim - 1):
        pad = [(0, 0)] * image.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="edge")
        size = out.shape[axis]
        acc = np.zeros_like(out)
        for k, weight in enumerate(taps):
            acc += weight * np.take(padded, np.arange(k, k + size), axis=axis)
        out = acc
    return out


def _smooth_field(rng: np.random.Generator, shape: Sequence[int], coarse: Sequence[int], lo: float,
                  hi: float) -> np.ndarray:
    """A smooth random field of ``shape`` with values in [lo, hi]: a coarse random grid, interpolated."""
    field = rng.uniform(lo, hi, size=tuple(coarse)).astype(np.float32)
    for axis, n_out in enumerate(shape):
        field = resize_linear_axis(field, n_out, axis)
    return field


def _rician(rng: np.random.Generator, signal: np.ndarray, sigma: float) -> np.ndarray:
    """Magnitude of a complex signal with Gaussian noise on both channels (Rician; Rayleigh where signal=0)."""
    real = signal + sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    return np.sqrt(real * real + imag * imag)


def _ellipse(u: np.ndarray, v: np.ndarray, cu: float, cv: float, au: float, av: float,
             angle: float = 0.0) -> np.ndarray:
    """Normalised elliptic radius (< 1 inside) of an ellipse centred at (cu, cv), rotated by ``angle``."""
    c, s = np.cos(angle), np.sin(angle)
    du, dv = u - cu, v - cv
    p, q = c * du + s * dv, -s * du + c * dv
    return np.sqrt((p / max(au, 1e-3)) ** 2 + (q / max(av, 1e-3)) ** 2)


def _check_new_folder(out_dir: str | os.PathLike) -> pathlib.Path:
    """``out_dir`` as a path; FileExistsError unless it is missing or an empty folder (checked before any work)."""
    out_dir = pathlib.Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir}: exists and is not an empty folder; choose a new output folder")
    return out_dir


# ------------------------------------------------------------------------------------------------- ACDC

def _acdc_patient(rng: np.random.Generator, group: str, scale: float, zoom: float = 1.0) -> dict:
    """Per-patient anatomy, acquisition and Info.cfg values (``zoom``: see :func:`write_synthetic_acdc`)."""
    g = _GROUPS[group]
    height, width = ACDC_SIZES[rng.integers(len(ACDC_SIZES))]
    height, width = max(8, round(height * scale)), max(8, round(width * scale))
    spacing = _u(rng, 1.2, 1.6) / scale / zoom
    thickness = float(rng.choice([5.0, 6.0, 6.5, 7.0, 8.0, 10.0]))
    heart_length = _u(rng, 75.0, 105.0)
    past_apex = int(rng.uniform() < 0.35)  # one slice below the apex, with no heart at all
    heart_slices = int(np.clip(round(heart_length / thickness), 6, 16 - past_apex))
    num_slices = heart_slices + past_apex
    nb_frame = int(rng.integers(12, 36))
    ed = 1 if rng.uniform() < 0.85 else int(rng.integers(2, 4))
    es = int(np.clip(round(nb_frame * _u(rng, 0.3, 0.45)), ed + 2, nb_frame))
    endo = _u(rng, *g["endo"])
    thick = _u(rng, *g["thick"])
    rv_size = _u(rng, *g["rv"])
    a_v = _u(rng, 100.0, 135.0)
    body_u, body_v = _u(rng, -15, 15), _u(rng, -12, 12)
    heart_u, heart_v = body_u + _u(rng, -5, 30), body_v + _u(rng, -45, -15)
    spine_u, spine_v = body_u + _u(rng, -10, 10), body_v + a_v - _u(rng, 28, 40)
    return {
        "group": group, "shape": (height, width), "spacing": spacing, "thickness": thickness,
        "num_slices": num_slices, "heart_slices": heart_slices,
        "info": {"ED": ed, "ES": es, "Group": group, "Height": round(_u(rng, 150, 195), 1), "NbFrame": nb_frame,
                 "Weight": round(_u(rng, 50, 110), 1)},
        "orientation": float(np.deg2rad(rng.choice([0.0, 90.0]) + _u(rng, -20, 20))),
        "origin": (_u(rng, -200, -100), _u(rng, -250, -150), _u(rng, -50, 50)),
        # body
        "body": (body_u, body_v, _u(rng, 140.0, 175.0), a_v), "fat": _u(rng, 6.0, 18.0), "chest_muscle": _u(rng, 8, 16),
        # heart
        # the field of view's centre: the body's, moved towards the heart as the field of view shrinks (zoom)
        "view_centre": (heart_u * (1 - 1 / zoom), heart_v * (1 - 1 / zoom)),
        "heart": (heart_u, heart_v), "drift": (_u(rng, -2, 2), _u(rng, -2, 2)), "endo": endo, "thick": thick,
        "taper": _u(rng, 1.6, 2.6), "es_ratio": _u(rng, *g["es"]), "shorten": _u(rng, 0.84, 0.93),
        "endo_shape": _harmonics(rng, (2, 3), 0.06), "trabeculae": _harmonics(rng, (5, 7, 9), 0.025),
        "epi_shape": _harmonics(rng, (2, 3), 0.04),
        "thinning": (_u(rng, 0.45, 0.65), _u(rng, 0, 2 * np.pi), _u(rng, 0.5, 0.9)) if group == "MINF" else None,
        "rv_angle": np.pi + _u(rng, -0.6, 0.2), "rv_offset": _u(rng, 0.55, 0.75),
        "rv_width": _u(rng, 1.4, 1.75) * rv_size, "rv_depth": _u(rng, 0.9, 1.15) * np.sqrt(rv_size),
        "rv_end": _u(rng, 0.65, 0.9), "rv_es": _u(rng, 0.75, 0.9) if group == "RV" else _u(rng, 0.55, 0.72),
        "rv_shape": _harmonics(rng, (2, 3, 4), 0.05), "rv_wall": _u(rng, 2.0, 3.5),
        "papillary": [(_u(rng, 0.9, 1.4) + k * _u(rng, 1.5, 2.2), _u(rng, 0.1, 0.16)) for k in range(2)],
        "pericardial_fat": (_u(rng, 0, 2 * np.pi), _u(rng, 1.0, 3.0), _u(rng, 2.0, 5.0)),
        # surroundings
        "lungs": [(heart_u + _u(rng, 55, 80), heart_v + _u(rng, 10, 30), _u(rng, 40, 55), _u(rng, 65, 85)),
                  (heart_u - _u(rng, 70, 90), heart_v + _u(rng, 0, 25), _u(rng, 40, 55), _u(rng, 60, 80))],
        "liver": (heart_u - _u(rng, 40, 70), heart_v + _u(rng, 25, 55), _u(rng, 60, 90), _u(rng, 50, 70),
                  _u(rng, 0.15, 0.55)),
        "stomach": (heart_u + _u(rng, 50, 80), heart_v + _u(rng, 25, 50), _u(rng, 18, 32), _u(rng, 0.4, 0.8),
                    bool(rng.uniform() < 0.5)),
        "spine": (spine_u, spine_v, _u(rng, 13, 17)),
        "aorta": (spine_u + _u(rng, 15, 30), spine_v - _u(rng, 24, 32), _u(rng, 9, 13)),
        # intensities (fractions of the blood signal ~ 1)
        "blood": _u(rng, 0.75, 1.0), "myo": _u(rng, 0.2, 0.34), "soft": _u(rng, 0.3, 0.45),
        "liver_rel": _u(rng, 0.95, 1.35), "muscle_rel": _u(rng, 0.9, 1.25), "fat_int": _u(rng, 0.7, 0.95),
        "lung_int": _u(rng, 0.02, 0.08), "marrow": _u(rng, 0.35, 0.55), "aorta_rel": _u(rng, 0.85, 1.05),
        "gain": _u(rng, 150, 600), "noise": _u(rng, 0.02, 0.05), "bias": _u(rng, 0.15, 0.3),
        "blur": _u(rng, 0.5, 0.9),
    }


def _acdc_frame(rng: np.random.Generator, p: dict, phase: str) -> tuple[np.ndarray, np.ndarray]:
    """One frame: int16 image and uint8 label volumes, shape (H, W, S) (NIfTI x, y, z)."""
    height, width = p["shape"]
    sp = p["spacing"]
    y = (np.arange(height, dtype=np.float32) - height / 2) * sp
    x = (np.arange(width, dtype=np.float32) - width / 2) * sp
    yy, xx = np.meshgrid(y, x, indexing="ij")
    c, s = np.cos(p["orientation"]), np.sin(p["orientation"])
    u = (c * xx + s * yy + p["view_centre"][0]).astype(np.float32)
    v = (-s * xx + c * yy + p["view_centre"][1]).astype(np.float32)
    es = phase == "ES"
    jitter = (_u(rng, -3, 3), _u(rng, -3, 3)) if es else (0.0, 0.0)
    vary = (lambda value: value * _u(rng, 0.95, 1.05)) if es else (lambda value: value)
    blood, myo, soft = vary(p["blood"]), vary(p["myo"]), vary(p["soft"])
    liver_int, muscle_int = myo * p["liver_rel"], myo * p["muscle_rel"]
    images, labels = [], []
    for k in range(p["num_slices"]):
        f_body = k / max(p["num_slices"] - 1, 1)
        f = k / max(p["heart_slices"] - 1, 1)
        if es:
            f = f / p["shorten"]
        img = np.zeros((height, width), dtype=np.float32)
        lab = np.zeros((height, width), dtype=np.uint8)
        bu, bv, au, av = p["body"]
        body_r = _ellipse(u, v, bu, bv, au, av)
        img[body_r < 1] = soft
        fat_in = 1 - p["fat"] / min(au, av)
        img[(body_r < 1) & (body_r >= fat_in)] = p["fat_int"]
        muscle_in = fat_in - p["chest_muscle"] / min(au, av)
        img[(body_r < fat_in) & (body_r >= muscle_in) & (v < bv - 0.3 * av)] = muscle_int
        lung_scale = 1 - 0.45 * f_body
        for lu, lv, lau, lav in p["lungs"]:
            lung = (_ellipse(u, v, lu, lv, lau * lung_scale, lav * lung_scale) < 1) & (body_r < muscle_in)
            img[lung] = p["lung_int"]
            for _ in range(int(rng.integers(2, 6))):  # vessels
                ang, rad = _u(rng, 0, 2 * np.pi), _u(rng, 0.1, 0.8)
                vu, vv = lu + rad * lau * lung_scale * np.cos(ang), lv + rad * lav * lung_scale * np.sin(ang)
                img[lung & ((u - vu) ** 2 + (v - vv) ** 2 < _u(rng, 1.5, 3.5) ** 2)] = blood * 0.6
        lu_, lv_, lau_, lav_, start = p["liver"]
        if f_body > start:
            grow = np.sqrt((f_body - start) / (1 - start))
            img[(_ellipse(u, v, lu_, lv_, lau_ * grow, lav_ * grow, 0.3) < 1) & (body_r < fat_in)] = liver_int
        su_, sv_, sr_, sstart, gas = p["stomach"]
        if f_body > sstart:
            stomach = (_ellipse(u, v, su_, sv_, sr_ * 1.2, sr_) < 1) & (body_r < fat_in)
            img[stomach] = p["lung_int"] if gas else blood * 0.8
        spu, spv, spr = p["spine"]
        spine_r = np.hypot(u - spu, v - spv)
        paraspinal = (_ellipse(u, v, spu - 25, spv + 14, 18, 13) < 1) | (_ellipse(u, v, spu + 25, spv + 14, 18, 13) < 1)
        img[paraspinal & (body_r < fat_in)] = muscle_int
        img[spine_r < spr] = 0.1
        img[spine_r < spr - 2.5] = p["marrow"]
        img[np.hypot(u - spu, v - (spv + spr + 6)) < 5] = blood * 0.9  # spinal canal (CSF)
        aou, aov, aor = p["aorta"]
        img[np.hypot(u - aou, v - aov) < aor] = blood * p["aorta_rel"]
        # --- heart
        if 0 <= f <= 1:
            hu = p["heart"][0] + p["drift"][0] * k + jitter[0]
            hv = p["heart"][1] + p["drift"][1] * k + jitter[1]
            du, dv = u - hu, v - hv
            rr, theta = np.hypot(du, dv), np.arctan2(dv, du)
            profile = max(1.0 - f ** p["taper"], 0.0) ** 0.5
            r_endo_ed, t_ed = p["endo"] * profile, p["thick"] * (1 + 0.25 * f)
            if es:
                r_endo = p["es_ratio"] * r_endo_ed
                t = np.sqrt(r_endo ** 2 + (r_endo_ed + t_ed) ** 2 - r_endo_ed ** 2) - r_endo
            else:
                r_endo, t = r_endo_ed, t_ed
            endo_r = r_endo * (1 + p["endo_shape"](theta) + p["trabeculae"](theta))
            wall = np.full_like(theta, t)
            if p["thinning"] is not None:
                depth, centre, width_ = p["thinning"]
                wall *= 1 - depth * np.exp(-0.5 * (np.angle(np.exp(1j * (theta - centre))) / (width_ / 2)) ** 2)
            epi_r = r_endo * (1 + p["endo_shape"](theta)) + wall * (1 + p["epi_shape"](theta))
            epi = rr < epi_r
            r_epi_mean = r_endo + t
            # pericardial fat: a patchy arc outside the epicardium
            pf_centre, pf_width, pf_thick = p["pericardial_fat"]
            arc = np.abs(np.angle(np.exp(1j * (theta - pf_centre)))) < pf_width / 2
            img[arc & (rr >= epi_r + 1) & (rr < epi_r + 1 + pf_thick)] = p["fat_int"]
            # right ventricle: an ellipse beside the LV, minus the LV (the septum belongs to the LV myocardium)
            rv_scale = max(1.0 - (f / p["rv_end"]) ** 2, 0.0) ** 0.5 if f < p["rv_end"] else 0.0
            if rv_scale > 0:
                area = np.sqrt(p["rv_es"]) if es else 1.0
                ang = p["rv_angle"]
                cu = hu + p["rv_offset"] * r_epi_mean * np.cos(ang)
                cv = hv + p["rv_offset"] * r_epi_mean * np.sin(ang)
                depth = p["rv_depth"] * r_epi_mean * rv_scale * area
                span = p["rv_width"] * r_epi_mean * rv_scale * area
                rv_r = _ellipse(u, v, cu, cv, depth, span, ang)
                rv_theta = np.arctan2(v - cv, u - cu)
                bound = 1 + p["rv_shape"](rv_theta)
                rv_cavity = (rv_r < bound) & ~(rr < epi_r + 1.0)
                rv_outer = _ellipse(u, v, cu, cv, depth + p["rv_wall"], span + p["rv_wall"], ang) < bound
                img[rv_outer & ~epi] = myo * _u(rng, 0.9, 1.2)
                img[rv_cavity] = blood
                lab[rv_cavity] = 1
            img[epi] = myo
            lab[epi] = 2
            cavity = rr < endo_r
            img[cavity] = blood
            lab[cavity] = 3
            if 0.15 < f < 0.85 and r_endo > 6:
                for pa, pr in p["papillary"]:
                    pu, pv = hu + 0.62 * r_endo * np.cos(pa), hv + 0.62 * r_endo * np.sin(pa)
                    img[cavity & (np.hypot(u - pu, v - pv) < pr * r_endo * 1.4)] = myo * 1.1
        images.append(img)
        labels.append(lab)
    volume = np.stack(images)  # (S, H, W)
    label = np.stack(labels)
    inflow = _smooth_field(rng, volume.shape, (2, 3, 3), 0.9, 1.08)
    volume = np.where(label == 3, volume * inflow, volume)
    volume *= _smooth_field(rng, volume.shape, (2, 14, 14), 0.88, 1.12)  # tissue texture
    volume = _blur2d(volume, p["blur"])
    bias = _smooth_field(rng, volume.shape, (2, 3, 3), 1 - p["bias"], 1 + p["bias"])
    signal = volume * bias * p["gain"]
    noisy = _rician(rng, signal, p["noise"] * p["gain"])
    image = np.clip(np.rint(noisy), 0, 32767).astype(np.int16)
    return np.ascontiguousarray(image.transpose(1, 2, 0)), np.ascontiguousarray(label.transpose(1, 2, 0))


def _write_nifti(path: pathlib.Path, array: np.ndarray, affine: np.ndarray) -> None:
    from segmime_jax.data.acdc import import_nibabel

    nib = import_nibabel()
    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm", "sec")
    nib.save(image, os.fspath(path))


def _write_acdc_patient(folder: pathlib.Path, name: str, rng: np.random.Generator, group: str, scale: float,
                        zoom: float) -> None:
    p = _acdc_patient(rng, group, scale, zoom)
    folder.mkdir(parents=True)
    lines = [f"{key}: {value}" for key, value in p["info"].items()]
    (folder / "Info.cfg").write_text("\n".join(lines) + "\n")
    affine = np.diag([p["spacing"], p["spacing"], p["thickness"], 1.0])
    affine[:3, 3] = p["origin"]
    for phase in ("ED", "ES"):
        image, label = _acdc_frame(rng, p, phase)
        stem = f"{name}_frame{p['info'][phase]:02d}"
        _write_nifti(folder / f"{stem}.nii.gz", image, affine)
        _write_nifti(folder / f"{stem}_gt.nii.gz", label, affine)


def write_synthetic_acdc(out_dir: str | os.PathLike, *, cases: int = 20, seed: int = 0, testing_cases: int = 0,
                         scale: float = 1.0, zoom: float = 1.0) -> pathlib.Path:
    """Write an ACDC-like dataset to ``out_dir`` (which must not exist or be empty) and return it.

    Args:
        cases: patients in ``training/`` (patient001, patient002, ...); each block of 5 consecutive patients
            has the 5 groups NOR, MINF, DCM, HCM, RV in a random order.
        seed: dataset seed; patient i is drawn from ``default_rng([seed, i])``.
        testing_cases: patients (patient101, ...) in ``testing/``, with ground truth as in newer releases.
        scale: in-plane matrix size multiplier at a constant field of view (e.g. 0.25 for tiny test data).
        zoom: in-plane magnification at a constant matrix size: the field of view shrinks by this factor
            (pixel spacing divided by it) and its centre moves towards the heart, like a cardiac
            region-of-interest acquisition. 1 is the whole thorax (the heart is about 3 % of the pixels, as in
            ACDC); 2 makes every cardiac structure twice as many pixels across, so that a small working size
            (e.g. 64x64) still resolves the myocardium. Anatomy and randomness are the same for every zoom.
    """
    if cases < 1 or testing_cases < 0 or not scale > 0 or not zoom >= 1:
        raise ValueError(f"need cases >= 1, testing_cases >= 0, scale > 0, zoom >= 1; got {cases}, {testing_cases}, "
                         f"{scale}, {zoom}")
    if cases > 100 and testing_cases:
        raise ValueError("with testing_cases, at most 100 training cases (testing starts at patient101)")
    out_dir = _check_new_folder(out_dir)
    with atomic_directory(out_dir) as tmp:
        for subset, count, first in (("training", cases, 1), ("testing", testing_cases, 101)):
            for i in range(count):
                number = first + i
                # groups balanced within each block of 5 consecutive patients, whatever the count
                block = np.random.default_rng([seed, 1_000_003, first, i // 5]).permutation(len(ACDC_GROUP_NAMES))
                group = ACDC_GROUP_NAMES[block[i % 5]]
                name = f"patient{number:03d}"
                _write_acdc_patient(tmp / subset / name, name, np.random.default_rng([seed, number]), group, scale,
                                    zoom)
    return out_dir


# -------------------------------------------------------------------------------------------- PROMISE12

def _promise12_case(rng: np.random.Generator, scale: float, zoom: float = 1.0) -> tuple[np.ndarray, np.ndarray, dict]:
    """One case: int16 image and uint8 mask, ``(z, y, x)``, and its geometry (``zoom``: see
    :func:`write_synthetic_promise12`)."""
    n = max(8, round(int(rng.choice(PROMISE12_SIZES)) * scale))
    fov = _u(rng, 120.0, 200.0) / zoom
    sp = fov / n
    thickness = _u(rng, 2.2, 4.0)
    nz = int(np.clip(round(_u(rng, 60.0, 100.0) / thickness), 15, 30))
    z = ((np.arange(nz, dtype=np.float32) - (nz - 1) / 2) * thickness)[:, None, None]
    yx = (np.arange(n, dtype=np.float32) - (n - 1) / 2) * sp
    y, x = yx[None, :, None], yx[None, None, :]
    shape = (nz, n, n)

    # prostate: lobulated ellipsoid, wider at the base (superior, +z)
    x0, y0, z0 = _u(rng, -12, 12), _u(rng, -10, 10), _u(rng, -8, 8)
    ax, ay, az = _u(rng, 18, 28), _u(rng, 13, 20), _u(rng, 15, 24)
    taper = _u(rng, 0.1, 0.25)
    widen = 1 + taper * np.clip((z - z0) / az, -1, 1)
    phi = np.arctan2(y - y0, x - x0)
    lobes = _harmonics(rng, (2, 3, 4), 0.05)
    surface = 1 + lobes(phi) + 0.04 * np.cos(np.pi * (z - z0) / az + _u(rng, 0, np.pi))
    rho = np.sqrt(((x - x0) / (ax * widen)) ** 2 + ((y - y0) / (ay * widen)) ** 2 + ((z - z0) / az) ** 2) / surface
    prostate = rho < 1

    # intensities: each case its own contrast ("centre")
    fat, muscle = _u(rng, 0.6, 0.9), _u(rng, 0.15, 0.3)
    central, peripheral = _u(rng, 0.25, 0.5), _u(rng, 0.5, 0.85)
    soft = _u(rng, 0.3, 0.5)
    img = np.full(shape, soft, dtype=np.float32)
    body = _ellipse(x, y, _u(rng, -5, 5), _u(rng, -5, 10), _u(rng, 140, 190), _u(rng, 100, 140)) < 1
    body = np.broadcast_to(body, shape)
    img[~body] = 0.0
    ragged = _smooth_field(rng, shape, (4, 8, 8), -0.3, 0.3)
    img[(_ellipse(x, y, x0, y0, ax * 2.0, ay * 1.9) + ragged < 1) & body] = fat  # periprostatic fat
    texture = _smooth_field(rng, shape, (4, 6, 6), 0.85, 1.15)
    img *= texture
    for side in (-1, 1):  # obturator internus / levator ani
        mx = x0 + side * (ax + _u(rng, 14, 24))
        img[np.broadcast_to(_ellipse(x, y, mx, y0 + _u(rng, 0, 10), _u(rng, 7, 12), _u(rng, 25, 40),
                                     side * _u(rng, 0.1, 0.4)) < 1, shape)] = muscle
    # pubic bones in front
    py = y0 - ay - _u(rng, 14, 24)
    for side in (-1, 1):
        bone = np.broadcast_to(_ellipse(x, y, x0 + side * _u(rng, 14, 20), py, _u(rng, 10, 14), _u(rng, 6, 9)),
                               shape)
        img[bone < 1] = 0.08
        img[bone < 0.75] = _u(rng, 0.4, 0.6)
    # rectum behind: air, fluid or an endorectal-coil balloon, dark wall
    rr_ = _u(rng, 10, 17)
    ry = y0 + ay + rr_ + _u(rng, 1, 4)
    rx = x0 + _u(rng, -4, 4)
    rect_d = np.broadcast_to(np.hypot(x - rx, y - ry), shape)
    content = rng.choice(["air", "fluid", "coil"])
    img[rect_d < rr_ + 3] = muscle * 1.1
    img[rect_d < rr_] = {"air": 0.02, "fluid": 0.9, "coil": 0.05}[content]
    # bladder above the base
    bz = z0 + az + _u(rng, 10, 25)
    bladder = _ellipse(x, y, x0 + _u(rng, -5, 5), y0 - _u(rng, 0, 10), _u(rng, 30, 50), _u(rng, 22, 35)) ** 2 + \
        ((z - bz) / _u(rng, 18, 30)) ** 2
    img[bladder < 1.25] = muscle * 1.3
    img[bladder < 1] = _u(rng, 0.85, 1.0)
    # prostate zones: nodular central gland, bright peripheral zone posteriorly
    nodules = _smooth_field(rng, shape, (5, 9, 9), 0.75, 1.25)
    img[prostate] = central * nodules[prostate]
    pz = prostate & (rho > _u(rng, 0.55, 0.7)) & (y > y0 - 0.1 * ay)
    img[pz] = peripheral
    patches = _smooth_field(rng, shape, (4, 6, 6), 0.0, 1.0) > _u(rng, 0.35, 0.65)
    img[(rho >= 1) & (rho < 1.06) & patches] = muscle * _u(rng, 1.0, 1.6)  # capsule, visible in patches
    label = prostate.astype(np.uint8)

    img = _blur2d(img, _u(rng, 0.5, 0.9))
    bias = _smooth_field(rng, shape, (3, 3, 3), 0.75, 1.25)
    if content == "coil":
        bias = bias * (1 + _u(rng, 1.0, 3.0) * np.exp(-np.maximum(rect_d - rr_, 0) / _u(rng, 15, 30)))
    gain = _u(rng, 200, 1500)
    noisy = _rician(rng, img * bias * gain, _u(rng, 0.02, 0.06) * gain)
    image = np.clip(np.rint(noisy), 0, 32767).astype(np.int16)
    tilt = _u(rng, -0.25, 0.25) if rng.uniform() < 0.3 else 0.0  # oblique axial: rotation about x
    direction = (1.0, 0.0, 0.0, 0.0, np.cos(tilt), -np.sin(tilt), 0.0, np.sin(tilt), np.cos(tilt))
    geometry = {"spacing": (sp, sp, thickness), "origin": (_u(rng, -100, -50), _u(rng, -100, -50), _u(rng, -60, 0)),
                "direction": direction}
    return image, label, geometry


def write_synthetic_promise12(out_dir: str | os.PathLike, *, cases: int = 20, seed: int = 0,
                              scale: float = 1.0, zoom: float = 1.0) -> pathlib.Path:
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
    out_dir = _check_new_folder(out_dir)
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


# ------------------------------------------------------------------------------------------------ CLI

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m segmime_jax.data.synthetic",
        description="Write a synthetic ACDC-like or PROMISE12-like dataset in the real layout and formats.",
        allow_abbrev=False,
    )
    parser.add_argument("dataset", choices=("acdc", "promise12"))
    parser.add_argument("out_dir", type=pathlib.Path, help="output folder (must not exist or be empty)")
    parser.add_argument("--cases", type=int, default=20, help="number of patients/cases (default: 20)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default: 0)")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="in-plane matrix size multiplier at constant field of view (default: 1)")
    parser.add_argument("--zoom", type=float, default=1.0,
                        help="field of view shrunk by this factor around the heart or prostate (default: 1)")
    parser.add_argument("--testing-cases", type=int, default=0,
                        help="ACDC only: patients in testing/ (patient101...), with ground truth (default: 0)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        if args.dataset == "acdc":
            path = write_synthetic_acdc(args.out_dir, cases=args.cases, seed=args.seed, scale=args.scale,
                                        testing_cases=args.testing_cases, zoom=args.zoom)
        else:
            if args.testing_cases:
                parser.error("--testing-cases applies to acdc only")
            path = write_synthetic_promise12(args.out_dir, cases=args.cases, seed=args.seed, scale=args.scale,
                                             zoom=args.zoom)
    except (FileExistsError, ValueError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.cases} synthetic {args.dataset} cases to {path} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
