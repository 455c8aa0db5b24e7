"""HD95 and ASSD in mm (segmime_jax.train.surface) against a brute-force point-set computation, closed-form
distances on anisotropic grids, the empty-mask convention, and the original grid of exported volumes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from segmime_jax.data.dataset import SliceDataset, VolumeInfo
from segmime_jax.data.export import prediction_to_original, read_original_labels
from segmime_jax.train.surface import SurfaceEvaluator, class_surface_metrics, hd95_assd, nan_summary


def brute_force(a: np.ndarray, b: np.ndarray, spacing) -> tuple[float, float]:
    """HD95 and ASSD from the definitions, O(|∂A|·|∂B|): surface voxels found by looking at the 2·ndim face
    neighbours (outside the array counts as outside), every pairwise distance between surface voxel centres."""

    def surface_points(mask):
        padded = np.pad(mask, 1)
        inner = np.ones_like(mask)
        for axis in range(mask.ndim):
            for shift in (-1, 1):
                inner &= np.roll(padded, shift, axis=axis)[tuple(slice(1, -1) for _ in range(mask.ndim))]
        return np.argwhere(mask & ~inner) * np.asarray(spacing, np.float64)

    pa, pb = surface_points(a), surface_points(b)
    distances = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))
    d_ab, d_ba = distances.min(1), distances.min(0)
    hd95 = max(np.percentile(d_ab, 95), np.percentile(d_ba, 95))
    return float(hd95), float((d_ab.sum() + d_ba.sum()) / (d_ab.size + d_ba.size))


def ball(shape, spacing, radius, centre_mm=(0.0, 0.0, 0.0)) -> np.ndarray:
    axes = [(np.arange(n) - (n - 1) / 2) * s - c for n, s, c in zip(shape, spacing, centre_mm, strict=True)]
    grids = np.meshgrid(*axes, indexing="ij")
    return sum(g**2 for g in grids) <= radius**2


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.7, 1.3, 2.5), (1.5, 1.5, 10.0)])
def test_equals_brute_force_on_random_blobs(spacing):
    rng = np.random.default_rng(int(10 * sum(spacing)))
    for _ in range(3):
        a = ball((14, 12, 7), spacing, rng.uniform(3, 9), rng.uniform(-3, 3, 3))
        b = ball((14, 12, 7), spacing, rng.uniform(3, 9), rng.uniform(-3, 3, 3))
        b[rng.integers(0, 14), rng.integers(0, 12), rng.integers(0, 7)] = True  # a spurious island
        assert a.any() and b.any()
        np.testing.assert_allclose(hd95_assd(a, b, spacing), brute_force(a, b, spacing), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(hd95_assd(b, a, spacing), hd95_assd(a, b, spacing), rtol=1e-12)


def test_masks_touching_the_array_edge_and_in_2d():
    spacing = (0.8, 2.0)
    a = np.zeros((9, 6), bool)
    a[:5, :] = True  # reaches three edges of the array: they are surface
    b = np.zeros((9, 6), bool)
    b[3:, 2:] = True
    np.testing.assert_allclose(hd95_assd(a, b, spacing), brute_force(a, b, spacing), rtol=1e-12)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.7, 1.0, 1.9), (1.25, 1.25, 5.0), (0.5, 0.9, 2.0)])
@pytest.mark.parametrize("radii", [(8.0, 12.0), (6.0, 16.0)])
def test_concentric_balls_are_their_radii_apart(spacing, radii):
    """Every point of a sphere of radius r1 is r2 − r1 from the concentric sphere of radius r2: the discrete
    surfaces give that within half the largest voxel spacing."""
    r1, r2 = radii
    shape = tuple(int(np.ceil(2 * (r2 + 3) / s)) for s in spacing)
    hd95, assd = hd95_assd(ball(shape, spacing, r1), ball(shape, spacing, r2), spacing)
    assert abs(hd95 - (r2 - r1)) <= 0.5 * max(spacing)
    assert abs(assd - (r2 - r1)) <= 0.5 * max(spacing)


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 3])
def test_box_shifted_by_k_voxels_is_k_spacings_away(axis, k):
    """A box and the same box shifted by k voxels along one axis: the largest surface distance is k times that
    axis's spacing, and the end faces (over 5 % of the surface) are all that far: HD95 = k·s exactly."""
    spacing = (0.6, 1.7, 4.0)
    a = np.zeros((24, 22, 16), bool)
    a[4:16, 5:15, 3:11] = True
    b = np.roll(a, k, axis=axis)
    hd95, assd = hd95_assd(a, b, spacing)
    assert hd95 == pytest.approx(k * spacing[axis], rel=1e-12)
    assert 0 < assd < k * spacing[axis]
    assert assd == pytest.approx(brute_force(a, b, spacing)[1], rel=1e-12)


