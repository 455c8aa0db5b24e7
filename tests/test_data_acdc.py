"""ACDC loading from synthetic ACDC folders: layout, Info.cfg, splits, cache, export, bad input."""

from __future__ import annotations

import os
import pathlib
import shutil

import nibabel as nib
import numpy as np
import pytest

from segmime_jax.data import (
    ACDC_TEST,
    ACDC_TRAIN,
    ACDC_VALIDATION,
    DataError,
    load_acdc,
    parse_info_cfg,
    write_prediction_nifti,
    write_synthetic_acdc,
)
from segmime_jax.data import acdc as acdc_module

SIZE = (32, 32)


@pytest.fixture(scope="session")
def acdc_root(tmp_path_factory) -> pathlib.Path:
    """10 training + 2 testing synthetic patients at a quarter of the in-plane matrix (about 60×60)."""
    return write_synthetic_acdc(tmp_path_factory.mktemp("acdc") / "ACDC", cases=10, seed=0, testing_cases=2, scale=0.25)


@pytest.fixture(scope="session")
def small_root(tmp_path_factory) -> pathlib.Path:
    """3 tiny patients, copied and damaged by the bad-input tests."""
    return write_synthetic_acdc(tmp_path_factory.mktemp("acdc_small") / "ACDC", cases=3, seed=1, scale=0.12)


@pytest.fixture
def damaged(small_root, tmp_path) -> pathlib.Path:
    root = tmp_path / "ACDC"
    shutil.copytree(small_root, root)
    return root


def _cache_entries(cache: pathlib.Path) -> list[pathlib.Path]:
    return sorted(cache.iterdir()) if cache.exists() else []


def test_synthetic_layout_and_info_cfg(acdc_root):
    patient = acdc_root / "training" / "patient001"
    info = parse_info_cfg(patient / "Info.cfg")
    assert set(info) == {"ED", "ES", "Group", "Height", "NbFrame", "Weight"}
    assert (
        isinstance(info["ED"], int)
        and isinstance(info["Height"], float)
        and info["Group"] in ("NOR", "MINF", "DCM", "HCM", "RV")
    )
    for frame in (info["ED"], info["ES"]):
        assert (patient / f"patient001_frame{frame:02d}.nii.gz").is_file()
        assert (patient / f"patient001_frame{frame:02d}_gt.nii.gz").is_file()
    assert sorted(p.name for p in (acdc_root / "training").iterdir()) == [f"patient{i:03d}" for i in range(1, 11)]
    assert sorted(p.name for p in (acdc_root / "testing").iterdir()) == ["patient101", "patient102"]


def test_parse_info_cfg_values(tmp_path):
    cfg = tmp_path / "Info.cfg"
    cfg.write_text("ED: 1\nES: 12\nGroup: DCM\nHeight: 184.0\nNbFrame: 30\nWeight: 95.0\n")
    assert parse_info_cfg(cfg) == {"ED": 1, "ES": 12, "Group": "DCM", "Height": 184.0, "NbFrame": 30, "Weight": 95.0}
    # Windows line endings and a UTF-8 byte-order mark (editors add one) read the same
    cfg.write_bytes(b"\xef\xbb\xbfED: 1\r\nES: 12\r\nGroup: DCM\r\n")
    assert parse_info_cfg(cfg) == {"ED": 1, "ES": 12, "Group": "DCM"}


@pytest.mark.parametrize(
    "text,pattern",
    [
        ("ED: 1\nGroup: NOR\n", "missing key"),
        ("ED 1\nES: 12\n", "not 'Key: value'"),
        ("ED: one\nES: 12\n", "ED must be int"),
        ("ED: 1\nES: 40\nNbFrame: 30\n", "outside 1..30"),
        ("ED: 1\nES: 12\nHeight: tall\n", "Height must be float"),
        ("ED: 1\nES: 1\n", "same frame"),
        ("ED: 1\nED: 2\nES: 5\n", "twice"),
    ],
)
def test_parse_info_cfg_malformed(tmp_path, text, pattern):
    cfg = tmp_path / "Info.cfg"
    cfg.write_text(text)
    with pytest.raises(DataError, match=pattern) as info:
        parse_info_cfg(cfg)
    assert str(cfg) in str(info.value)


