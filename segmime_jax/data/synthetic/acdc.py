"""The synthetic ACDC-like dataset: the drawing of one frame from a patient's parameters
(:mod:`segmime_jax.data.synthetic.acdc_patient`), and the writer.

A frame is drawn slice by slice, base to apex: body wall, lungs and vessels, abdomen (liver, stomach), spine
and aorta, then the heart (pericardial fat, RV, myocardium, LV cavity with papillary muscles), each painted
over the previous ones; image formation (texture, blur, bias field, gain, Rician noise) is applied to the
stacked volume. The anatomy is described in :mod:`segmime_jax.data.synthetic`.

All the randomness of a patient comes from one generator, drawn in a fixed order: the patient's parameters,
then the ED frame, then the ES frame. Changing the order of the draws changes every file.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

import numpy as np

from segmime_jax.atomic_files import atomic_directory
from segmime_jax.data.filters import gaussian_blur
from segmime_jax.data.synthetic.acdc_patient import ACDC_GROUP_NAMES, acdc_patient
from segmime_jax.data.synthetic.shapes import check_new_folder, ellipse, rician, smooth_field
from segmime_jax.data.synthetic.shapes import uniform as _u

# ------------------------------------------------------------------------------------------------ frame


@dataclasses.dataclass(frozen=True)
class _Tones:
    """A frame's intensities, fractions of the blood signal (~ 1)."""

    blood: float
    myo: float
    soft: float
    liver: float
    muscle: float


@dataclasses.dataclass(frozen=True)
class _Slice:
    """One slice being painted: patient coordinates (mm) of every pixel, the image and the label, (H, W)."""

    u: np.ndarray
    v: np.ndarray
    img: np.ndarray
    lab: np.ndarray


def _view_coordinates(p: dict) -> tuple[np.ndarray, np.ndarray]:
    """Patient coordinates (u, v) in mm of every pixel: the field of view rotated by the patient's orientation."""
    height, width = p["shape"]
    sp = p["spacing"]
    y = (np.arange(height, dtype=np.float32) - height / 2) * sp
    x = (np.arange(width, dtype=np.float32) - width / 2) * sp
    yy, xx = np.meshgrid(y, x, indexing="ij")
    c, s = np.cos(p["orientation"]), np.sin(p["orientation"])
    u = (c * xx + s * yy + p["view_centre"][0]).astype(np.float32)
    v = (-s * xx + c * yy + p["view_centre"][1]).astype(np.float32)
    return u, v


def _frame_tones(rng: np.random.Generator, p: dict, es: bool) -> _Tones:
    """The frame's intensities: the patient's, varied by ±5 % at ES (blood, myocardium, soft tissue, drawn in
    that order) so that the two frames of a patient are not one contrast."""
    vary = (lambda value: value * _u(rng, 0.95, 1.05)) if es else (lambda value: value)
    blood, myo, soft = vary(p["blood"]), vary(p["myo"]), vary(p["soft"])
    return _Tones(blood=blood, myo=myo, soft=soft, liver=myo * p["liver_rel"], muscle=myo * p["muscle_rel"])


def _paint_body_wall(sl: _Slice, p: dict, tones: _Tones) -> tuple[np.ndarray, float, float]:
    """Body (soft tissue), subcutaneous fat and the anterior chest-wall muscle; returns the body's elliptic
    radius and the radii inside the fat and inside the muscle, which bound the organs."""
    u, v, img = sl.u, sl.v, sl.img
    bu, bv, au, av = p["body"]
    body_r = ellipse(u, v, bu, bv, au, av)
    img[body_r < 1] = tones.soft
    fat_in = 1 - p["fat"] / min(au, av)
    img[(body_r < 1) & (body_r >= fat_in)] = p["fat_int"]
    muscle_in = fat_in - p["chest_muscle"] / min(au, av)
    img[(body_r < fat_in) & (body_r >= muscle_in) & (v < bv - 0.3 * av)] = tones.muscle
    return body_r, fat_in, muscle_in


