"""The gradient study itself (paper §2.2, Figure 1, Eq. 7): every loss differentiated on one slice, checked against
its closed form, and the files written; plus the Eq. 7 sweep over a growing object."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from segmime_jax import gradients as G
from segmime_jax import losses as L
from segmime_jax.atomic_files import atomic_files_into, write_json_atomic
from segmime_jax.paper.gradient_study import figures
from segmime_jax.paper.gradient_study.inputs import PHANTOM_CLASSES, disc, noisy_prediction
from segmime_jax.paper.gradient_study.result import GradientStudyResult, LossGradientRow, side_summary
from segmime_jax.paper.gradient_study.table import format_table

#: Files written only with a bound sweep; a run without one deletes those of an earlier run.
_OPTIONAL_FILES = ("bound.png", "bound.json")


@dataclasses.dataclass(frozen=True)
class StudyLoss:
    """A loss of the study: its key, display name, paper equation, loss function (:mod:`segmime_jax.losses`) and
    closed-form gradient (:mod:`segmime_jax.gradients`)."""

    key: str
    label: str
    equation: str
    loss: Callable[..., jax.Array]
    closed_form: Callable[..., jax.Array]


def study_losses() -> tuple[StudyLoss, ...]:
    """The losses compared, each with the closed form its ``jax.grad`` is checked against.

    Returns:
      CE (paper Eq. 4), Dice (Eq. 3, gradient Eq. 6), generalized Dice (Sudre et al. 2017), the mime with
      ``a = 1.9``, ``b = 0.1`` (Eq. 8-9), the negative mime (Eq. 10) and the Dice surrogate (Eq. 6's two values
      used as the mime weights of Eq. 9, whose gradient is Dice's).
    """
    return (
        StudyLoss("ce", "CE", "Eq. 4", L.cross_entropy, G.cross_entropy_gradient),
        StudyLoss("dsc", "Dice", "Eq. 3, 6", L.dice_loss, G.dice_gradient),
        StudyLoss("gdl", "GDL", "Sudre 2017", L.generalized_dice_loss, G.generalized_dice_gradient),
        StudyLoss("mime", "Mime (a=1.9, b=0.1)", "Eq. 8-9", L.mime_loss, G.mime_gradient),
        StudyLoss("nm", "Negative mime", "Eq. 10", L.negative_mime_loss, G.negative_mime_gradient),
        StudyLoss("surrogate", "Dice surrogate", "Eq. 6 as Eq. 9", L.dice_surrogate_loss, G.dice_gradient),
    )


def bound_sweep(
    size: int = 256,
    *,
    points: int = 12,
    seed: int = 0,
    gain: float = 6.0,
    noise: float = 1.0,
    blur: float = 1.5,
) -> list[dict[str, float]]:
    """Paper Eq. 7 as the object grows: ``|∂L_DSC/∂s| ≤ 2/U`` measured on a disc of increasing radius.

    Per radius (2 px to ``0.45·size``, geometric steps): a disc centred in a ``size × size`` image, a noisy
    prediction of it (:func:`~segmime_jax.paper.gradient_study.noisy_prediction`, two classes, seed
    ``seed + j`` for the ``j``-th radius) and the Dice loss of the disc class alone (one image, one class: no
    averaging, so the bound is exactly ``2/(U+ε)``), differentiated with ``jax.grad``.

    Args:
      size: pixels per side.
      points: number of radii.
      seed: seed of the first prediction's noise.
      gain: logit margin of the true class (see ``noisy_prediction``).
      noise: standard deviation of the logit noise.
      blur: Gaussian blur of the one-hot logits, in pixels at 256×256.

    Returns:
      ``points`` dicts, by growing radius, with ``radius``, ``object_pixels``, ``union`` (``U``),
      ``intersection`` (``I``), ``bound`` (``2/(U+ε)``), ``max_abs_gradient`` and ``min_abs_gradient``
      (``max``/``min |∂L/∂s|`` over the disc class's map).
    """
    rows = []
    radii = np.geomspace(2.0, 0.45 * size, points)
    for j, radius in enumerate(radii):
        labels = disc((size, size), (size / 2, size / 2), radius).astype(np.uint8)
        probs = noisy_prediction(labels, 2, seed=seed + j, gain=gain, noise=noise, blur=blur)
        target = np.eye(2, dtype=np.float32)[labels]
        p, y = jnp.asarray(probs)[None], jnp.asarray(target)[None]
        grad = G.loss_gradient(L.dice_loss, p, y, classes=(1,))
        inter, union = G.intersection_union(p, y, classes=(1,))
        bound = G.dice_gradient_bound(p, y, classes=(1,))[0, 1]
        rows.append(
            {
                "radius": float(radius),
                "object_pixels": int(labels.sum()),
                "union": float(union[0, 0]),
                "intersection": float(inter[0, 0]),
                "bound": float(bound),
                "max_abs_gradient": float(jnp.max(jnp.abs(grad[..., 1]))),
                "min_abs_gradient": float(jnp.min(jnp.abs(grad[..., 1]))),
            }
        )
    return rows


def _loss_rows(s: jax.Array, y: jax.Array, k: int) -> tuple[list[LossGradientRow], dict[str, np.ndarray]]:
    """Each study loss's ``jax.grad`` on ``s`` ``(1, H, W, K)`` against one-hot ``y``: its table row for class
    ``k`` and its ``(H, W)`` map of class ``k``, by loss key."""
    num_classes = s.shape[-1]
    rows, maps = [], {}
    for spec in study_losses():
        auto = G.loss_gradient(spec.loss, s, y)
        closed = spec.closed_form(s, y)
        maps[spec.key] = np.asarray(auto[0, ..., k])
        summary = G.gradient_values(auto, y, classes=(k,))[0]
        per_class = {
            conv: [float(G.dynamic_range_db(auto[..., j], convention=conv)) for j in range(num_classes)]
            for conv in G.DYNAMIC_RANGE_CONVENTIONS
        }
        rows.append(
            LossGradientRow(
                key=spec.key,
                label=spec.label,
                equation=spec.equation,
                foreground=side_summary(summary, "foreground"),
                background=side_summary(summary, "background"),
                dynamic_range_db={conv: per_class[conv][k] for conv in G.DYNAMIC_RANGE_CONVENTIONS},
                dynamic_range_db_per_class=per_class,
                max_abs_diff_closed_form=float(jnp.max(jnp.abs(auto - closed))),
                max_abs_gradient=float(jnp.max(jnp.abs(auto))),
            )
        )
    return rows, maps


def _write_files(
    out_dir: Path,
    result: GradientStudyResult,
    labels: np.ndarray,
    probs: np.ndarray,
    maps: Mapping[str, np.ndarray],
    *,
    dpi: int,
) -> None:
    """Write the study's files into ``out_dir`` together (:func:`~segmime_jax.atomic_files.atomic_files_into`)
    and record them in ``result.files``; a run without a bound sweep deletes an earlier run's ``bound.*``."""
    k, convention = result.class_index, result.convention
    name = result.class_names[k]
    names = ["figure1.png", "gradient_maps.png", "gradient_table.md", "gradient_table.json"]
    if result.bound_rows:
        names += list(_OPTIONAL_FILES)
    with atomic_files_into(out_dir, stale=_OPTIONAL_FILES) as staging:
        box = figures.crop_box(labels)
        shown = {key: m[box] for key, m in maps.items()}
        dr = {key: float(G.dynamic_range_db(jnp.asarray(m), convention=convention)) for key, m in maps.items()}
        figures.plot_figure1(
            staging / "figure1.png",
            (labels == k).astype(np.float32)[box],
            probs[..., k][box],
            shown["dsc"],
            shown["ce"],
            class_name=name,
            dr_dice=dr["dsc"],
            dr_ce=dr["ce"],
            convention=convention,
            dpi=dpi,
        )
        figures.plot_gradient_maps(
            staging / "gradient_maps.png",
            [(r.label, shown[r.key], r.dynamic_range_db["power"]) for r in result.rows],
            class_name=name,
            dpi=dpi,
        )
        if result.bound_rows:
            figures.plot_bound(staging / "bound.png", result.bound_rows, dpi=dpi)
            write_json_atomic(staging / "bound.json", result.bound_rows, indent=2)
        result.files = {n.replace(".", "_"): out_dir / n for n in names}
        (staging / "gradient_table.md").write_text(format_table(result), encoding="utf-8")
        write_json_atomic(staging / "gradient_table.json", result.to_json(), indent=2)


def run_gradient_study(
    out_dir: str | os.PathLike,
    labels: np.ndarray,
    probs: np.ndarray,
    *,
    class_names: Sequence[str] = PHANTOM_CLASSES,
    class_index: int = 3,
    convention: str = "power",
    bound_rows: Sequence[Mapping[str, float]] = (),
    source: Mapping[str, Any] | None = None,
    dpi: int = 110,
) -> GradientStudyResult:
    """Differentiate every loss of :func:`study_losses` on one slice and write the study into ``out_dir``.

    The losses see one image and all ``K`` classes (as the paper's ACDC runs, background included); the figure
    and table show class ``k = class_index``: the gradient ``∂L/∂s^(k)`` on the ground truth and elsewhere, its
    dynamic range (paper Figure 1: Dice's two values of Eq. 6 against CE's spread), ``I`` and ``U`` (Eq. 5), and
    the largest difference between ``jax.grad`` and the closed form of :mod:`segmime_jax.gradients`. The files
    (``figure1.png``, ``gradient_maps.png``, ``gradient_table.md``, ``gradient_table.json``, and with
    ``bound_rows`` ``bound.png``, ``bound.json``) replace those of an earlier study in ``out_dir``, ``bound.*``
    included; other files there are left alone.

    Args:
      out_dir: the output folder, created if missing.
      labels: ``(H, W)`` class indices.
      probs: ``(H, W, K)`` probabilities (cast to float32).
      class_names: ``K`` class names.
      class_index: the displayed class ``k``.
      convention: default dB convention of the dynamic range, ``"power"`` (``10·log10``) or ``"amplitude"``
        (``20·log10``); both are reported.
      bound_rows: :func:`bound_sweep`'s rows, or none to skip ``bound.*``.
      source: what the slice is, recorded in the JSON (default ``{"kind": "array"}``); its ``description``, if
        any, heads the markdown report.
      dpi: resolution of the figures.

    Returns:
      The :class:`~segmime_jax.paper.gradient_study.GradientStudyResult`, with ``files`` naming what was written.
    """
    if convention not in G.DYNAMIC_RANGE_CONVENTIONS:
        raise ValueError(f"convention must be one of {G.DYNAMIC_RANGE_CONVENTIONS}; got {convention!r}")
    labels = np.asarray(labels)
    probs = np.asarray(probs, np.float32)
    num_classes = probs.shape[-1]
    if probs.shape[:-1] != labels.shape or labels.ndim != 2:
        raise ValueError(f"labels (H, W) and probs (H, W, K) disagree: {labels.shape} vs {probs.shape}")
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
    if not 0 <= class_index < num_classes:
        raise ValueError(f"class_index {class_index} out of range for classes {tuple(class_names)}")
    k = class_index
    y = jnp.asarray(np.eye(num_classes, dtype=np.float32)[labels])[None]
    s = jnp.asarray(probs)[None]
    rows, maps = _loss_rows(s, y, k)
    inter, union = (float(v[0, 0]) for v in G.intersection_union(s, y, classes=(k,)))
    fg_probs = probs[..., k][labels == k]
    result = GradientStudyResult(
        class_names=tuple(class_names),
        class_index=k,
        convention=convention,
        source=dict(source or {"kind": "array"}),
        intersection=inter,
        union=union,
        soft_dice=2 * inter / union,
        dice_value_foreground=-2 * (union - inter) / union**2,
        dice_value_background=2 * inter / union**2,
        dice_bound=2 / union,
        averaging=1.0 / num_classes,
        foreground_prob_min=float(fg_probs.min()) if fg_probs.size else float("nan"),
        foreground_prob_max=float(fg_probs.max()) if fg_probs.size else float("nan"),
        rows=rows,
        bound_rows=[dict(b) for b in bound_rows],
        files={},
    )
    _write_files(Path(out_dir), result, labels, probs, maps, dpi=dpi)
    return result
