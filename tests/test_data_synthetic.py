"""Synthetic datasets: determinism, layout, anatomy statistics, command line."""

from __future__ import annotations

import pathlib

import nibabel as nib
import numpy as np
import pytest

from segmime_jax.data import load_acdc, parse_info_cfg, write_synthetic_acdc, write_synthetic_promise12
from segmime_jax.data.synthetic import main


@pytest.fixture(scope="session")
def acdc_pair(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
    base = tmp_path_factory.mktemp("syn")
    return (
        write_synthetic_acdc(base / "a", cases=5, seed=7, scale=0.2),
        write_synthetic_acdc(base / "b", cases=5, seed=7, scale=0.2),
    )


def _arrays(root: pathlib.Path) -> dict[str, np.ndarray]:
    return {p.relative_to(root).as_posix(): np.asanyarray(nib.load(p).dataobj) for p in sorted(root.rglob("*.nii.gz"))}


def test_acdc_is_deterministic(acdc_pair, tmp_path):
    a, b = (_arrays(root) for root in acdc_pair)
    assert list(a) == list(b) and len(a) == 20
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    for patient in ("patient001", "patient005"):
        cfg = f"training/{patient}/Info.cfg"
        assert (acdc_pair[0] / cfg).read_text() == (acdc_pair[1] / cfg).read_text()
    other = _arrays(write_synthetic_acdc(tmp_path / "c", cases=2, seed=8, scale=0.2))
    first = "training/patient001/"
    assert not np.array_equal(*(next(v for k, v in arrays.items() if k.startswith(first)) for arrays in (other, a)))
    # patient i depends on (seed, i) only, not on the number of cases
    fewer = _arrays(write_synthetic_acdc(tmp_path / "d", cases=2, seed=7, scale=0.2))
    for name, array in fewer.items():
        np.testing.assert_array_equal(array, a[name])


def test_acdc_anatomy_statistics(acdc_pair):
    root = acdc_pair[0]
    for folder in sorted((root / "training").iterdir()):
        info = parse_info_cfg(folder / "Info.cfg")
        assert 1 <= info["ED"] < info["ES"] <= info["NbFrame"]
        volumes = {}
        for phase in ("ED", "ES"):
            stem = folder / f"{folder.name}_frame{info[phase]:02d}"
            image, gt = nib.load(f"{stem}.nii.gz"), nib.load(f"{stem}_gt.nii.gz")
            assert image.get_data_dtype() == np.int16 and gt.get_data_dtype() == np.uint8
            assert image.shape == gt.shape and 6 <= image.shape[2] <= 16
            zooms = image.header.get_zooms()
            assert 5.0 <= zooms[2] <= 10.0 and zooms[0] == zooms[1]
            labels = np.asanyarray(gt.dataobj)
            assert set(np.unique(labels)) == {0, 1, 2, 3}
            volumes[phase] = {k: (labels == k).sum() * float(np.prod(zooms)) for k in (1, 2, 3)}
            # background is never an intensity threshold away: blood (LV) and the aorta etc. share intensities
            data = np.asanyarray(image.dataobj)
            lv, rv = data[labels == 3], data[labels == 1]
            assert abs(np.median(lv) - np.median(rv)) < 0.25 * np.median(lv)
        # smaller cavities at end-systole, similar myocardial volume
        assert volumes["ES"][3] < 0.9 * volumes["ED"][3]
        assert volumes["ES"][1] < volumes["ED"][1]
        assert 0.6 < volumes["ES"][2] / volumes["ED"][2] < 1.6


def test_acdc_groups_sizes_and_loading(tmp_path):
    root = write_synthetic_acdc(tmp_path / "acdc", cases=10, seed=0, scale=0.15)
    groups = [parse_info_cfg(p / "Info.cfg")["Group"] for p in sorted((root / "training").iterdir())]
    assert sorted(groups) == sorted(["NOR", "MINF", "DCM", "HCM", "RV"] * 2)
    data = load_acdc(root, size=(16, 16), cache_dir=False)
    assert [len(d.patients) for d in (data.train, data.val, data.test)] == [7, 1, 2]


def test_output_folder_must_be_new_or_empty(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        write_synthetic_acdc(tmp_path / "full", cases=1, scale=0.1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]  # no temporary folder left behind
    (tmp_path / "empty").mkdir()
    write_synthetic_acdc(tmp_path / "empty", cases=1, scale=0.1)
    assert (tmp_path / "empty" / "training" / "patient001" / "Info.cfg").is_file()
    with pytest.raises(ValueError):
        write_synthetic_acdc(tmp_path / "zero", cases=0)


def test_promise12_deterministic_and_plausible(tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    a = write_synthetic_promise12(tmp_path / "a", cases=3, seed=2, scale=0.1)
    b = write_synthetic_promise12(tmp_path / "b", cases=3, seed=2, scale=0.1)
    for i in range(3):
        for suffix in ("", "_segmentation"):
            assert (a / f"Case{i:02d}{suffix}.raw").read_bytes() == (b / f"Case{i:02d}{suffix}.raw").read_bytes()
        image = sitk.ReadImage(str(a / f"Case{i:02d}.mhd"))
        seg = sitk.GetArrayFromImage(sitk.ReadImage(str(a / f"Case{i:02d}_segmentation.mhd")))
        spacing = image.GetSpacing()
        assert 0.35 <= spacing[0] == spacing[1] <= 8.0 and 2.2 <= spacing[2] <= 4.0
        assert 15 <= image.GetSize()[2] <= 30
        volume_ml = seg.sum() * np.prod(spacing) / 1000
        assert 5 < volume_ml < 150  # prostates are roughly 20-80 ml
        assert seg[0].sum() == 0 or seg[-1].sum() == 0  # the gland does not fill the whole stack


def test_command_line(tmp_path, capsys):
    assert main(["acdc", str(tmp_path / "cli"), "--cases", "2", "--seed", "3", "--scale", "0.1"]) == 0
    assert "wrote 2 synthetic acdc cases" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "cli" / "training").iterdir()) == ["patient001", "patient002"]
    assert main(["acdc", str(tmp_path / "cli"), "--cases", "2"]) == 2
    assert "exists" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["mnist", str(tmp_path / "x")])


def test_acdc_zoom_magnifies_the_heart_around_it(tmp_path):
    """zoom halves the pixel spacing (same matrix), keeps the patient, and moves the view towards the heart."""
    plain = write_synthetic_acdc(tmp_path / "z1", cases=2, seed=3, scale=0.25)
    zoomed = write_synthetic_acdc(tmp_path / "z2", cases=2, seed=3, scale=0.25, zoom=2.0)
    info = "training/patient001/Info.cfg"
    assert (zoomed / info).read_text() == (plain / info).read_text()
    name = sorted((plain / "training/patient001").glob("*_gt.nii.gz"))[0].relative_to(plain)
    a, b = nib.load(plain / name), nib.load(zoomed / name)
    assert a.shape == b.shape
    np.testing.assert_allclose(np.asarray(b.header.get_zooms()[:2]), np.asarray(a.header.get_zooms()[:2]) / 2)
    heart_a, heart_b = (np.asanyarray(x.dataobj) > 0 for x in (a, b))
    assert 3.0 < heart_b.sum() / heart_a.sum() < 5.0  # twice as many pixels across
    with pytest.raises(ValueError, match="zoom >= 1"):
        write_synthetic_acdc(tmp_path / "z3", cases=1, zoom=0.5)
