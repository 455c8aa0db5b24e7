"""The gradient study of paper §2.2 and Figure 1: what each loss's gradient looks like on one noisy slice.

:func:`run_gradient_study` takes a label map ``y`` (a drawn cardiac phantom, :func:`cardiac_phantom`, or a real
ACDC slice, :func:`acdc_slice`) and a noisy prediction ``s`` (:func:`noisy_prediction`: a softmax over blurred
one-hot logits plus i.i.d. noise and, optionally, one missed and one spurious blob of the displayed class), and
writes into its output folder:

- ``figure1.png``: paper Figure 1 for one class ``k``, cropped around the objects: (a) ``y^(k)``, (b) ``s^(k)``,
  (c) ``∂L_DSC/∂s^(k)``, (d) ``∂L_CE/∂s^(k)``; ``gradient_maps.png``: the same class's gradient of every loss
  (CE, Dice, GDL, mime, negative mime, Dice surrogate);
- ``gradient_table.md`` / ``gradient_table.json``: per loss, the values of ``∂L/∂s^(k)`` on the ground truth and
  elsewhere (distinct count, min, max), the dynamic range in dB in both conventions (paper: ≈1.5 dB Dice,
  ≈10 dB CE), and the largest difference between ``jax.grad`` and the closed form of
  :mod:`segmime_jax.gradients`; per class, every loss's dynamic range; the Eq. 7 sweep;
- ``bound.png`` / ``bound.json`` (with :func:`bound_sweep`'s rows): Eq. 7, the bound ``2/U`` against the
  measured largest and smallest ``|∂L_DSC/∂s|`` for a disc of growing radius (one image, one class: no
  averaging, so the bound is ``2/(U+ε)``).

The files are written into a staging folder inside the output folder and moved in together at the end
(:func:`segmime_jax.atomic_files.atomic_files_into`): a failed run leaves the folder's files as they were, every
file is whole, other files are left alone, and the ``bound.*`` files of an earlier run are deleted by a run
without a sweep. Figures use matplotlib's Agg backend.

Modules: :mod:`.inputs` (the label maps and predictions), :mod:`.study` (the losses, the Eq. 7 sweep, the study),
:mod:`.result` (what was measured and its JSON form), :mod:`.table` (the markdown report and the summary),
:mod:`.figures` (the plots).
"""

from segmime_jax.paper.gradient_study.inputs import (
    PHANTOM_CLASSES,
    acdc_slice,
    cardiac_phantom,
    error_blobs,
    noisy_prediction,
)
from segmime_jax.paper.gradient_study.result import PAPER_DYNAMIC_RANGE_DB, GradientStudyResult, LossGradientRow
from segmime_jax.paper.gradient_study.study import StudyLoss, bound_sweep, run_gradient_study, study_losses
from segmime_jax.paper.gradient_study.table import format_summary, format_table

__all__ = [
    "PAPER_DYNAMIC_RANGE_DB",
    "PHANTOM_CLASSES",
    "GradientStudyResult",
    "LossGradientRow",
    "StudyLoss",
    "acdc_slice",
    "bound_sweep",
    "cardiac_phantom",
    "error_blobs",
    "format_summary",
    "format_table",
    "noisy_prediction",
    "run_gradient_study",
    "study_losses",
]