def _paint_lungs(
    rng: np.random.Generator, sl: _Slice, p: dict, tones: _Tones, f_body: float, inside: np.ndarray
) -> None:
    """Both lungs, smaller towards the apex, each with 2-5 vessels (bright dots) drawn anew for every slice."""
    u, v, img = sl.u, sl.v, sl.img
    lung_scale = 1 - 0.45 * f_body
    for lu, lv, lau, lav in p["lungs"]:
        lung = (ellipse(u, v, lu, lv, lau * lung_scale, lav * lung_scale) < 1) & inside
        img[lung] = p["lung_int"]
        for _ in range(int(rng.integers(2, 6))):  # vessels
            ang, rad = _u(rng, 0, 2 * np.pi), _u(rng, 0.1, 0.8)
            vu, vv = lu + rad * lau * lung_scale * np.cos(ang), lv + rad * lav * lung_scale * np.sin(ang)
            img[lung & ((u - vu) ** 2 + (v - vv) ** 2 < _u(rng, 1.5, 3.5) ** 2)] = tones.blood * 0.6


def _paint_abdomen(sl: _Slice, p: dict, tones: _Tones, f_body: float, inside: np.ndarray) -> None:
    """Liver and stomach (gas or fluid), appearing and growing towards the apex."""
    u, v, img = sl.u, sl.v, sl.img
    lu_, lv_, lau_, lav_, start = p["liver"]
    if f_body > start:
        grow = np.sqrt((f_body - start) / (1 - start))
        img[(ellipse(u, v, lu_, lv_, lau_ * grow, lav_ * grow, 0.3) < 1) & inside] = tones.liver
    su_, sv_, sr_, sstart, gas = p["stomach"]
    if f_body > sstart:
        stomach = (ellipse(u, v, su_, sv_, sr_ * 1.2, sr_) < 1) & inside
        img[stomach] = p["lung_int"] if gas else tones.blood * 0.8


def _paint_spine_and_aorta(sl: _Slice, p: dict, tones: _Tones, inside: np.ndarray) -> None:
    """Paraspinal muscles, vertebral body (cortex and marrow), spinal canal and the descending aorta."""
    u, v, img = sl.u, sl.v, sl.img
    spu, spv, spr = p["spine"]
    spine_r = np.hypot(u - spu, v - spv)
    paraspinal = (ellipse(u, v, spu - 25, spv + 14, 18, 13) < 1) | (ellipse(u, v, spu + 25, spv + 14, 18, 13) < 1)
    img[paraspinal & inside] = tones.muscle
    img[spine_r < spr] = 0.1
    img[spine_r < spr - 2.5] = p["marrow"]
    img[np.hypot(u - spu, v - (spv + spr + 6)) < 5] = tones.blood * 0.9  # spinal canal (CSF)
    aou, aov, aor = p["aorta"]
    img[np.hypot(u - aou, v - aov) < aor] = tones.blood * p["aorta_rel"]


def _lv_radii(p: dict, f: float, es: bool) -> tuple[float, float]:
    """Mean endocardial radius and wall thickness (mm) at heart position ``f`` (0 base, 1 apex). At ES the
    cavity shrinks by the patient's ratio and the wall thickens so that the myocardial area is kept."""
    profile = max(1.0 - f ** p["taper"], 0.0) ** 0.5
    r_endo_ed, t_ed = p["endo"] * profile, p["thick"] * (1 + 0.25 * f)
    if es:
        r_endo = p["es_ratio"] * r_endo_ed
        t = np.sqrt(r_endo**2 + (r_endo_ed + t_ed) ** 2 - r_endo_ed**2) - r_endo
    else:
        r_endo, t = r_endo_ed, t_ed
    return r_endo, t


