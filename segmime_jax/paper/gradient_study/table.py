"""The gradient study's text outputs: the markdown report ``gradient_table.md`` (paper §2.2, Figure 1, Eq. 6-7)
and the terminal summary."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from segmime_jax.paper.gradient_study.result import PAPER_DYNAMIC_RANGE_DB, GradientStudyResult


def _fmt(x: float) -> str:
    if x == 0:
        return "0"
    return f"{x:.4g}" if 1e-3 <= abs(x) < 1e4 else f"{x:.3e}"


def _fmt_side(side: Mapping[str, Any]) -> str:
    if side["pixels"] == 0:
        return "(no pixel)"
    if side["distinct"] == 1:
        return f"{_fmt(side['min'])} (1 value)"
    return f"{side['distinct']} values in [{_fmt(side['min'])}, {_fmt(side['max'])}]"


def format_table(result: GradientStudyResult) -> str:
    """The study's markdown report (what ``gradient_table.md`` holds).

    ``I``, ``U`` and the soft DSC of the displayed class with Eq. 6's two Dice values and Eq. 7's bound ``2/U``;
    the dynamic ranges predicted from the soft DSC (Dice) and from the probabilities (CE) against the paper's
    ≈1.5 dB / ≈10 dB; per loss, the gradient on the ground truth and elsewhere, its dynamic range in both
    conventions and ``max |jax.grad − closed form|``; every loss's range per class; the Eq. 7 sweep.

    Args:
      result: what :func:`~segmime_jax.paper.gradient_study.run_gradient_study` measured.

    Returns:
      Markdown text, ending with a newline.
    """
    k = result.class_index
    name = result.class_names[k]
    lines = [
        f"# Gradient study (paper §2.2, Figure 1): class {k} ({name})",
        "",
        f"Source: {result.source.get('description', result.source.get('kind'))}. "
        f"Gradients of each loss wrt. the probabilities, all {len(result.class_names)} classes in the loss "
        f"(averaging factor 1/(B·|K|) = {result.averaging:g}); values shown for class {name}.",
        "",
        f"I = {result.intersection:.2f}, U = {result.union:.2f}, soft DSC 2I/U = {result.soft_dice:.4f}. "
        f"Eq. 6 (unscaled): −2(U−I)/U² = {_fmt(result.dice_value_foreground)} on the ground truth, "
        f"2I/U² = {_fmt(result.dice_value_background)} elsewhere; Eq. 7 bound 2/U = {_fmt(result.dice_bound)}.",
        "",
        "Dynamic range = max/min non-zero |∂L/∂s| over the class map; power: 10·log10, amplitude: 20·log10. "
        f"Default convention here: {result.convention}. Paper (Figure 1): ≈{PAPER_DYNAMIC_RANGE_DB['dsc']} dB Dice, "
        f"≈{PAPER_DYNAMIC_RANGE_DB['ce']} dB CE (convention not stated).",
        "",
        "Both ranges follow from two numbers (power convention; double them for amplitude): Dice's is "
        f"10·log10((U−I)/I) = 10·log10(2/DSC − 1) = {result.dice_range_from_dsc_db:.2f} dB from the soft DSC alone; "
        f"CE's is 10·log10(max s / min s) over the ground truth = {result.ce_range_from_probs_db:.2f} dB "
        f"(s from {result.foreground_prob_min:.4f} to {result.foreground_prob_max:.4f}). The paper's 1.5 dB / 10 dB "
        "thus mean a soft DSC of 0.83 and ground-truth probabilities spanning a factor 10 (power), or a soft DSC "
        "of 0.91 and a factor 3.2 (amplitude).",
        "",
        "| loss | paper | ∂L/∂s on ground truth | ∂L/∂s elsewhere | range (power) dB | range (amplitude) dB "
        "| max \\|jax.grad − closed form\\| (relative) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result.rows:
        lines.append(
            f"| {r.label} | {r.equation} | {_fmt_side(r.foreground)} | {_fmt_side(r.background)} "
            f"| {r.dynamic_range_db['power']:.2f} | {r.dynamic_range_db['amplitude']:.2f} "
            f"| {r.max_abs_diff_closed_form:.2e} ({r.relative_diff_closed_form:.1e}) |"
        )
    lines += [
        "",
        f"Dice/CE ratio of the ranges (independent of the convention): {result.dice_to_ce_log_ratio:.3f} "
        f"(paper: {PAPER_DYNAMIC_RANGE_DB['dsc'] / PAPER_DYNAMIC_RANGE_DB['ce']:.3f}).",
        "",
        f"Per class, dynamic range ({result.convention}, dB):",
        "",
        "| loss | " + " | ".join(result.class_names) + " |",
        "|---|" + "---|" * len(result.class_names),
    ]
    for r in result.rows:
        cells = " | ".join(f"{v:.2f}" for v in r.dynamic_range_db_per_class[result.convention])
        lines.append(f"| {r.label} | {cells} |")
    lines += [
        "",
        "Eq. 7 as the object grows (one image, one class; `bound.png`):",
        "",
        "| disc radius (px) | U | 2/U | max \\|∂L/∂s\\| | max/bound |",
        "|---|---|---|---|---|",
    ]
    for b in result.bound_rows:
        lines.append(
            f"| {b['radius']:.1f} | {b['union']:.1f} | {_fmt(b['bound'])} | {_fmt(b['max_abs_gradient'])} "
            f"| {b['max_abs_gradient'] / b['bound']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def format_summary(result: GradientStudyResult) -> str:
    """A few lines for the terminal: the Dice and CE dynamic ranges against the paper's, the number of distinct
    Dice gradient values (Eq. 6: one on the ground truth, one elsewhere), the largest ``jax.grad`` / closed-form
    difference, and where the files are.

    Args:
      result: what :func:`~segmime_jax.paper.gradient_study.run_gradient_study` measured.

    Returns:
      Text lines joined by newlines, no final newline.
    """
    dsc, ce = result.row("dsc"), result.row("ce")
    lines = [
        f"Gradient study, class {result.class_index} ({result.class_names[result.class_index]}), "
        f"U = {result.union:.1f}, soft DSC {result.soft_dice:.3f}",
        f"  dynamic range Dice: {dsc.dynamic_range_db['power']:.2f} dB (power) / "
        f"{dsc.dynamic_range_db['amplitude']:.2f} dB (amplitude)   [paper ≈1.5 dB]",
        f"  dynamic range CE:   {ce.dynamic_range_db['power']:.2f} dB (power) / "
        f"{ce.dynamic_range_db['amplitude']:.2f} dB (amplitude)   [paper ≈10 dB]",
        f"  Dice gradient distinct values on class: {dsc.foreground['distinct']} on ground truth, "
        f"{dsc.background['distinct']} elsewhere; max |jax.grad - closed form| over losses: "
        f"{max(r.max_abs_diff_closed_form for r in result.rows):.2e}",
    ]
    for key, path in result.files.items():
        lines.append(f"  wrote {key}: {path}")
    return "\n".join(lines)
