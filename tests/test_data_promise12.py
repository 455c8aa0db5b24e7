"""PROMISE12 loading from synthetic MetaImage cases: split, values, geometry, export, bad input."""

from __future__ import annotations

import pathlib
import shutil
import sys

import nibabel as nib
import numpy as np
import pytest

from segmime_jax.data import DataError, load_promise12, write_prediction_nifti, write_synthetic_promise12

sitk = pytest.importorskip("SimpleITK")

SIZE = (32, 32)


@pytest.fixture(scope="session")
def promise_root(tmp_path_factory) -> pathlib.Path:
    """6 synthetic cases at a tenth of the in-plane matrix (about 26-32 px)."""
    return write_synthetic_promise12(tmp_path_factory.mktemp("p12") / "PROMISE12", cases=6, seed=0, scale=0.1)


@pytest.fixture
def damaged(promise_root, tmp_path) -> pathlib.Path:
    root = tmp_path / "PROMISE12"
    shutil.copytree(promise_root, root)
    return root


def test_layout(promise_root):
    names = sorted(p.name for p in promise_root.iterdir())
    assert names[:4] == ["Case00.mhd", "Case00.raw", "Case00_segmentation.mhd", "Case00_segmentation.raw"]
    assert len(names) == 24
    image = sitk.ReadImage(str(promise_root / "Case00.mhd"))
    assert image.GetPixelID() == sitk.sitkInt16 and image.GetDimension() == 3
    array = sitk.GetArrayFromImage(image)
    assert 15 <= array.shape[0] <= 30 and array.shape[1] == array.shape[2]
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(promise_root / "Case00_segmentation.mhd")))
    assert seg.dtype == np.uint8 and set(np.unique(seg)) == {0, 1}


def test_load_split_shapes_values(promise_root, tmp_path):
    data = load_promise12(promise_root, size=SIZE, cache_dir=tmp_path / "cache")
    assert data.name == "promise12" and data.class_names == ("background", "prostate")
    assert [len(ds.volumes) for ds in (data.train, data.val, data.test)] == [4, 1, 1]
    assert sorted(data.train.patients + data.val.patients + data.test.patients) == [f"Case{i:02d}" for i in range(6)]
    for ds in (data.train, data.val, data.test):
        assert ds.images.shape[1:] == SIZE and ds.images.dtype == np.uint8
        assert set(np.unique(ds.labels)) <= {0, 1}
        for info in ds.volumes:
            assert info.extra["axes"] == "zyx" and info.slice_axis == 0
            assert info.num_slices == info.original_shape[0] == len(ds.slices_of(info.volume_id))
            itk = sitk.ReadImage(info.image_path)
            np.testing.assert_allclose(info.spacing, itk.GetSpacing())
            assert info.in_plane_shape == (itk.GetSize()[1], itk.GetSize()[0])
    assert set(np.unique(data.train.labels)) == {0, 1}
    # slices are cut along z
    info = data.train.volumes[0]
    seg = sitk.GetArrayFromImage(sitk.ReadImage(info.label_path))
    from segmime_jax.data.preprocess import resize_nearest

    np.testing.assert_array_equal(data.train.volume(0)[1], resize_nearest(seg, SIZE))
    hit = load_promise12(promise_root, size=SIZE, cache_dir=tmp_path / "cache", seed=0)
    assert hit.test.patients == data.test.patients
    np.testing.assert_array_equal(hit.train.images, data.train.images)