def _paint_rv(
    rng: np.random.Generator,
    sl: _Slice,
    p: dict,
    tones: _Tones,
    f: float,
    es: bool,
    centre: tuple[float, float],
    r_epi_mean: float,
    outside_lv: np.ndarray,
    epi: np.ndarray,
) -> None:
    """The right ventricle: an ellipse beside the LV, minus the LV (the septum belongs to the LV myocardium),
    with a thin unlabelled free wall; it ends before the apex and shrinks at ES."""
    u, v = sl.u, sl.v
    rv_scale = max(1.0 - (f / p["rv_end"]) ** 2, 0.0) ** 0.5 if f < p["rv_end"] else 0.0
    if rv_scale > 0:
        area = np.sqrt(p["rv_es"]) if es else 1.0
        ang = p["rv_angle"]
        cu = centre[0] + p["rv_offset"] * r_epi_mean * np.cos(ang)
        cv = centre[1] + p["rv_offset"] * r_epi_mean * np.sin(ang)
        depth = p["rv_depth"] * r_epi_mean * rv_scale * area
        span = p["rv_width"] * r_epi_mean * rv_scale * area
        rv_r = ellipse(u, v, cu, cv, depth, span, ang)
        rv_theta = np.arctan2(v - cv, u - cu)
        bound = 1 + p["rv_shape"](rv_theta)
        rv_cavity = (rv_r < bound) & outside_lv
        rv_outer = ellipse(u, v, cu, cv, depth + p["rv_wall"], span + p["rv_wall"], ang) < bound
        sl.img[rv_outer & ~epi] = tones.myo * _u(rng, 0.9, 1.2)
        sl.img[rv_cavity] = tones.blood
        sl.lab[rv_cavity] = 1


def _paint_heart(
    rng: np.random.Generator, sl: _Slice, p: dict, tones: _Tones, f: float, es: bool, centre: tuple[float, float]
) -> None:
    """Pericardial fat, RV (label 1), LV myocardium (label 2) and LV cavity (label 3) with papillary muscles,
    which are labelled LV as in ACDC."""
    u, v, img, lab = sl.u, sl.v, sl.img, sl.lab
    hu, hv = centre
    du, dv = u - hu, v - hv
    rr, theta = np.hypot(du, dv), np.arctan2(dv, du)
    r_endo, t = _lv_radii(p, f, es)
    endo_r = r_endo * (1 + p["endo_shape"](theta) + p["trabeculae"](theta))
    wall = np.full_like(theta, t)
    if p["thinning"] is not None:  # MINF: a regional thinning of the wall (the infarct)
        depth, middle, width_ = p["thinning"]
        wall *= 1 - depth * np.exp(-0.5 * (np.angle(np.exp(1j * (theta - middle))) / (width_ / 2)) ** 2)
    epi_r = r_endo * (1 + p["endo_shape"](theta)) + wall * (1 + p["epi_shape"](theta))
    epi = rr < epi_r
    # pericardial fat: a patchy arc outside the epicardium
    pf_centre, pf_width, pf_thick = p["pericardial_fat"]
    arc = np.abs(np.angle(np.exp(1j * (theta - pf_centre)))) < pf_width / 2
    img[arc & (rr >= epi_r + 1) & (rr < epi_r + 1 + pf_thick)] = p["fat_int"]
    _paint_rv(rng, sl, p, tones, f, es, centre, r_endo + t, ~(rr < epi_r + 1.0), epi)
    img[epi] = tones.myo
    lab[epi] = 2
    cavity = rr < endo_r
    img[cavity] = tones.blood
    lab[cavity] = 3
    if 0.15 < f < 0.85 and r_endo > 6:
        for pa, pr in p["papillary"]:
            pu, pv = hu + 0.62 * r_endo * np.cos(pa), hv + 0.62 * r_endo * np.sin(pa)
            img[cavity & (np.hypot(u - pu, v - pv) < pr * r_endo * 1.4)] = tones.myo * 1.1


def _acdc_slice(
    rng: np.random.Generator,
    p: dict,
    u: np.ndarray,
    v: np.ndarray,
    k: int,
    es: bool,
    jitter: tuple[float, float],
    tones: _Tones,
) -> tuple[np.ndarray, np.ndarray]:
    """Slice ``k`` (0 at the base) of a frame: float32 image and uint8 label, (H, W), before image formation."""
    f_body = k / max(p["num_slices"] - 1, 1)  # position in the stack; the heart's below
    f = k / max(p["heart_slices"] - 1, 1)  # 0 at the base, 1 at the apex, beyond it below the apex
    if es:
        f = f / p["shorten"]  # the heart is shorter at ES: its apical slices are empty
    sl = _Slice(u, v, np.zeros(u.shape, dtype=np.float32), np.zeros(u.shape, dtype=np.uint8))
    body_r, fat_in, muscle_in = _paint_body_wall(sl, p, tones)
    _paint_lungs(rng, sl, p, tones, f_body, body_r < muscle_in)
    _paint_abdomen(sl, p, tones, f_body, body_r < fat_in)
    _paint_spine_and_aorta(sl, p, tones, body_r < fat_in)
    if 0 <= f <= 1:
        centre = (p["heart"][0] + p["drift"][0] * k + jitter[0], p["heart"][1] + p["drift"][1] * k + jitter[1])
        _paint_heart(rng, sl, p, tones, f, es, centre)
    return sl.img, sl.lab


