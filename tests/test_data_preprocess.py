"""Resizing, normalisation, validation, splits and the SliceDataset container."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segmime_jax.data import DataError, SliceDataset, VolumeInfo
from segmime_jax.data.preprocess import (
    check_same_geometry,
    normalize_volume,
    resize_bilinear,
    resize_nearest,
    slices_to_working_size,
    validate_pair,
)
from segmime_jax.data.splits import ACDC_TEST, ACDC_TRAIN, ACDC_VALIDATION, seeded_split, split_sizes


@pytest.mark.parametrize("shape,size", [((5, 7), (9, 4)), ((16, 12), (32, 32)), ((13, 11), (6, 6))])
def test_bilinear_matches_jax_image_resize_without_antialias(shape, size):
    image = np.random.default_rng(0).uniform(size=(2, *shape)).astype(np.float32)
    ours = resize_bilinear(image, size)
    ref = jax.image.resize(jnp.asarray(image), (2, *size), method="linear", antialias=False)
    np.testing.assert_allclose(ours, np.asarray(ref), atol=1e-5)
    assert ours.dtype == np.float32 and ours.shape == (2, *size)


def test_bilinear_keeps_range_and_constants():
    image = np.random.default_rng(1).uniform(size=(3, 10, 7)).astype(np.float32)
    out = resize_bilinear(image, (23, 31))
    assert out.min() >= image.min() - 1e-6 and out.max() <= image.max() + 1e-6
    np.testing.assert_allclose(resize_bilinear(np.full((4, 6), 0.25, np.float32), (9, 2)), 0.25, atol=1e-7)
    np.testing.assert_array_equal(resize_bilinear(image, (10, 7)), image)


def test_nearest_copies_labels_and_round_trips_when_upsampling():
    labels = np.random.default_rng(2).integers(0, 4, size=(3, 13, 9)).astype(np.uint8)
    up = resize_nearest(labels, (32, 20))
    assert set(np.unique(up)) <= set(np.unique(labels))
    np.testing.assert_array_equal(resize_nearest(up, (13, 9)), labels)
    # exact block replication for integer factors
    np.testing.assert_array_equal(resize_nearest(labels, (26, 18)), labels.repeat(2, axis=1).repeat(2, axis=2))


def test_slices_to_working_size_normalises_per_volume():
    rng = np.random.default_rng(3)
    image = rng.uniform(-100, 900, size=(6, 5, 4)).astype(np.float32)
    label = rng.integers(0, 4, size=(6, 5, 4)).astype(np.uint8)
    images, labels = slices_to_working_size(image, label, slice_axis=2, size=(8, 8))
    assert images.shape == labels.shape == (4, 8, 8) and images.dtype == labels.dtype == np.uint8
    norm = normalize_volume(image)
    assert norm.min() == 0.0 and norm.max() == 1.0
    np.testing.assert_array_equal(labels[1], resize_nearest(label[:, :, 1], (8, 8)))
    np.testing.assert_array_equal(images[2], np.rint(resize_bilinear(norm[:, :, 2], (8, 8)) * 255).astype(np.uint8))


@pytest.mark.parametrize(
    "case,pattern",
    [
        ("shape", "does not match"),
        ("label_range", "outside 0..3"),
        ("nan", "non-finite"),
        ("constant", "constant intensity"),
        ("fractional", "not integers"),
        ("2d", "3D"),
    ],
)
def test_validate_pair_errors_name_the_file(case, pattern):
    image = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    label = np.zeros((2, 3, 4), dtype=np.float64)
    if case == "shape":
        label = np.zeros((2, 3, 5))
    elif case == "label_range":
        label[0, 0, 0] = 7
    elif case == "nan":
        image[1, 1, 1] = np.nan
    elif case == "constant":
        image = np.full((2, 3, 4), 3.0, np.float32)
    elif case == "fractional":
        label[0, 0, 0] = 0.5
    elif case == "2d":
        image, label = image[0], label[0]
    with pytest.raises(DataError, match=pattern) as info:
        validate_pair(image, label, image_path="/data/img.nii.gz", label_path="/data/gt.nii.gz", num_classes=4)
    assert "/data/" in str(info.value)


def test_geometry_check_tolerates_header_rounding_and_either_form():
    affine = np.array([[-1.4, 0.01, 0, 120.0], [0.02, -1.4, 0, 98.5], [0, 0, 10.0, -40.0], [0, 0, 0, 1]])
    check_same_geometry(affine, affine + 1e-3, image_path="img", label_path="gt")  # float32 quaternion rounding
    sform_only_in_image = np.diag([-1.0, -1.0, 1.0, 1.0])  # ACDC-style inconsistent sform beside a good qform
    check_same_geometry([sform_only_in_image, affine], [affine], image_path="img", label_path="gt")
    with pytest.raises(DataError, match="gt: geometry .* differs .*0.5.*img"):
        check_same_geometry(affine, affine + np.diag([0, 0, 0.5, 0]), image_path="img", label_path="gt")
    shifted = affine.copy()
    shifted[:3, 3] += 2.0  # another scan of the same size: 2 mm away
    with pytest.raises(DataError, match="differs"):
        check_same_geometry([affine, sform_only_in_image], [shifted], image_path="img", label_path="gt")


def test_split_sizes_and_fixed_lists():
    assert split_sizes(100) == (70, 10, 20)
    assert split_sizes(50) == (35, 5, 10)
    assert split_sizes(20) == (14, 2, 4)
    assert split_sizes(3) == (1, 1, 1)
    assert split_sizes(6) == (4, 1, 1)
    with pytest.raises(ValueError):
        split_sizes(2)
    assert len(ACDC_TRAIN) == 70 and len(ACDC_VALIDATION) == 10 and len(ACDC_TEST) == 20
    assert not set(ACDC_TRAIN) & set(ACDC_VALIDATION) and not set(ACDC_TRAIN) & set(ACDC_TEST)
    assert ACDC_VALIDATION[:3] == ("patient002", "patient008", "patient009") and ACDC_TEST[-1] == "patient088"


def test_seeded_split_is_deterministic_and_disjoint():
    names = [f"p{i:02d}" for i in range(20)]
    a = seeded_split(names, 0)
    assert a == seeded_split(list(reversed(names)), 0)
    assert a != seeded_split(names, 1)
    assert [len(s) for s in a] == [14, 2, 4]
    assert sorted(a[0] + a[1] + a[2]) == names


def _tiny_dataset() -> SliceDataset:
    volumes = tuple(
        VolumeInfo(
            volume_id=v,
            name=f"v{v}",
            patient=f"p{v // 2}",
            image_path="i",
            label_path="l",
            original_shape=(4, 5, n),
            affine=np.eye(4),
            spacing=(1.0, 1.0, 2.0),
            num_slices=n,
        )
        for v, n in enumerate((3, 2, 1))
    )
    # slices stored out of order on purpose
    volume_ids = np.array([1, 0, 0, 2, 1, 0], np.int32)
    slice_indices = np.array([1, 2, 0, 0, 0, 1], np.int32)
    images = np.arange(6, dtype=np.uint8)[:, None, None] * np.ones((1, 4, 5), np.uint8)
    return SliceDataset(
        images=images,
        labels=np.zeros((6, 4, 5), np.uint8),
        volume_ids=volume_ids,
        slice_indices=slice_indices,
        volumes=volumes,
        class_names=("background", "x"),
    )


def test_slice_dataset_slices_of_and_selection():
    ds = _tiny_dataset()
    assert len(ds) == 6 and ds.num_classes == 2 and ds.image_size == (4, 5)
    np.testing.assert_array_equal(ds.slices_of(0), [2, 5, 1])
    np.testing.assert_array_equal(ds.slices_of(1), [4, 0])
    images, _ = ds.volume(0)
    np.testing.assert_array_equal(images[:, 0, 0], [2, 5, 1])
    sub = ds.select_patients(["p1", "p0"])
    assert [v.name for v in sub.volumes] == ["v2", "v0", "v1"]
    assert [v.volume_id for v in sub.volumes] == [0, 1, 2]
    np.testing.assert_array_equal(sub.volume(1)[0][:, 0, 0], [2, 5, 1])
    assert sub.patients == ("p1", "p0")
    with pytest.raises(ValueError):
        SliceDataset(
            images=ds.images,
            labels=ds.labels,
            volume_ids=ds.volume_ids,
            slice_indices=ds.slice_indices,
            volumes=ds.volumes[:2],
            class_names=ds.class_names,
        )


def test_slice_dataset_from_volumes_numbers_slices_in_order():
    ds = _tiny_dataset()
    pieces = [(*ds.volume(v), info) for v, info in enumerate(ds.volumes)]
    rebuilt = SliceDataset.from_volumes(pieces, ds.class_names)
    np.testing.assert_array_equal(rebuilt.volume_ids, [0, 0, 0, 1, 1, 2])
    np.testing.assert_array_equal(rebuilt.slice_indices, [0, 1, 2, 0, 1, 0])
    for v in range(3):
        np.testing.assert_array_equal(rebuilt.volume(v)[0], ds.volume(v)[0])
    with pytest.raises(ValueError, match="'v0': 3 slices"):
        SliceDataset.from_volumes([(pieces[0][0][:2], pieces[0][1][:2], pieces[0][2])], ds.class_names)
    with pytest.raises(ValueError, match="no volumes"):
        SliceDataset.from_volumes([], ds.class_names)


def test_volume_info_json_round_trip_and_geometry():
    info = VolumeInfo(
        volume_id=0,
        name="Case01",
        patient="Case01",
        image_path="a.mhd",
        label_path="b.mhd",
        original_shape=(7, 10, 12),
        affine=np.diag([-0.5, -0.5, 3.0, 1.0]),
        spacing=(0.5, 0.5, 3.0),
        num_slices=7,
        extra={"axes": "zyx", "slice_axis": 0},
    )
    again = VolumeInfo.from_json(info.to_json())
    assert again == info
    np.testing.assert_array_equal(again.affine, info.affine)
    assert info.in_plane_shape == (10, 12) and info.slice_axis == 0
    assert hash(info) == hash(again)
