"""HD95 / ASSD in the report: the tables in Table 1's layout with undefined values counted, their CSV columns,
the box plots, and the paired All-HD95 comparison (numbers checked by hand)."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from segmime_jax.paper import distances
from segmime_jax.report import boxplots, tables
from segmime_jax.train import RunResult, TrainConfig

ACDC_CLASSES = ("background", "right_ventricle", "myocardium", "left_ventricle")
NAN = math.nan
# Two test volumes; background NaN (not measured); volume 1 has no LV distance (missed).
HD95_CE = np.array([[NAN, 4.0, 2.0, 6.0], [NAN, 8.0, 4.0, NAN]])
HD95_MIME = np.array([[NAN, 3.0, 3.0, 3.0], [NAN, 5.0, 5.0, 5.0]])
DSC = np.array([[0.99, 0.80, 0.70, 0.90], [0.98, 0.60, 0.90, 0.01]])


def test_distance_summary_leaves_out_and_counts_undefined_values():
    summary = tables.distance_summary(HD95_CE, ACDC_CLASSES)
    assert list(summary) == ["RV", "Myo", "LV", "All"]
    np.testing.assert_allclose(summary["RV"], (6.0, 2.0, 0))
    np.testing.assert_allclose(summary["LV"], (6.0, 0.0, 1))  # one value defined
    pooled = np.array([4.0, 2.0, 6.0, 8.0, 4.0])  # every defined (volume, foreground class) value
    np.testing.assert_allclose(summary["All"], (pooled.mean(), pooled.std(), 1))
    missed_everywhere = tables.distance_summary(np.array([[NAN, NAN], [NAN, NAN]]), ("background", "prostate"))
    assert list(missed_everywhere) == ["Prostate"] and missed_everywhere["Prostate"][2] == 2
    assert math.isnan(missed_everywhere["Prostate"][0])
    with pytest.raises(ValueError, match="volumes, 4 classes"):
        tables.distance_summary(HD95_CE[:, :2], ACDC_CLASSES)


def test_distance_tables_in_markdown_and_csv(tmp_path):
    dsc = tables.build_table1([("adam", "ce", DSC), ("adam", "mime", DSC)], ACDC_CLASSES)
    hd95 = tables.build_distance_table(
        [("adam", "ce", HD95_CE), ("adam", "mime", HD95_MIME)], ACDC_CLASSES, title="HD95 (mm)", key="hd95_mm"
    )
    empty = tables.build_distance_table(  # a row whose runs have no distances (finished before they existed)
        [("adam", "ce", HD95_CE), ("adam", "mime", None)], ACDC_CLASSES, title="ASSD (mm)", key="assd_mm"
    )
    md, csv_path = tables.write_table1(dsc, tmp_path, extra=(hd95, empty))
    text = md.read_text()
    assert "| Adam | CE | 6.0 (2.0) | 3.0 (1.0) | 6.0 (0.0) [1 undefined] | 4.8 (2.0) [1 undefined] |" in text
    assert "| Adam | Mime | – | – | – | – |" in text and "**HD95 (mm)**" in text
    with csv_path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert float(rows[0]["RV_mean"]) == pytest.approx(70.0)  # the DSC columns as before
    assert float(rows[0]["LV_hd95_mm_mean"]) == 6.0 and rows[0]["LV_hd95_mm_undefined"] == "1"
    assert float(rows[1]["All_hd95_mm_std"]) == pytest.approx(1.0)
    assert rows[1]["RV_assd_mm_mean"] == "" and rows[1]["RV_assd_mm_undefined"] == ""
    data = hd95.to_dict()
    assert data["key"] == "hd95_mm" and data["rows"][0]["undefined"] == {"RV": 0, "Myo": 0, "LV": 1, "All": 1}
    combined = distances.format_distances(hd95, hd95)
    assert "| Adam | CE | 6.0 (2.0) / 6.0 (2.0) |" in combined and "[1 undefined] / 6.0 (0.0) |" in combined


def test_box_plots_are_written(tmp_path):
    path = boxplots.plot_distance_boxes(
        {("adam", "ce"): HD95_CE, ("adam", "mime"): HD95_MIME, ("sgd", "ce"): np.full((2, 4), NAN)},
        ACDC_CLASSES,
        tmp_path / "hd95.png",
        title="HD95",
    )
    assert path.is_file() and path.stat().st_size > 10_000
    binary = boxplots.plot_distance_boxes(
        {("adam", "dsc"): np.array([[NAN, 3.0], [NAN, 4.0]])}, ("background", "prostate"), tmp_path / "p.png"
    )
    assert binary.is_file()


def _run(hd95: np.ndarray | None) -> RunResult:
    return RunResult(
        config=TrainConfig(),
        class_names=ACDC_CLASSES,
        history=[],
        best_epoch=1,
        test_volume_names=["a", "b", "c"],
        test_dsc=np.full((3, 4), 0.8),
        test_clece=np.zeros(4),
        reliability={},
        examples={},
        wall_time_s=1.0,
        test_hd95=hd95,
        test_assd=hd95,
    )


def test_paired_hd95_leaves_out_volumes_without_a_value_in_either_loss():
    candidate = _run(np.array([[NAN, 2.0, 2.0, 2.0], [NAN, 9.0, 9.0, 9.0], [NAN, NAN, 1.0, 1.0]]))
    reference = _run(np.array([[NAN, 4.0, 4.0, 4.0], [NAN, 6.0, 6.0, NAN], [NAN, 1.0, 1.0, 1.0]]))
    comparison = distances.paired_hd95([candidate], [reference])
    assert comparison["test_all_hd95_volumes_left_out"] == 2  # b (reference LV) and c (candidate RV)
    difference = comparison["test_all_hd95_mm"]
    assert difference.mean == pytest.approx(-2.0) and difference.n_units == 1
    assert distances.format_hd95_comparison(comparison).startswith("; All-HD95 -2.0 mm")
    assert "2 volumes without an HD95 left out" in distances.format_hd95_comparison(comparison)
    assert distances.paired_hd95([candidate], [_run(None)]) == {}
    assert distances.format_hd95_comparison({}) == ""
    nothing = distances.paired_hd95([candidate], [_run(np.full((3, 4), NAN))])
    assert nothing == {"test_all_hd95_volumes_left_out": 3}
    assert "no test volume" in distances.format_hd95_comparison(nothing)
    assert distances.pooled([candidate, reference], "test_hd95").shape == (6, 4)
    assert distances.pooled([candidate, _run(None)], "test_hd95") is None
