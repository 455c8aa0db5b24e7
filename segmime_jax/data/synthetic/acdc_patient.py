"""The synthetic ACDC-like patients: scanner sizes, pathology groups and each patient's parameters (anatomy,
acquisition, Info.cfg values), drawn from one generator in a fixed order. The frames are drawn from these
parameters by :mod:`segmime_jax.data.synthetic.acdc`."""

from __future__ import annotations

import numpy as np

from segmime_jax.data.synthetic.shapes import harmonics
from segmime_jax.data.synthetic.shapes import uniform as _u  # short: the parameter table below is mostly draws

ACDC_SIZES: tuple[tuple[int, int], ...] = (
    (216, 256),
    (256, 216),
    (232, 256),
    (256, 232),
    (224, 256),
    (256, 256),
    (208, 256),
    (240, 240),
)

# Base endocardial radius (mm), wall thickness (mm), ES/ED cavity radius ratio, RV size factor.
_GROUPS = {
    "NOR": {"endo": (22.0, 27.0), "thick": (7.0, 10.0), "es": (0.60, 0.72), "rv": (0.95, 1.05)},
    "DCM": {"endo": (30.0, 37.0), "thick": (5.0, 7.0), "es": (0.84, 0.94), "rv": (0.9, 1.1)},
    "HCM": {"endo": (16.0, 21.0), "thick": (13.0, 18.0), "es": (0.42, 0.58), "rv": (0.85, 1.0)},
    "MINF": {"endo": (25.0, 32.0), "thick": (6.0, 9.0), "es": (0.76, 0.88), "rv": (0.9, 1.1)},
    "RV": {"endo": (19.0, 24.0), "thick": (7.0, 9.0), "es": (0.62, 0.74), "rv": (1.35, 1.6)},
}
# This order (not ACDC's NOR, MINF, DCM, HCM, RV) picks each patient's group: changing it changes the dataset.
ACDC_GROUP_NAMES: tuple[str, ...] = tuple(_GROUPS)


def acdc_patient(rng: np.random.Generator, group: str, scale: float, zoom: float = 1.0) -> dict:
    """Per-patient anatomy, acquisition and Info.cfg values (``zoom``: see :func:`write_synthetic_acdc`).

    The draws are made in a fixed order (acquisition and body, heart, surroundings, intensities): the datasets
    written for a seed stay the same only as long as this order does."""
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
        "group": group,
        "shape": (height, width),
        "spacing": spacing,
        "thickness": thickness,
        "num_slices": num_slices,
        "heart_slices": heart_slices,
        "info": {
            "ED": ed,
            "ES": es,
            "Group": group,
            "Height": round(_u(rng, 150, 195), 1),
            "NbFrame": nb_frame,
            "Weight": round(_u(rng, 50, 110), 1),
        },
        "orientation": float(np.deg2rad(rng.choice([0.0, 90.0]) + _u(rng, -20, 20))),
        "origin": (_u(rng, -200, -100), _u(rng, -250, -150), _u(rng, -50, 50)),
        # body
        "body": (body_u, body_v, _u(rng, 140.0, 175.0), a_v),
        "fat": _u(rng, 6.0, 18.0),
        "chest_muscle": _u(rng, 8, 16),
        **_heart_anatomy(rng, group, (heart_u, heart_v), (endo, thick, rv_size), zoom),
        **_surroundings(rng, (heart_u, heart_v), (spine_u, spine_v)),
        **_intensities(rng),
    }


