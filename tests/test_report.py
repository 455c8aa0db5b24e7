"""Table 1 and Figures 2-4 writers on a small fake result set (numbers checked by hand)."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from segmime_jax import atomic_files
from segmime_jax.report import figures, tables

ACDC_CLASSES = ("background", "right_ventricle", "myocardium", "left_ventricle")

# Two test volumes, K = 4: background, RV, Myo, LV.
DSC_CE = np.array([[0.99, 0.80, 0.70, 0.90], [0.98, 0.60, 0.90, 1.00]])
DSC_MIME = np.array([[0.99, 0.50, 0.50, 0.50], [0.99, 0.70, 0.70, 0.70]])


def test_dsc_summary_matches_hand_computation():
    summary = tables.dsc_summary(DSC_CE, ACDC_CLASSES)
    assert list(summary) == ["RV", "Myo", "LV", "All"]
    # RV: values 80, 60 -> mean 70, population std 10.
    np.testing.assert_allclose(summary["RV"], (70.0, 10.0))
    np.testing.assert_allclose(summary["Myo"], (80.0, 10.0))
    np.testing.assert_allclose(summary["LV"], (95.0, 5.0))
    # All pools the six foreground values 80, 70, 90, 60, 90, 100: mean 490/6, std over the six.
    pooled = np.array([80.0, 70.0, 90.0, 60.0, 90.0, 100.0])
    mean = 490.0 / 6.0
    std = math.sqrt(((pooled - mean) ** 2).sum() / 6.0)
    np.testing.assert_allclose(summary["All"], (mean, std))
    # The other convention: per-volume means 80 and 83.33 -> std 5/3.
    np.testing.assert_allclose(tables.per_volume_all_std(DSC_CE), 5.0 / 3.0)


def test_dsc_summary_binary_has_no_all_column():
    dsc = np.array([[0.99, 0.85], [0.97, 0.75], [0.98, 0.95]])
    summary = tables.dsc_summary(dsc, ("background", "prostate"))
    assert list(summary) == ["Prostate"]
    np.testing.assert_allclose(summary["Prostate"], (85.0, math.sqrt(200.0 / 3.0)))


def test_dsc_summary_rejects_bad_shapes():
    with pytest.raises(ValueError, match="class_names"):
        tables.dsc_summary(DSC_CE, ("background", "prostate"))
    with pytest.raises(ValueError, match="volumes, classes"):
        tables.dsc_summary(np.zeros((0, 4)), ACDC_CLASSES)


def test_paper_all_std_follows_the_pooled_convention():
    # sqrt(mean of the class variances + variance of the class means) reproduces the paper's "All" column.
    for row in tables.paper_table1("acdc").rows:
        means = np.array([v[0] for v in row.values[:3]])
        stds = np.array([v[1] for v in row.values[:3]])
        pooled_std = math.sqrt((stds**2).mean() + means.var())
        assert abs(means.mean() - row.values[3][0]) < 0.1, row
        assert abs(pooled_std - row.values[3][1]) < 0.15, row


def test_build_and_write_table1(tmp_path):
    table = tables.build_table1([("adam", "ce", DSC_CE), ("adam", "mime", DSC_MIME)], ACDC_CLASSES)
    assert table.columns == ("RV", "Myo", "LV", "All")
    assert [(r.optimizer, r.loss) for r in table.rows] == [("Adam", "CE"), ("Adam", "Mime")]
    np.testing.assert_allclose(table.cell("adam", "mime", "LV"), (60.0, 10.0))
    np.testing.assert_allclose(table.cell("Adam", "Mime", "All"), (60.0, 10.0))

    md, csv_path = tables.write_table1(table, tmp_path, paper=tables.paper_table1("acdc"))
    assert md == tmp_path / "table1.md" and csv_path == tmp_path / "table1.csv"
    text = md.read_text()
    assert "| Adam | CE | 70.0 (10.0) | 80.0 (10.0) | 95.0 (5.0) | 81.7 (13.4) |" in text
    # Ours next to the paper's Adam CE row.
    assert "70.0 (10.0) / 81.7 (10.8)" in text
    assert "60.0 (10.0) / 87.8 (8.9)" in text

    with csv_path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["loss"] for r in rows] == ["CE", "Mime"]
    assert float(rows[0]["RV_mean"]) == pytest.approx(70.0)
    assert float(rows[0]["LV_std"]) == pytest.approx(5.0)
    assert float(rows[1]["All_mean"]) == pytest.approx(60.0)
    assert not list(tmp_path.glob(".*")), "temporary files left behind"


def test_comparison_marks_missing_paper_rows():
    ours = tables.build_table1([("adam", "nm", np.array([[1.0, 0.9], [1.0, 0.7]]))], ("background", "prostate"))
    text = tables.format_comparison(ours, tables.paper_table1("promise12"))
    assert "| Adam | NM | 80.0 (10.0) / – |" in text


def test_table_to_dict_round_numbers():
    table = tables.build_table1([("adam", "ce", DSC_CE)], ACDC_CLASSES)
    data = table.to_dict()
    assert data["columns"] == ["RV", "Myo", "LV", "All"]
    assert data["rows"][0]["RV"] == pytest.approx([70.0, 10.0])


def _history(offset: float, epochs: int = 5) -> list[dict]:
    return [{"epoch": e, "val_dsc_fg": min(1.0, offset + 0.1 * e), "train_loss": 1.0 / (e + 1)} for e in range(epochs)]


def test_figures_are_written(tmp_path):
    rng = np.random.default_rng(0)
    histories = {
        ("adam", "ce"): _history(0.3),
        ("adam", "dsc"): _history(0.2),
        ("sgd", "ce"): _history(0.1),
        ("sgd", "dsc"): _history(0.0, epochs=3),
    }
    fig2 = figures.plot_validation_curves({k: [h] for k, h in histories.items()}, tmp_path / "fig2.png")
    seeds = {("adam", "ce"): [_history(0.3), _history(0.25)], ("adam", "dsc"): [_history(0.2), _history(0.1)]}
    for runs in seeds.values():
        for history in runs:
            for record in history:
                record["grad_telemetry"] = {"image_dynamic_range_db_median": [None, 1.5, 2.0, 12.0]}
    curves = [
        figures.plot_validation_curves(seeds, tmp_path / "curves" / "fig2.png"),
        figures.plot_training_loss(seeds, tmp_path / "curves" / "loss.png"),
        figures.plot_gradient_range(seeds, tmp_path / "curves" / "range.png"),
    ]

    bins = 15
    confidence = np.tile((np.arange(bins) + 0.5) / bins, (4, 1))
    reliability = {
        loss: {
            "confidence": confidence,
            "accuracy": np.clip(confidence + shift, 0, 1),
            "count": np.where(np.arange(bins) % 4 == 0, 0, 10) * np.ones((4, 1)),
        }
        for loss, shift in (("ce", 0.0), ("dsc", -0.1))
    }
    clece = {"ce": np.array([0.01, 0.02, 0.03, 0.04]), "dsc": np.array([0.05, 0.06, 0.07, 0.08])}
    fig3 = figures.plot_calibration(clece, reliability, ACDC_CLASSES, tmp_path / "fig3.png")

    image = rng.random((3, 32, 32))
    label = rng.integers(0, 4, (3, 32, 32))
    examples = {
        loss: {"image": image, "label": label, "prediction": rng.integers(0, 4, (3, 32, 32))} for loss in ("ce", "dsc")
    }
    fig4 = figures.plot_examples(examples, ACDC_CLASSES, tmp_path / "fig4.png")

    for path in (fig2, fig3, fig4, *curves):
        assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves", "fig2.png", "fig3.png", "fig4.png"]


def test_label_overlay_tints_only_foreground():
    image = np.array([[0.0, 1.0], [0.5, 0.25]])
    label = np.array([[0, 1], [3, 0]])
    rgb = figures.label_overlay(image, label, alpha=0.5)
    assert rgb.shape == (2, 2, 3)
    np.testing.assert_allclose(rgb[0, 0], (0.0, 0.0, 0.0))
    np.testing.assert_allclose(rgb[1, 1], (0.25, 0.25, 0.25))
    np.testing.assert_allclose(rgb[0, 1], 0.5 * 1.0 + 0.5 * np.array(figures._LABEL_COLOURS[1]))
    np.testing.assert_allclose(rgb[1, 0], 0.5 * 0.5 + 0.5 * np.array(figures._LABEL_COLOURS[3]))


def test_examples_reject_mismatched_prediction(tmp_path):
    image = np.zeros((1, 8, 8))
    examples = {"ce": {"image": image, "label": np.zeros((1, 8, 8), int), "prediction": np.zeros((1, 4, 4), int)}}
    with pytest.raises(ValueError, match="prediction shape"):
        figures.plot_examples(examples, ("background", "prostate"), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_written_files_have_the_usual_permissions(tmp_path):
    import os

    umask = os.umask(0)
    os.umask(umask)
    path = atomic_files.write_text_atomic(tmp_path / "a.txt", "x")
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    with pytest.raises(RuntimeError), atomic_files.atomic_output(tmp_path / "b.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_atomic_directory_is_all_or_nothing(tmp_path):
    from segmime_jax.atomic_files import atomic_directory

    target = tmp_path / "out"
    with atomic_directory(target) as staging:
        (staging / "a.txt").write_text("1")
        assert not target.exists()
    assert (target / "a.txt").read_text() == "1" and oct(target.stat().st_mode & 0o777) != "0o700"
    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "failed") as staging:
        (staging / "a.txt").write_text("1")
        raise RuntimeError
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing left of the failed one
    with pytest.raises(FileExistsError), atomic_directory(target) as staging:
        (staging / "b.txt").write_text("2")
    with atomic_directory(target, exists="replace") as staging:
        (staging / "b.txt").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    with atomic_directory(target, exists="keep") as staging:
        (staging / "c.txt").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_files_into_moves_together_and_drops_stale(tmp_path):
    from segmime_jax.atomic_files import atomic_files_into

    target = tmp_path / "out"
    with atomic_files_into(target, stale=("opt.txt",)) as staging:
        for name in ("a.txt", "opt.txt"):
            (staging / name).write_text("1")
        assert staging.parent == target and not (target / "a.txt").exists()  # nothing moved before the end
    (target / "other.txt").write_text("mine")
    with pytest.raises(RuntimeError), atomic_files_into(target, stale=("opt.txt",)) as staging:
        (staging / "a.txt").write_text("half")
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt", "opt.txt", "other.txt"]  # untouched
    assert (target / "a.txt").read_text() == "1"
    with atomic_files_into(target, stale=("opt.txt", "never.txt")) as staging:
        (staging / "a.txt").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt", "other.txt"]  # opt.txt of the earlier run gone
    assert (target / "a.txt").read_text() == "2"
    with pytest.raises(ValueError, match="plain files"), atomic_files_into(target) as staging:
        (staging / "sub").mkdir()
    assert sorted(p.name for p in target.iterdir()) == ["a.txt", "other.txt"]
    atomic_files.write_json_atomic(tmp_path / "j.json", {"x": [1.5, float("nan")]}, indent=2)
    assert (tmp_path / "j.json").read_text() == '{\n  "x": [\n    1.5,\n    null\n  ]\n}\n'