def _form_image(rng: np.random.Generator, p: dict, volume: np.ndarray, label: np.ndarray) -> np.ndarray:
    """The acquired int16 image of a painted (S, H, W) volume: inflow inhomogeneity in the LV cavity, tissue
    texture, partial-volume blur, smooth multiplicative bias field, gain and Rician noise."""
    inflow = smooth_field(rng, volume.shape, (2, 3, 3), 0.9, 1.08)
    volume = np.where(label == 3, volume * inflow, volume)
    volume *= smooth_field(rng, volume.shape, (2, 14, 14), 0.88, 1.12)  # tissue texture
    volume = gaussian_blur(volume, p["blur"])
    bias = smooth_field(rng, volume.shape, (2, 3, 3), 1 - p["bias"], 1 + p["bias"])
    signal = volume * bias * p["gain"]
    noisy = rician(rng, signal, p["noise"] * p["gain"])
    return np.clip(np.rint(noisy), 0, 32767).astype(np.int16)


def _acdc_frame(rng: np.random.Generator, p: dict, phase: str) -> tuple[np.ndarray, np.ndarray]:
    """One frame: int16 image and uint8 label volumes, shape (H, W, S) (NIfTI x, y, z)."""
    u, v = _view_coordinates(p)
    es = phase == "ES"
    jitter = (_u(rng, -3, 3), _u(rng, -3, 3)) if es else (0.0, 0.0)  # the heart moves a little between frames
    tones = _frame_tones(rng, p, es)
    images, labels = [], []
    for k in range(p["num_slices"]):
        img, lab = _acdc_slice(rng, p, u, v, k, es, jitter, tones)
        images.append(img)
        labels.append(lab)
    label = np.stack(labels)  # (S, H, W)
    image = _form_image(rng, p, np.stack(images), label)
    return np.ascontiguousarray(image.transpose(1, 2, 0)), np.ascontiguousarray(label.transpose(1, 2, 0))


# ------------------------------------------------------------------------------------------------ files


def _write_nifti(path: pathlib.Path, array: np.ndarray, affine: np.ndarray) -> None:
    from segmime_jax.data.acdc import import_nibabel

    nib = import_nibabel()
    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm", "sec")
    nib.save(image, os.fspath(path))


def _writeacdc_patient(
    folder: pathlib.Path, name: str, rng: np.random.Generator, group: str, scale: float, zoom: float
) -> None:
    p = acdc_patient(rng, group, scale, zoom)
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


def write_synthetic_acdc(
    out_dir: str | os.PathLike,
    *,
    cases: int = 20,
    seed: int = 0,
    testing_cases: int = 0,
    scale: float = 1.0,
    zoom: float = 1.0,
) -> pathlib.Path:
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
        raise ValueError(
            f"need cases >= 1, testing_cases >= 0, scale > 0, zoom >= 1; got {cases}, {testing_cases}, {scale}, {zoom}"
        )
    if cases > 100 and testing_cases:
        raise ValueError("with testing_cases, at most 100 training cases (testing starts at patient101)")
    out_dir = check_new_folder(out_dir)
    with atomic_directory(out_dir) as tmp:
        for subset, count, first in (("training", cases, 1), ("testing", testing_cases, 101)):
            for i in range(count):
                number = first + i
                # groups balanced within each block of 5 consecutive patients, whatever the count
                block = np.random.default_rng([seed, 1_000_003, first, i // 5]).permutation(len(ACDC_GROUP_NAMES))
                group = ACDC_GROUP_NAMES[block[i % 5]]
                name = f"patient{number:03d}"
                _writeacdc_patient(tmp / subset / name, name, np.random.default_rng([seed, number]), group, scale, zoom)
    return out_dir