def test_hd95_is_the_larger_directed_percentile_not_medpys_pooled_one():
    # A bar 20 voxels long (10 mm spacing along it) against the same bar 3 voxels shorter: from the reference the
    # missing end is 10-30 mm away, from the prediction everything is close. Ours (MONAI, MetricsReloaded): the
    # larger of the two directed 95th percentiles; MedPy's hd95 pools both distance sets first.
    from segmime_jax.train.surface import PERCENTILE, surface_distances

    reference = np.zeros((24, 3, 3), bool)
    reference[2:22, 1, 1] = True
    prediction = reference.copy()
    prediction[19:22] = False
    spacing = (10.0, 1.0, 1.0)
    hd95, _ = hd95_assd(prediction, reference, spacing)
    to_reference, to_prediction = surface_distances(prediction, reference, spacing)
    pooled = float(np.percentile(np.concatenate([to_reference, to_prediction]), PERCENTILE))
    assert hd95 == pytest.approx(20.5)
    assert hd95 == pytest.approx(max(np.percentile(to_reference, 95), np.percentile(to_prediction, 95)))
    assert pooled == pytest.approx(12.0)


def test_empty_masks_follow_the_convention():
    empty, full = np.zeros((5, 5, 3), bool), np.zeros((5, 5, 3), bool)
    full[1:4, 1:4, 1] = True
    assert hd95_assd(empty, empty, (1, 1, 1)) == (0.0, 0.0)  # nothing to find, nothing found
    assert all(math.isnan(v) for v in hd95_assd(full, empty, (1, 1, 1)))  # structure where there is none
    assert all(math.isnan(v) for v in hd95_assd(empty, full, (1, 1, 1)))  # missed structure
    prediction = np.where(full, 1, 0)
    hd95, assd = class_surface_metrics(prediction, prediction, (1, 1, 1), num_classes=4)
    assert math.isnan(hd95[0]) and hd95[1] == 0 and hd95[2] == 0 and hd95[3] == 0 and assd[3] == 0
    mean, std, left_out = nan_summary(np.array([[np.nan, 2.0], [4.0, np.nan]]))
    assert (mean, std, left_out) == (3.0, 1.0, 2)


def _volume_with_label_file(tmp_path, label: np.ndarray, spacing, axes: str) -> VolumeInfo:
    """A VolumeInfo whose label file holds ``label`` (in the array layout of ``axes``) with ``spacing``."""
    if axes == "xyz":
        nib = pytest.importorskip("nibabel")
        path = tmp_path / "case_gt.nii.gz"
        nib.save(nib.Nifti1Image(label.astype(np.uint8), np.diag([*spacing, 1.0])), path)
    else:
        sitk = pytest.importorskip("SimpleITK")
        path = tmp_path / "case_segmentation.mhd"
        image = sitk.GetImageFromArray(label.astype(np.uint8))
        image.SetSpacing(spacing)
        sitk.WriteImage(image, str(path))
    slice_axis = 2 if axes == "xyz" else 0
    return VolumeInfo(
        volume_id=0,
        name="case",
        patient="case",
        image_path="",
        label_path=str(path),
        original_shape=label.shape,
        affine=np.diag([*spacing, 1.0]),
        spacing=spacing,
        num_slices=label.shape[slice_axis],
        extra={"axes": axes, "slice_axis": slice_axis},
    )


@pytest.mark.parametrize("axes", ["xyz", "zyx"])
def test_evaluator_measures_on_the_label_file_grid_with_its_spacing(tmp_path, axes):
    """ACDC (NIfTI, x y z) and PROMISE12 (MetaImage, z y x): a prediction shifted by 2 voxels along the array's
    first in-plane axis is 2 of that axis's spacings away, read from the label file's header."""
    spacing = (1.5, 0.75, 6.0)  # (x, y, z), as VolumeInfo.spacing
    shape = (20, 16, 5) if axes == "xyz" else (5, 16, 20)
    label = np.zeros(shape, np.uint8)
    if axes == "xyz":
        label[5:13, 4:11, 1:4] = 1
    else:
        label[1:4, 4:11, 5:13] = 1
    volume = _volume_with_label_file(tmp_path, label, spacing, axes)
    np.testing.assert_array_equal(read_original_labels(volume, 2), label)
    shift_axis = 0 if axes == "xyz" else 2  # the x axis in both layouts
    shifted = np.roll(label, 2, axis=shift_axis)
    working = np.moveaxis(shifted, volume.slice_axis, 0)  # (S, H, W) at the original in-plane size
    np.testing.assert_array_equal(prediction_to_original(volume, working), shifted)
    dataset = SliceDataset.from_volumes(
        [(np.zeros(working.shape, np.uint8), np.moveaxis(label, volume.slice_axis, 0), volume)], ("bg", "fg")
    )
    evaluator = SurfaceEvaluator(dataset)
    evaluator(volume, working)
    assert evaluator.hd95[0, 1] == pytest.approx(2 * 1.5)
    assert evaluator.ground_truth == "label files"
    assert math.isnan(evaluator.hd95[0, 0]) and evaluator.seconds > 0


def test_evaluator_falls_back_to_working_labels_without_a_label_file():
    info = VolumeInfo(0, "v", "v", "", "missing_gt.nii.gz", (6, 6, 2), np.eye(4), (1.0, 1.0, 3.0), 2)
    labels = np.zeros((2, 4, 4), np.uint8)
    labels[:, 1:3, 1:3] = 1
    dataset = SliceDataset.from_volumes([(labels, labels, info)], ("bg", "fg"))
    evaluator = SurfaceEvaluator(dataset)
    evaluator(info, labels)
    assert evaluator.hd95[0, 1] == 0.0 and evaluator.assd[0, 1] == 0.0
    assert "no label file" in evaluator.ground_truth
