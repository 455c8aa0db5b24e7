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

Both writers take ``scale`` (in-plane matrix size at a constant field of view) and ``zoom`` (field of view
divided at a constant matrix size); see their docstrings.

Command line: ``python -m segmime_jax.data.synthetic {acdc,promise12} OUT_DIR [--cases N] [--seed S]
[--scale X] [--zoom Z] [--testing-cases N]`` (``--testing-cases``: ACDC only).

Modules: :mod:`~segmime_jax.data.synthetic.acdc` and :mod:`~segmime_jax.data.synthetic.promise12` (the two
generators and writers), :mod:`~segmime_jax.data.synthetic.shapes` (their shared drawing and randomness
helpers), :mod:`~segmime_jax.data.synthetic.cli` (the command line).
"""

from segmime_jax.data.synthetic.acdc import write_synthetic_acdc
from segmime_jax.data.synthetic.acdc_patient import ACDC_GROUP_NAMES, ACDC_SIZES
from segmime_jax.data.synthetic.cli import main
from segmime_jax.data.synthetic.promise12 import PROMISE12_SIZES, write_synthetic_promise12

__all__ = [
    "ACDC_GROUP_NAMES",
    "ACDC_SIZES",
    "PROMISE12_SIZES",
    "main",
    "write_synthetic_acdc",
    "write_synthetic_promise12",
]
