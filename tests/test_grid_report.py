"""A grid's report from its facts tables: Table 1 and the HD95 / ASSD tables (undefined values left out and
counted), their markdown and CSV, the paired comparisons, and Figures 2-4 and the box plots (numbers checked by
hand, on small fake runs)."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from segmime_jax import atomic_files
from segmime_jax.paper.grid import boxplots, figures, statistics, tables
from segmime_jax.paper.grid.facts import epoch_facts, volume_facts
from segmime_jax.train import RunResult, TrainConfig

ACDC_CLASSES = ("background", "right_ventricle", "myocardium", "left_ventricle")
NAN = math.nan

# Two test volumes, K = 4: background, RV, Myo, LV.
DSC_CE = np.array([[0.99, 0.80, 0.70, 0.90], [0.98, 0.60, 0.90, 1.00]])
DSC_MIME = np.array([[0.99, 0.50, 0.50, 0.50], [0.99, 0.70, 0.70, 0.70]])
# Background NaN (not measured); volume 2 has no LV distance in CE (missed).
HD95_CE = np.array([[NAN, 4.0, 2.0, 6.0], [NAN, 8.0, 4.0, NAN]])
HD95_MIME = np.array([[NAN, 3.0, 3.0, 3.0], [NAN, 5.0, 5.0, 5.0]])


def _run(dsc: np.ndarray, hd95: np.ndarray | None = None, *, classes=ACDC_CLASSES, history=()) -> RunResult:
    return RunResult(
        config=TrainConfig(),
        class_names=classes,
        history=list(history),
        best_epoch=1,
        test_volume_names=[f"p{v}" for v in range(len(dsc))],
        test_dsc=np.asarray(dsc, float),
        test_clece=np.zeros(len(classes)),
        reliability={},
        examples={},
        wall_time_s=1.0,
        test_hd95=hd95,
        test_assd=hd95,
    )


def _table(runs: dict, metric: str = "dsc", title: str = "Testing") -> tables.Table:
    return tables.table1(volume_facts(runs), metric, title=title)


def test_the_volume_facts_are_one_row_per_run_volume_and_foreground_class():
    facts = volume_facts({("adam", "ce", 0): _run(DSC_CE, HD95_CE), ("adam", "mime", 0): _run(DSC_MIME)})
    assert list(facts.columns) == [
        "optimizer", "loss", "seed", "volume", "class", "dsc", "hd95_mm", "assd_mm", "measured"
    ]  # fmt: skip
    assert len(facts) == 2 * 2 * 3 and list(facts["optimizer"].cat.categories) == ["adam"]
    np.testing.assert_array_equal(facts["dsc"].to_numpy()[:6], DSC_CE[:, 1:].ravel())
    assert facts["measured"].tolist() == [True] * 6 + [False] * 6


def test_table1_matches_hand_computation():
    table = _table({("adam", "ce", 0): _run(DSC_CE), ("adam", "mime", 0): _run(DSC_MIME)})
    assert table.columns == ("RV", "Myo", "LV", "All")
    assert list(table.frame.index) == [("Adam", "CE"), ("Adam", "Mime")]
    # RV: values 80, 60 -> mean 70, population std 10.
    np.testing.assert_allclose(table.cell("adam", "ce", "RV"), (70.0, 10.0))
    np.testing.assert_allclose(table.cell("adam", "ce", "Myo"), (80.0, 10.0))
    np.testing.assert_allclose(table.cell("adam", "ce", "LV"), (95.0, 5.0))
    # All pools the six foreground values 80, 70, 90, 60, 90, 100: mean 490/6, std over the six.
    pooled = np.array([80.0, 70.0, 90.0, 60.0, 90.0, 100.0])
    np.testing.assert_allclose(table.cell("Adam", "CE", "All"), (pooled.mean(), pooled.std()))
    np.testing.assert_allclose(table.cell("adam", "mime", "LV"), (60.0, 10.0))
    with pytest.raises(KeyError):
        table.cell("sgd", "ce", "RV")
    data = table.to_dict()
    assert data["columns"] == ["RV", "Myo", "LV", "All"] and data["rows"][0]["RV"] == pytest.approx([70.0, 10.0])
    assert "undefined" not in data["rows"][0] and data["key"] == "dsc"


def test_table1_of_a_binary_task_has_no_all_column_and_pools_seeds():
    prostate = ("background", "prostate")
    runs = {
        ("adam", "dsc", 0): _run([[0.99, 0.85], [0.97, 0.75]], classes=prostate),
        ("adam", "dsc", 1): _run([[0.98, 0.95]], classes=prostate),
    }
    table = _table(runs)
    assert table.columns == ("Prostate",)
    np.testing.assert_allclose(table.cell("adam", "dsc", "Prostate"), (85.0, math.sqrt(200.0 / 3.0)))


def test_paper_all_std_follows_the_pooled_convention():
    # sqrt(mean of the class variances + variance of the class means) reproduces the paper's "All" column.
    paper = tables.paper_table1("acdc")
    for optimizer, loss in paper.frame.index:
        cells = [paper.cell(optimizer, loss, c) for c in paper.columns]
        means, stds = np.array([c[0] for c in cells[:3]]), np.array([c[1] for c in cells[:3]])
        assert abs(means.mean() - cells[3][0]) < 0.1, (optimizer, loss)
        assert abs(math.sqrt((stds**2).mean() + means.var()) - cells[3][1]) < 0.15, (optimizer, loss)
    with pytest.raises(ValueError, match="unknown dataset"):
        tables.paper_table1("brats")


def test_write_table1_next_to_the_paper(tmp_path):
    table = _table({("adam", "ce", 0): _run(DSC_CE), ("adam", "mime", 0): _run(DSC_MIME)})
    md, csv_path = tables.write_table1(table, tmp_path, paper=tables.paper_table1("acdc"))
    assert md == tmp_path / "table1.md" and csv_path == tmp_path / "table1.csv"
    text = md.read_text()
    assert "| Adam | CE | 70.0 (10.0) | 80.0 (10.0) | 95.0 (5.0) | 81.7 (13.4) |" in text
    assert "70.0 (10.0) / 81.7 (10.8)" in text and "60.0 (10.0) / 87.8 (8.9)" in text
    with csv_path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["loss"] for r in rows] == ["CE", "Mime"]
    assert rows[0]["RV_mean"] == "70.0000" and rows[0]["LV_std"] == "5.0000" and rows[1]["All_mean"] == "60.0000"
    assert not list(tmp_path.glob(".*")), "temporary files left behind"
    prostate = ("background", "prostate")
    ours = _table({("adam", "nm", 0): _run([[1.0, 0.9], [1.0, 0.7]], classes=prostate)})
    text = tables.format_side_by_side([ours, tables.paper_table1("promise12")], "(ours / paper)")
    assert "| Adam | NM | 80.0 (10.0) / – |" in text


def test_distance_tables_leave_out_and_count_undefined_values(tmp_path):
    runs = {("adam", "ce", 0): _run(DSC_CE, HD95_CE), ("adam", "mime", 0): _run(DSC_CE, HD95_MIME)}
    hd95 = _table(runs, "hd95_mm", "HD95 (mm)")
    np.testing.assert_allclose(hd95.cell("adam", "ce", "RV"), (6.0, 2.0))
    np.testing.assert_allclose(hd95.cell("adam", "ce", "LV"), (6.0, 0.0))  # one value defined
    assert hd95.undefined(("Adam", "CE"), "LV") == 1 and hd95.undefined(("Adam", "CE"), "RV") == 0
    pooled = np.array([4.0, 2.0, 6.0, 8.0, 4.0])  # every defined (volume, foreground class) value
    np.testing.assert_allclose(hd95.cell("adam", "ce", "All"), (pooled.mean(), pooled.std()))
    # a run whose distances were not measured (finished before they existed): an empty row
    unmeasured = {("adam", "ce", 0): _run(DSC_CE, HD95_CE), ("adam", "mime", 0): _run(DSC_CE)}
    assd = _table(unmeasured, "assd_mm", "ASSD (mm)")
    assert assd.cell("adam", "mime", "RV") is None
    md, csv_path = tables.write_table1(_table(runs), tmp_path, extra=(hd95, assd))
    text = md.read_text()
    assert "| Adam | CE | 6.0 (2.0) | 3.0 (1.0) | 6.0 (0.0) [1 undefined] | 4.8 (2.0) [1 undefined] |" in text
    assert "| Adam | Mime | – | – | – | – |" in text and "**HD95 (mm)**" in text
    with csv_path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert float(rows[0]["RV_mean"]) == pytest.approx(70.0)  # the DSC columns first
    assert rows[0]["LV_hd95_mm_mean"] == "6.0000" and rows[0]["LV_hd95_mm_undefined"] == "1"
    assert float(rows[1]["All_hd95_mm_std"]) == pytest.approx(1.0)
    assert rows[1]["RV_assd_mm_mean"] == "" and rows[1]["RV_assd_mm_undefined"] == ""
    data = hd95.to_dict()
    assert data["key"] == "hd95_mm" and data["rows"][0]["undefined"] == {"RV": 0, "Myo": 0, "LV": 1, "All": 1}
    assert assd.to_dict()["rows"][1]["RV"] is None and assd.to_dict()["rows"][1]["undefined"]["RV"] == 0
    binary = {("adam", "dsc", 0): _run([[1.0, 0.1]], np.array([[NAN, NAN]]), classes=("bg", "prostate"))}
    missed = _table(binary, "hd95_mm", "HD95")  # measured, and undefined everywhere
    assert tables.format_markdown(missed).count("nan [1 undefined]") == 1
    combined = tables.format_side_by_side([hd95, hd95], "HD95 / ASSD")
    assert "| Adam | CE | 6.0 (2.0) / 6.0 (2.0) |" in combined and "[1 undefined] / 6.0 (0.0) |" in combined


def test_comparisons_pair_seeds_and_volumes_and_leave_out_volumes_without_an_hd95():
    history = [{"epoch": e, "val_dsc_fg": v} for e, v in enumerate((0.2, 0.5, 0.9, 1.0), 1)]
    slow = [{"epoch": e, "val_dsc_fg": v} for e, v in enumerate((0.1, 0.2, 0.5, 1.0), 1)]
    dsc = np.full((3, 4), 0.8)
    candidate = np.array([[NAN, 2.0, 2.0, 2.0], [NAN, 9.0, 9.0, 9.0], [NAN, NAN, 1.0, 1.0]])
    reference = np.array([[NAN, 4.0, 4.0, 4.0], [NAN, 6.0, 6.0, NAN], [NAN, 1.0, 1.0, 1.0]])
    runs = {
        ("adam", "dsc", 0): _run(dsc, reference, history=history),
        ("adam", "mime", 0): _run(dsc - 0.1, candidate, history=slow),
    }
    comparisons = statistics.compare_losses(volume_facts(runs), epoch_facts(runs), "dsc", ("dsc", "mime"))
    c = comparisons["adam/mime"]
    assert (c["optimizer"], c["loss"], c["reference"]) == ("adam", "mime", "dsc")
    assert c["test_all_dsc"].mean == pytest.approx(-0.1) and c["test_all_dsc"].n_units == 3
    assert c["test_all_hd95_volumes_left_out"] == 2  # p1 (reference LV) and p2 (candidate RV)
    assert c["test_all_hd95_mm"].mean == pytest.approx(-2.0) and c["test_all_hd95_mm"].n_units == 1
    assert c["epochs_to_90pct_best_val"].mean == 1.0  # epoch 4 against epoch 3
    assd, left_out = statistics.paired_metric(volume_facts(runs), "adam", "mime", "dsc", "assd_mm")  # any metric
    assert (assd.mean, left_out) == (pytest.approx(-2.0), 2)  # the fake runs' ASSD is their HD95
    speeds = statistics.run_speeds(epoch_facts(runs))
    assert speeds.loc[("adam", "dsc", 0), "epochs_to_90"] == 3
    assert speeds.loc[("adam", "mime", 0), "late_gain"] == pytest.approx(0.5)
    unmeasured = {**runs, ("adam", "mime", 0): _run(dsc, None, history=slow)}
    c = statistics.compare_losses(volume_facts(unmeasured), epoch_facts(unmeasured), "dsc", ("dsc", "mime"))
    assert "test_all_hd95_volumes_left_out" not in c["adam/mime"]
    nowhere = {**runs, ("adam", "mime", 0): _run(dsc, np.full((3, 4), NAN), history=slow)}
    c = statistics.compare_losses(volume_facts(nowhere), epoch_facts(nowhere), "dsc", ("dsc", "mime"))
    assert c["adam/mime"]["test_all_hd95_volumes_left_out"] == 3 and "test_all_hd95_mm" not in c["adam/mime"]


def test_box_plots_are_written(tmp_path):
    runs = {
        ("adam", "ce", 0): _run(DSC_CE, HD95_CE),
        ("adam", "mime", 0): _run(DSC_CE, HD95_MIME),
        ("sgd", "ce", 0): _run(DSC_CE, np.full((2, 4), NAN)),
    }
    path = boxplots.plot_distance_boxes(volume_facts(runs), tmp_path / "hd95.png", title="HD95")
    assert path.is_file() and path.stat().st_size > 10_000
    binary = volume_facts({("adam", "dsc", 0): _run([[1, 0.9], [1, 0.8]], np.array([[NAN, 3.0], [NAN, 4.0]]),
                                                  classes=("background", "prostate"))})  # fmt: skip
    assert boxplots.plot_distance_boxes(binary, tmp_path / "p.png").is_file()


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
    one_seed = epoch_facts({(o, l, 0): _run(DSC_CE, history=h) for (o, l), h in histories.items()})
    fig2 = figures.plot_validation_curves(one_seed, tmp_path / "fig2.png")
    seeds = {("adam", "ce"): [_history(0.3), _history(0.25)], ("adam", "dsc"): [_history(0.2), _history(0.1)]}
    for runs in seeds.values():
        for history in runs:
            for record in history:
                record["grad_telemetry"] = {"image_dynamic_range_db_median": [None, 1.5, 2.0, 12.0]}
    epochs = epoch_facts({(o, l, s): _run(DSC_CE, history=h) for (o, l), hs in seeds.items() for s, h in enumerate(hs)})
    assert epochs["grad_range_db_fg"].iloc[0] == pytest.approx(15.5 / 3)
    curves = [
        figures.plot_validation_curves(epochs, tmp_path / "curves" / "fig2.png"),
        figures.plot_training_loss(epochs, tmp_path / "curves" / "loss.png"),
        figures.plot_gradient_range(epochs, tmp_path / "curves" / "range.png"),
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
