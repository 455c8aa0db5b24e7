"""What the gradient study measured (paper §2.2, Figure 1, Eq. 6-7): one row per loss and the whole result, with
its JSON form (``gradient_table.json``)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from segmime_jax import gradients as G
from segmime_jax import losses as L

#: The paper's Figure 1 numbers (§2.2): dynamic range of the Dice and CE gradients in dB, convention not stated.
PAPER_DYNAMIC_RANGE_DB = {"dsc": 1.5, "ce": 10.0}


@dataclasses.dataclass(frozen=True)
class LossGradientRow:
    """One loss's gradient on the displayed class (one row of the table).

    ``foreground`` / ``background``: the values of ``∂L/∂s^(k)`` on the ground truth of class ``k`` and elsewhere
    (:func:`side_summary`); ``dynamic_range_db``: convention -> dB for class ``k``; ``dynamic_range_db_per_class``:
    convention -> dB for each class; ``max_abs_diff_closed_form``: ``max |jax.grad − closed form|`` over all
    pixels and classes; ``max_abs_gradient``: ``max |jax.grad|``.
    """

    key: str
    label: str
    equation: str
    foreground: dict[str, Any]
    background: dict[str, Any]
    dynamic_range_db: dict[str, float]
    dynamic_range_db_per_class: dict[str, list[float]]
    max_abs_diff_closed_form: float
    max_abs_gradient: float

    @property
    def relative_diff_closed_form(self) -> float:
        """``max |jax.grad − closed form| / max |jax.grad|`` (0 for a zero gradient)."""
        return self.max_abs_diff_closed_form / self.max_abs_gradient if self.max_abs_gradient else 0.0


@dataclasses.dataclass
class GradientStudyResult:
    """Everything :func:`~segmime_jax.paper.gradient_study.run_gradient_study` measured, and where it wrote it.

    ``intersection`` / ``union``: ``I = Σ s·y`` and ``U = Σ (s + y)`` of the displayed class (paper Eq. 5);
    ``dice_value_foreground`` / ``dice_value_background``: the two values of Eq. 6, unscaled, ``−2(U−I)/U²`` and
    ``2I/U²``; ``dice_bound``: Eq. 7's ``2/U``, unscaled; ``averaging``: the factor ``1/(B·|K|)`` of the loss
    actually differentiated; ``foreground_prob_min`` / ``_max``: ``s^(k)`` over the ground truth of class ``k``
    (NaN when the class is absent); ``bound_rows``: :func:`~segmime_jax.paper.gradient_study.bound_sweep`'s rows;
    ``files``: file key (``"figure1_png"``, ...) -> path.
    """

    class_names: tuple[str, ...]
    class_index: int
    convention: str
    source: dict[str, Any]
    intersection: float
    union: float
    soft_dice: float
    dice_value_foreground: float
    dice_value_background: float
    dice_bound: float
    averaging: float
    foreground_prob_min: float
    foreground_prob_max: float
    rows: list[LossGradientRow]
    bound_rows: list[dict[str, float]]
    files: dict[str, Path]

    def row(self, key: str) -> LossGradientRow:
        """The row of the loss ``key`` (``"ce"``, ``"dsc"``, ...); ``KeyError`` if there is none."""
        for r in self.rows:
            if r.key == key:
                return r
        raise KeyError(key)

    @property
    def dice_range_from_dsc_db(self) -> float:
        """Dice range predicted from the soft DSC alone: ``10·log10((U−I)/I) = 10·log10(2/DSC − 1)`` (power)."""
        return 10 * math.log10(2 / self.soft_dice - 1) if self.soft_dice > 0 else float("inf")

    @property
    def ce_range_from_probs_db(self) -> float:
        """CE range predicted from the probabilities: ``10·log10(max s / min s)`` on the ground truth (power)."""
        return 10 * math.log10((self.foreground_prob_max + L.CE_EPSILON) / (self.foreground_prob_min + L.CE_EPSILON))

    @property
    def dice_to_ce_log_ratio(self) -> float:
        """``DR_Dice / DR_CE``: the same in both conventions (paper: 1.5/10 = 0.15)."""
        ce = self.row("ce").dynamic_range_db["power"]
        return self.row("dsc").dynamic_range_db["power"] / ce if ce else float("nan")

    def to_json(self) -> dict[str, Any]:
        """The content of ``gradient_table.json``: the fields above, the derived ranges, the paper's numbers."""
        return {
            "class_names": list(self.class_names),
            "class_index": self.class_index,
            "class_name": self.class_names[self.class_index],
            "default_convention": self.convention,
            "conventions": {
                "power": "10*log10(max|g|/min|g|) over non-zero |g|",
                "amplitude": "20*log10(max|g|/min|g|) over non-zero |g|",
            },
            "source": self.source,
            "intersection": self.intersection,
            "union": self.union,
            "soft_dice": self.soft_dice,
            "dice_eq6_foreground": self.dice_value_foreground,
            "dice_eq6_background": self.dice_value_background,
            "dice_eq7_bound": self.dice_bound,
            "averaging_factor": self.averaging,
            "foreground_prob_min": self.foreground_prob_min,
            "foreground_prob_max": self.foreground_prob_max,
            "dice_range_from_dsc_db_power": self.dice_range_from_dsc_db,
            "ce_range_from_probs_db_power": self.ce_range_from_probs_db,
            "paper_dynamic_range_db": PAPER_DYNAMIC_RANGE_DB,
            "dice_to_ce_log_ratio": self.dice_to_ce_log_ratio,
            "paper_dice_to_ce_log_ratio": PAPER_DYNAMIC_RANGE_DB["dsc"] / PAPER_DYNAMIC_RANGE_DB["ce"],
            "losses": [
                {**dataclasses.asdict(r), "relative_diff_closed_form": r.relative_diff_closed_form} for r in self.rows
            ],
            "files": {k: str(v) for k, v in self.files.items()},
        }


def side_summary(summary: G.ClassGradientSummary, side: str) -> dict[str, Any]:
    """One side (``"foreground"``: the ground truth, or ``"background"``) of a class's gradient summary.

    Args:
      summary: :func:`segmime_jax.gradients.gradient_values` for one image and class.
      side: ``"foreground"`` or ``"background"``.

    Returns:
      ``{"pixels", "distinct", "min", "max", "mean", "values"}`` of ``∂L/∂s^(k)`` on that side.
    """
    d = summary.to_dict()
    return {
        "pixels": d[f"{side}_pixels"],
        "distinct": d[f"{side}_distinct"],
        "min": d[f"{side}_min"],
        "max": d[f"{side}_max"],
        "mean": d[f"{side}_mean"],
        "values": d[f"{side}_values"],
    }