def test_cache_hit_needs_no_simpleitk(promise_root, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = load_promise12(promise_root, size=SIZE, cache_dir=cache)
    monkeypatch.setitem(sys.modules, "SimpleITK", None)
    again = load_promise12(promise_root, size=SIZE, cache_dir=cache)
    np.testing.assert_array_equal(again.val.labels, first.val.labels)
    with pytest.raises(ImportError, match="pip install"):
        load_promise12(promise_root, size=(16, 16), cache_dir=cache)


def test_export_geometry_matches_metaimage(promise_root, tmp_path):
    data = load_promise12(promise_root, size=(64, 64), cache_dir=False)  # upsampling: exact round trip
    oblique = 0
    for ds in (data.train, data.val, data.test):
        for info in ds.volumes:
            path = write_prediction_nifti(info, ds.volume(info.volume_id)[1], tmp_path / f"{info.name}.nii.gz")
            source = sitk.ReadImage(info.label_path)
            written = sitk.ReadImage(str(path))
            np.testing.assert_allclose(written.GetOrigin(), source.GetOrigin(), atol=1e-4)
            np.testing.assert_allclose(written.GetSpacing(), source.GetSpacing(), rtol=1e-5)
            np.testing.assert_allclose(written.GetDirection(), source.GetDirection(), atol=1e-5)
            np.testing.assert_array_equal(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(source))
            nifti = nib.load(path)
            assert nifti.shape == tuple(source.GetSize()) and nifti.get_data_dtype() == np.uint8
            np.testing.assert_allclose(nifti.affine, info.affine, atol=1e-5)
            oblique += not np.allclose(source.GetDirection(), np.eye(3).ravel())
    assert oblique >= 1  # the geometry conversion was exercised with non-identity direction cosines


def _write_like(path: pathlib.Path, array: np.ndarray, reference: pathlib.Path) -> None:
    ref = sitk.ReadImage(str(reference))
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(ref.GetSpacing())
    image.SetOrigin(ref.GetOrigin())
    image.SetDirection(ref.GetDirection())
    sitk.WriteImage(image, str(path))


@pytest.mark.parametrize(
    "damage,pattern,culprit",
    [
        ("missing_seg", "missing segmentation", "seg_mhd"),
        ("missing_raw", "missing data file", "raw"),
        ("truncated", "cannot read MetaImage", "mhd"),
        ("labels", "outside 0..1", "seg_mhd"),
        ("shape", "does not match", "seg_mhd"),
        ("geometry", "geometry .* differs", "seg_mhd"),
        ("constant", "constant intensity", "mhd"),
    ],
)
def test_bad_input_raises_and_caches_nothing(damaged, tmp_path, damage, pattern, culprit):
    mhd, raw = damaged / "Case02.mhd", damaged / "Case02.raw"
    seg_mhd, seg_raw = damaged / "Case02_segmentation.mhd", damaged / "Case02_segmentation.raw"
    if damage == "missing_seg":
        seg_mhd.unlink()
        seg_raw.unlink()
    elif damage == "missing_raw":
        raw.unlink()
    elif damage == "truncated":
        data = raw.read_bytes()
        raw.write_bytes(data[: len(data) // 3])
    elif damage == "labels":
        seg = sitk.GetArrayFromImage(sitk.ReadImage(str(seg_mhd)))
        seg[0, 0, 0] = 2
        _write_like(seg_mhd, seg, seg_mhd)
    elif damage == "shape":
        seg = sitk.GetArrayFromImage(sitk.ReadImage(str(seg_mhd)))
        _write_like(seg_mhd, seg[1:], seg_mhd)
    elif damage == "geometry":  # same voxels, origin shifted by 5 mm
        seg = sitk.ReadImage(str(seg_mhd))
        seg.SetOrigin(tuple(o + 5.0 for o in seg.GetOrigin()))
        sitk.WriteImage(seg, str(seg_mhd))
    elif damage == "constant":
        image = sitk.GetArrayFromImage(sitk.ReadImage(str(mhd)))
        _write_like(mhd, np.full_like(image, 100), mhd)
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=pattern) as info:
        load_promise12(damaged, size=SIZE, cache_dir=cache)
    expected = {"mhd": mhd, "raw": raw, "seg_mhd": seg_mhd}[culprit]
    assert str(expected) in str(info.value)
    assert not cache.exists() or list(cache.iterdir()) == []


def test_bad_folders(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_promise12(tmp_path / "nowhere", cache_dir=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no PROMISE12 cases"):
        load_promise12(tmp_path / "empty", cache_dir=False)


def test_nested_parts_are_found(promise_root, tmp_path):
    root = tmp_path / "download"
    for part, cases in (("TrainingData_Part1", (0, 1, 2)), ("TrainingData_Part2", (3, 4, 5))):
        (root / part).mkdir(parents=True)
        for case in cases:
            for path in promise_root.glob(f"Case{case:02d}*"):
                shutil.copy(path, root / part / path.name)
    # the download's TestData/: same case names, no segmentations; skipped
    (root / "TestData").mkdir()
    for path in promise_root.glob("Case00.*"):
        shutil.copy(path, root / "TestData" / path.name)
    data = load_promise12(root, size=SIZE, cache_dir=False)
    flat = load_promise12(promise_root, size=SIZE, cache_dir=False)
    assert data.test.patients == flat.test.patients
    np.testing.assert_array_equal(data.train.labels, flat.train.labels)
