"""The gradient study (segmime_jax.commands.gradients) end to end, small: files written and numbers consistent."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from segmime_jax.commands import gradients as experiment
from segmime_jax.paper import gradient_study as study


def test_phantom_and_prediction():
    labels = study.cardiac_phantom(64)
    assert labels.shape == (64, 64) and labels.dtype == np.uint8
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    np.testing.assert_array_equal(study.cardiac_phantom(256), study.cardiac_phantom(256))
    counts = [int((study.cardiac_phantom(256) == k).sum()) for k in range(4)]
    assert counts[1:] == [5018, 3703, 2964]
    probs = study.noisy_prediction(labels, 4, seed=1, error_class=3)
    assert probs.shape == (64, 64, 4) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(probs, study.noisy_prediction(labels, 4, seed=1, error_class=3))
    with pytest.raises(ValueError, match="labels must lie"):
        study.noisy_prediction(labels, 3)


@pytest.mark.parametrize("size", [64, 256])
def test_error_blobs_for_every_class(size):
    labels = study.cardiac_phantom(size)
    radius = 0.035 * size
    for k in range(4):
        missed, spurious = study.error_blobs(labels, k, radius)
        # a false negative inside the class and a false positive outside it, for every class (RV included:
        # its right-hand neighbour is the LV, so the blob goes to its left)
        assert missed.any() and np.all(labels[missed] == k)
        assert spurious.sum() >= 0.4 * np.pi * radius**2 and not np.any(labels[spurious] == k)
        if k:
            assert np.all(labels[spurious] == 0)
    # the prediction raises the class's probability on the spurious blob and lowers it on the missed one
    probs = study.noisy_prediction(labels, 4, seed=0, error_class=1, noise=0.0)
    clean = study.noisy_prediction(labels, 4, seed=0, noise=0.0)
    missed, spurious = study.error_blobs(labels, 1, radius)
    assert np.all(probs[spurious, 1] > clean[spurious, 1]) and np.all(probs[missed, 1] < clean[missed, 1])
    with pytest.raises(ValueError, match="absent"):
        study.error_blobs(np.zeros((16, 16), np.uint8), 2, 1.0)


def test_gradient_study_main(tmp_path, capsys):
    out = tmp_path / "grad"
    result = experiment.main(["--out", str(out), "--size", "64", "--bound-points", "4", "--dpi", "40"])
    names = {"figure1.png", "gradient_maps.png", "gradient_table.md", "gradient_table.json", "bound.png", "bound.json"}
    assert {p.name for p in out.iterdir()} == names
    assert not [p for p in tmp_path.iterdir() if p.name != "grad"]  # staging (inside out) removed
    printed = capsys.readouterr().out
    assert "dynamic range Dice" in printed and str(out / "figure1.png") in printed

    table = json.loads((out / "gradient_table.json").read_text())
    losses = {row["key"]: row for row in table["losses"]}
    assert set(losses) == {"ce", "dsc", "gdl", "mime", "nm", "surrogate"}
    assert table["class_name"] == "LV" and table["default_convention"] == "power"
    inter, union = table["intersection"], table["union"]
    # Dice: exactly two values, Eq. 6 scaled by 1/|K| = 1/4, and the range is 10 log10((U - I)/I).
    dsc = losses["dsc"]
    assert dsc["foreground"]["distinct"] == 1 and dsc["background"]["distinct"] == 1
    np.testing.assert_allclose(dsc["foreground"]["min"], -2 * (union - inter) / union**2 / 4, rtol=1e-4)
    np.testing.assert_allclose(dsc["background"]["min"], 2 * inter / union**2 / 4, rtol=1e-4)
    np.testing.assert_allclose(dsc["dynamic_range_db"]["power"], 10 * math.log10((union - inter) / inter), rtol=1e-3)
    np.testing.assert_allclose(dsc["dynamic_range_db"]["amplitude"], 2 * dsc["dynamic_range_db"]["power"], rtol=1e-5)
    np.testing.assert_allclose(dsc["dynamic_range_db"]["power"], table["dice_range_from_dsc_db_power"], rtol=1e-3)
    # CE: zero off the ground truth, range 10 log10(max s / min s) on it; much wider than Dice's.
    ce = losses["ce"]
    assert ce["background"]["values"] == [0.0] and ce["foreground"]["distinct"] > 100
    np.testing.assert_allclose(ce["dynamic_range_db"]["power"], table["ce_range_from_probs_db_power"], rtol=1e-3)
    assert ce["dynamic_range_db"]["power"] > 5 * dsc["dynamic_range_db"]["power"]
    # Mime: -a/N and b/N with N = |Ω||K|; range 10 log10(19). NM: -1/N and 0.
    n = 64 * 64 * 4
    np.testing.assert_allclose(losses["mime"]["foreground"]["values"], [-1.9 / n], rtol=1e-6)
    np.testing.assert_allclose(losses["mime"]["background"]["values"], [0.1 / n], rtol=1e-6)
    np.testing.assert_allclose(losses["mime"]["dynamic_range_db"]["power"], 10 * math.log10(19), rtol=1e-5)
    np.testing.assert_allclose(losses["nm"]["foreground"]["values"], [-1.0 / n], rtol=1e-6)
    assert losses["nm"]["background"]["values"] == [0.0]
    # The surrogate's gradient is Dice's; every jax.grad matches its closed form.
    assert losses["surrogate"]["foreground"]["values"] == dsc["foreground"]["values"]
    assert all(row["relative_diff_closed_form"] < 1e-5 for row in table["losses"])
    # Eq. 7: the measured maximum never exceeds 2/U, and both fall as U grows.
    bound = json.loads((out / "bound.json").read_text())
    assert len(bound) == 4
    assert all(b["max_abs_gradient"] <= b["bound"] * (1 + 1e-6) for b in bound)
    np.testing.assert_allclose([b["bound"] for b in bound], [2 / b["union"] for b in bound], rtol=1e-5)
    unions, bounds = [b["union"] for b in bound], [b["bound"] for b in bound]
    assert unions == sorted(unions) and bounds == sorted(bounds, reverse=True)
    markdown = (out / "gradient_table.md").read_text()
    assert "| Dice | Eq. 3, 6 |" in markdown and "paper" in markdown.lower()
    assert result.row("dsc").dynamic_range_db["power"] == pytest.approx(dsc["dynamic_range_db"]["power"])
    # a rerun into the same folder replaces the study: no bound sweep of the earlier run stays beside it
    experiment.main(["--out", str(out), "--size", "64", "--bound-points", "0", "--class-index", "1", "--dpi", "40"])
    assert {p.name for p in out.iterdir()} == names - {"bound.png", "bound.json"}


def test_gradient_study_errors(tmp_path):
    with pytest.raises(SystemExit):
        experiment.main(["--out", str(tmp_path), "--size", "16"])
    with pytest.raises(SystemExit, match="class-index"):
        experiment.main(["--out", str(tmp_path / "x"), "--size", "32", "--class-index", "7", "--bound-points", "0"])
    assert not (tmp_path / "x").exists()
    with pytest.raises(SystemExit, match="error"):
        experiment.main(["--out", str(tmp_path / "y"), "--size", "32", "--data-root", str(tmp_path / "missing")])
    assert not (tmp_path / "y").exists()


def test_gradient_study_on_acdc_labels(tmp_path, monkeypatch):
    """--data-root: the labels come from an ACDC-format folder (a tiny synthetic one here)."""
    from segmime_jax.data import write_synthetic_acdc

    monkeypatch.setenv("SEGMIME_CACHE_DIR", str(tmp_path / "cache"))
    root = write_synthetic_acdc(tmp_path / "acdc", cases=3, seed=0)
    out = tmp_path / "grad"
    result = experiment.main(
        [
            "--out",
            str(out),
            "--data-root",
            str(root),
            "--size",
            "48",
            "--bound-points",
            "0",
            "--class-index",
            "2",
            "--dpi",
            "40",
        ]
    )
    assert result.source["kind"] == "acdc" and result.source["volume"].startswith("patient")
    assert result.class_names == ("background", "RV", "MYO", "LV")
    table = json.loads((out / "gradient_table.json").read_text())
    dsc = {row["key"]: row for row in table["losses"]}["dsc"]
    assert dsc["foreground"]["distinct"] == 1 and dsc["background"]["distinct"] == 1
    assert not (out / "bound.json").exists()