def test_load_seeded_split_counts_shapes_values(acdc_root, tmp_path):
    data = load_acdc(acdc_root, size=SIZE, cache_dir=tmp_path / "cache")
    assert data.name == "acdc" and data.class_names == ("background", "RV", "MYO", "LV")
    counts = [(len(ds.patients), len(ds.volumes)) for ds in (data.train, data.val, data.test)]
    assert counts == [(7, 14), (1, 2), (2, 4)]
    all_patients = data.train.patients + data.val.patients + data.test.patients
    assert sorted(all_patients) == [f"patient{i:03d}" for i in range(1, 11)]
    for ds in (data.train, data.val, data.test):
        assert ds.images.shape[1:] == SIZE and ds.images.dtype == np.uint8 and ds.labels.dtype == np.uint8
        assert set(np.unique(ds.labels)) <= {0, 1, 2, 3}
        assert ds.volume_ids.dtype == np.int32 and ds.slice_indices.dtype == np.int32
        for info in ds.volumes:
            idx = ds.slices_of(info.volume_id)
            assert len(idx) == info.num_slices == info.original_shape[2]
            np.testing.assert_array_equal(ds.slice_indices[idx], np.arange(info.num_slices))
            images, _ = ds.volume(info.volume_id)
            assert images.min() < 30 and images.max() > 180  # min-max normalised (downsampling shaves the extremes)
            assert info.extra["phase"] in ("ED", "ES") and info.name == f"{info.patient}_{info.extra['phase']}"
            assert 5.0 <= info.spacing[2] <= 10.0 and info.affine.shape == (4, 4)
            assert 6 <= info.num_slices <= 16
    assert set(np.unique(data.train.labels)) == {0, 1, 2, 3}
    # the same seed gives the same split, another seed another one
    again = load_acdc(acdc_root, size=SIZE, cache_dir=tmp_path / "cache")
    assert again.test.patients == data.test.patients
    other = load_acdc(acdc_root, size=SIZE, cache_dir=tmp_path / "cache", seed=5)
    assert other.test.patients != data.test.patients or other.val.patients != data.val.patients


def test_slices_match_the_nifti_files(acdc_root, tmp_path):
    data = load_acdc(acdc_root, size=SIZE, cache_dir=False)
    ds = data.train
    info = ds.volumes[1]
    gt = np.asanyarray(nib.load(info.label_path).dataobj)
    image = nib.load(info.image_path).get_fdata()
    _, labels = ds.volume(1)
    from segmime_jax.data.preprocess import resize_bilinear, resize_nearest

    np.testing.assert_array_equal(labels, resize_nearest(np.moveaxis(gt, 2, 0), SIZE))
    norm = (image - image.min()) / (image.max() - image.min())
    expected = np.rint(resize_bilinear(np.moveaxis(norm, 2, 0), SIZE) * 255)
    assert np.abs(ds.volume(1)[0].astype(int) - expected).max() <= 1
    np.testing.assert_allclose(info.affine, nib.load(info.image_path).affine)


def test_include_testing_adds_to_test_split(acdc_root):
    data = load_acdc(acdc_root, size=SIZE, cache_dir=False, include_testing=True)
    assert data.test.patients[-2:] == ("patient101", "patient102")
    assert len(data.test.volumes) == 8 and len(data.train.volumes) == 14
    assert data.test.volume_by_name("patient101_ES").extra["subset"] == "testing"


def test_layouts_database_and_bare(acdc_root, tmp_path):
    nested = tmp_path / "download"
    (nested / "database").mkdir(parents=True)
    os.symlink(acdc_root / "training", nested / "database" / "training")
    a = load_acdc(nested, size=SIZE, cache_dir=False)
    b = load_acdc(acdc_root / "training", size=SIZE, cache_dir=False)
    assert a.train.patients == b.train.patients
    np.testing.assert_array_equal(a.test.images, b.test.images)