def _heart_anatomy(
    rng: np.random.Generator, group: str, heart: tuple[float, float], sizes: tuple[float, float, float], zoom: float
) -> dict:
    """The heart's position, shape and motion; ``sizes``: the endocardial radius, wall thickness and RV size."""
    g = _GROUPS[group]
    endo, thick, rv_size = sizes
    heart_u, heart_v = heart
    return {
        # the field of view's centre: the body's, moved towards the heart as the field of view shrinks (zoom)
        "view_centre": (heart_u * (1 - 1 / zoom), heart_v * (1 - 1 / zoom)),
        "heart": (heart_u, heart_v),
        "drift": (_u(rng, -2, 2), _u(rng, -2, 2)),
        "endo": endo,
        "thick": thick,
        "taper": _u(rng, 1.6, 2.6),
        "es_ratio": _u(rng, *g["es"]),
        "shorten": _u(rng, 0.84, 0.93),
        "endo_shape": harmonics(rng, (2, 3), 0.06),
        "trabeculae": harmonics(rng, (5, 7, 9), 0.025),
        "epi_shape": harmonics(rng, (2, 3), 0.04),
        "thinning": (_u(rng, 0.45, 0.65), _u(rng, 0, 2 * np.pi), _u(rng, 0.5, 0.9)) if group == "MINF" else None,
        "rv_angle": np.pi + _u(rng, -0.6, 0.2),
        "rv_offset": _u(rng, 0.55, 0.75),
        "rv_width": _u(rng, 1.4, 1.75) * rv_size,
        "rv_depth": _u(rng, 0.9, 1.15) * np.sqrt(rv_size),
        "rv_end": _u(rng, 0.65, 0.9),
        "rv_es": _u(rng, 0.75, 0.9) if group == "RV" else _u(rng, 0.55, 0.72),
        "rv_shape": harmonics(rng, (2, 3, 4), 0.05),
        "rv_wall": _u(rng, 2.0, 3.5),
        "papillary": [(_u(rng, 0.9, 1.4) + k * _u(rng, 1.5, 2.2), _u(rng, 0.1, 0.16)) for k in range(2)],
        "pericardial_fat": (_u(rng, 0, 2 * np.pi), _u(rng, 1.0, 3.0), _u(rng, 2.0, 5.0)),
    }


def _surroundings(rng: np.random.Generator, heart: tuple[float, float], spine: tuple[float, float]) -> dict:
    """Lungs, liver, stomach, spine and aorta, placed relative to the heart and the spine."""
    heart_u, heart_v = heart
    spine_u, spine_v = spine
    return {
        "lungs": [
            (heart_u + _u(rng, 55, 80), heart_v + _u(rng, 10, 30), _u(rng, 40, 55), _u(rng, 65, 85)),
            (heart_u - _u(rng, 70, 90), heart_v + _u(rng, 0, 25), _u(rng, 40, 55), _u(rng, 60, 80)),
        ],
        "liver": (
            heart_u - _u(rng, 40, 70),
            heart_v + _u(rng, 25, 55),
            _u(rng, 60, 90),
            _u(rng, 50, 70),
            _u(rng, 0.15, 0.55),
        ),
        "stomach": (
            heart_u + _u(rng, 50, 80),
            heart_v + _u(rng, 25, 50),
            _u(rng, 18, 32),
            _u(rng, 0.4, 0.8),
            bool(rng.uniform() < 0.5),
        ),
        "spine": (spine_u, spine_v, _u(rng, 13, 17)),
        "aorta": (spine_u + _u(rng, 15, 30), spine_v - _u(rng, 24, 32), _u(rng, 9, 13)),
    }


def _intensities(rng: np.random.Generator) -> dict:
    """Tissue intensities (fractions of the blood signal ~ 1) and the acquisition's gain, noise, bias and blur."""
    return {
        "blood": _u(rng, 0.75, 1.0),
        "myo": _u(rng, 0.2, 0.34),
        "soft": _u(rng, 0.3, 0.45),
        "liver_rel": _u(rng, 0.95, 1.35),
        "muscle_rel": _u(rng, 0.9, 1.25),
        "fat_int": _u(rng, 0.7, 0.95),
        "lung_int": _u(rng, 0.02, 0.08),
        "marrow": _u(rng, 0.35, 0.55),
        "aorta_rel": _u(rng, 0.85, 1.05),
        "gain": _u(rng, 150, 600),
        "noise": _u(rng, 0.02, 0.05),
        "bias": _u(rng, 0.15, 0.3),
        "blur": _u(rng, 0.5, 0.9),
    }