def test_cache_hit_and_invalidation(small_root, tmp_path, monkeypatch):
    root = tmp_path / "ACDC"
    shutil.copytree(small_root, root)
    cache = tmp_path / "cache"
    first = load_acdc(root, size=SIZE, cache_dir=cache)
    entries = _cache_entries(cache)
    assert len(entries) == 1 and {p.name for p in entries[0].iterdir()} == {"slices.npz", "meta.json"}
    with np.load(entries[0] / "slices.npz", allow_pickle=False) as npz:
        assert npz["images"].dtype == np.uint8

    calls = []
    real = acdc_module._load_frames
    monkeypatch.setattr(acdc_module, "_load_frames", lambda *a, **k: calls.append(1) or real(*a, **k))
    hit = load_acdc(root, size=SIZE, cache_dir=cache)
    assert calls == []
    np.testing.assert_array_equal(hit.train.images, first.train.images)
    assert hit.train.volumes == first.train.volumes
    np.testing.assert_array_equal(hit.train.volumes[0].affine, first.train.volumes[0].affine)

    # a changed source file (new mtime) invalidates; the stale entry is replaced
    gt = next((root / "training" / "patient002").glob("*_gt.nii.gz"))
    stat = gt.stat()
    os.utime(gt, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    load_acdc(root, size=SIZE, cache_dir=cache)
    assert calls == [1]
    assert len(_cache_entries(cache)) == 1 and _cache_entries(cache) != entries
    # a changed option gets its own entry
    other = load_acdc(root, size=(16, 24), cache_dir=cache)
    assert calls == [1, 1] and other.train.images.shape[1:] == (16, 24)
    # a corrupt entry is rebuilt
    for entry in _cache_entries(cache):
        (entry / "slices.npz").write_bytes(b"garbage")
    load_acdc(root, size=SIZE, cache_dir=cache)
    assert calls == [1, 1, 1]
    # a corrupt entry under the very key asked for is replaced: the load after the rebuild is a hit again
    for entry in _cache_entries(cache):
        (entry / "slices.npz").write_bytes(b"garbage")
    load_acdc(root, size=SIZE, cache_dir=cache)
    assert calls == [1, 1, 1, 1]
    load_acdc(root, size=SIZE, cache_dir=cache)
    assert calls == [1, 1, 1, 1]
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]


def test_default_cache_dir_from_environment(small_root, tmp_path, monkeypatch):
    monkeypatch.setenv("SEGMIME_CACHE_DIR", str(tmp_path / "envcache"))
    load_acdc(small_root, size=SIZE)
    assert len(_cache_entries(tmp_path / "envcache")) == 1


def _tiny_patient(folder: pathlib.Path, rng: np.random.Generator) -> None:
    folder.mkdir(parents=True)
    (folder / "Info.cfg").write_text("ED: 1\nES: 5\nGroup: NOR\nHeight: 170.0\nNbFrame: 10\nWeight: 70.0\n")
    for frame in (1, 5):
        stem = folder / f"{folder.name}_frame{frame:02d}"
        image = rng.uniform(0, 100, size=(6, 5, 2)).astype(np.float32)
        label = rng.integers(0, 4, size=(6, 5, 2)).astype(np.uint8)
        nib.save(nib.Nifti1Image(image, np.eye(4)), f"{stem}.nii")
        nib.save(nib.Nifti1Image(label, np.eye(4)), f"{stem}_gt.nii")


@pytest.fixture(scope="session")
def hundred_root(tmp_path_factory) -> pathlib.Path:
    """patient001-patient100 with tiny random 6×5×2 volumes (uncompressed .nii)."""
    root = tmp_path_factory.mktemp("acdc100")
    rng = np.random.default_rng(0)
    for i in range(1, 101):
        _tiny_patient(root / "training" / f"patient{i:03d}", rng)
    return root


def test_fixed_split_lists(hundred_root):
    data = load_acdc(hundred_root, size=(8, 8), cache_dir=False)  # auto -> fixed
    assert data.train.patients == ACDC_TRAIN
    assert data.val.patients == ACDC_VALIDATION
    assert data.test.patients == ACDC_TEST
    assert [len(ds.volumes) for ds in (data.train, data.val, data.test)] == [140, 20, 40]
    assert len(data.test) == 80
    seeded = load_acdc(hundred_root, size=(8, 8), cache_dir=False, split="seeded", seed=3)
    assert [len(ds.patients) for ds in (seeded.train, seeded.val, seeded.test)] == [70, 10, 20]
    assert seeded.val.patients != ACDC_VALIDATION


def test_fixed_split_with_absent_patients(hundred_root, tmp_path):
    root = tmp_path / "acdc99"
    shutil.copytree(hundred_root, root)
    shutil.rmtree(root / "training" / "patient002")
    with pytest.raises(DataError, match="patient002") as info:
        load_acdc(root, size=(8, 8), cache_dir=tmp_path / "cache", split="fixed")
    assert str(root / "training") in str(info.value)
    auto = load_acdc(root, size=(8, 8), cache_dir=False)  # auto falls back to a seeded split
    assert [len(ds.patients) for ds in (auto.train, auto.val, auto.test)] == [69, 10, 20]


def test_fixed_split_on_small_dataset(small_root):
    with pytest.raises(DataError, match="split='fixed'"):
        load_acdc(small_root, size=SIZE, cache_dir=False, split="fixed")
    with pytest.raises(ValueError, match="split must be"):
        load_acdc(small_root, size=SIZE, cache_dir=False, split="random")


def _first_frames(root: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    patient = root / "training" / "patient002"
    info = parse_info_cfg(patient / "Info.cfg")
    stem = patient / f"patient002_frame{info['ED']:02d}"
    return pathlib.Path(f"{stem}.nii.gz"), pathlib.Path(f"{stem}_gt.nii.gz")


def _rewrite(path: pathlib.Path, array: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(array, nib.load(path).affine), str(path))


@pytest.mark.parametrize(
    "damage,pattern,culprit",
    [
        ("missing_gt", "missing ground truth", "gt"),
        ("missing_image", "missing image", "image"),
        ("truncated", "cannot read NIfTI", "image"),
        ("shape", "does not match", "gt"),
        ("geometry", "geometry .* differs", "gt"),
        ("labels", "outside 0..3", "gt"),
        ("nan", "non-finite", "image"),
        ("constant", "constant intensity", "image"),
        ("no_info", "Info.cfg is missing", "info"),
        ("bad_info", "ES must be int", "info"),
    ],
)
def test_bad_input_raises_and_caches_nothing(damaged, tmp_path, damage, pattern, culprit):
    image, gt = _first_frames(damaged)
    info_cfg = image.parent / "Info.cfg"
    if damage == "missing_gt":
        gt.unlink()
    elif damage == "missing_image":
        image.unlink()
    elif damage == "truncated":
        data = image.read_bytes()
        image.write_bytes(data[: len(data) // 2])
    elif damage == "shape":
        array = np.asanyarray(nib.load(gt).dataobj)
        _rewrite(gt, array[:-1])
    elif damage == "geometry":  # same voxels, but the label claims 1 mm larger in-plane spacing
        label = nib.load(gt)
        nib.save(nib.Nifti1Image(np.asanyarray(label.dataobj), label.affine @ np.diag([2.0, 2.0, 1.0, 1.0])), str(gt))
    elif damage == "labels":
        array = np.asanyarray(nib.load(gt).dataobj).copy()
        array[0, 0, 0] = 4
        _rewrite(gt, array)
    elif damage == "nan":
        array = nib.load(image).get_fdata(dtype=np.float32)
        array[1, 1, 0] = np.nan
        _rewrite(image, array)
    elif damage == "constant":
        _rewrite(image, np.full(nib.load(image).shape, 7, dtype=np.int16))
    elif damage == "no_info":
        info_cfg.unlink()
    elif damage == "bad_info":
        info_cfg.write_text("ED: 1\nES: late\n")
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=pattern) as info:
        load_acdc(damaged, size=SIZE, cache_dir=cache)
    expected = {"image": image, "gt": gt, "info": info_cfg}[culprit]
    assert str(expected) in str(info.value)
    assert _cache_entries(cache) == []


def test_bad_layouts(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_acdc(tmp_path / "nowhere", cache_dir=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not an ACDC folder") as info:
        load_acdc(tmp_path / "empty", cache_dir=False)
    assert str(tmp_path / "empty") in str(info.value)
    (tmp_path / "flat" / "training").mkdir(parents=True)
    (tmp_path / "flat" / "training" / "patient001_frame01.nii.gz").write_bytes(b"")
    with pytest.raises(DataError, match="no patientNNN folders"):
        load_acdc(tmp_path / "flat", cache_dir=False)


def test_include_testing_without_testing_folder(small_root):
    with pytest.raises(DataError, match="testing"):
        load_acdc(small_root, size=SIZE, cache_dir=False, include_testing=True)


def test_export_round_trip(acdc_root, tmp_path):
    data = load_acdc(acdc_root, size=SIZE, cache_dir=False)
    out = tmp_path / "pred"
    out.mkdir()
    for n, info in enumerate(data.test.volumes[:2]):
        _, labels = data.test.volume(info.volume_id)
        path = write_prediction_nifti(info, labels, out if n == 0 else out / f"{info.name}.nii.gz")
        assert path.name == f"{info.name}.nii.gz"
        written = nib.load(path)
        source = nib.load(info.label_path)
        assert written.shape == source.shape == info.original_shape
        assert written.get_data_dtype() == np.uint8
        np.testing.assert_allclose(written.affine, source.affine, atol=1e-5)
        np.testing.assert_allclose(written.header.get_zooms(), source.header.get_zooms(), rtol=1e-6)
        # working size 32x32 is smaller than the ~60x60 originals: nearest down/up is not exact, but close
        agreement = np.mean(np.asanyarray(written.dataobj) == np.asanyarray(source.dataobj))
        assert agreement > 0.97
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == sorted(
        f"{v.name}.nii.gz" for v in data.test.volumes[:2]
    )


def test_export_exact_when_upsampled(small_root, tmp_path):
    data = load_acdc(small_root, size=(64, 64), cache_dir=False)  # originals are about 30x30
    info = data.train.volumes[0]
    path = write_prediction_nifti(info, data.train.volume(0)[1], tmp_path / "x.nii")
    np.testing.assert_array_equal(
        np.asanyarray(nib.load(path).dataobj), np.asanyarray(nib.load(info.label_path).dataobj)
    )
    with pytest.raises(ValueError, match="must be"):
        write_prediction_nifti(info, data.train.volume(0)[1][:-1], tmp_path / "y.nii.gz")
    with pytest.raises(ValueError, match=".nii"):
        write_prediction_nifti(info, data.train.volume(0)[1], tmp_path / "y.png")
    assert not (tmp_path / "y.nii.gz").exists()


def test_interrupted_cache_write_leaves_nothing(small_root, tmp_path, monkeypatch):
    from segmime_jax.data import cache as cache_module

    def explode(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_module, "_save_npz", explode)
    with pytest.raises(KeyboardInterrupt):
        load_acdc(small_root, size=SIZE, cache_dir=tmp_path / "cache")
    assert _cache_entries(tmp_path / "cache") == []  # not even a temporary folder


def test_missing_nibabel_is_explained(small_root, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "nibabel", None)
    with pytest.raises(ImportError, match="pip install nibabel"):
        load_acdc(small_root, size=SIZE, cache_dir=False)
