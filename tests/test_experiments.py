"""The experiment CLIs (presets, overrides, validation) and an end-to-end smoke run of experiments.acdc."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from experiments import acdc, promise12
from segmime_jax import experiment


def test_acdc_demo_is_the_default_preset():
    config = acdc.parse_args([])
    assert config == acdc.PRESETS["demo"]
    assert config.losses == ("ce", "dsc", "mime", "nm")
    assert config.optimizers == ("adam",)
    assert config.data_root is None
    assert config.out == Path("results/acdc/demo")
    assert not config.augment


def test_acdc_paper_preset_has_the_paper_settings():
    config = acdc.parse_args(["--preset", "paper"])
    assert config.image_size == 256 and config.batch_size == 8 and config.epochs == 100
    assert config.optimizers == ("adam", "sgd")
    assert (config.adam_lr, config.sgd_lr, config.plateau_patience) == (5e-4, 1e-2, 20)
    assert config.out == Path("results/acdc/paper")


def test_acdc_overrides():
    config = acdc.parse_args(["--preset", "paper", "--losses", "ce,mime", "--optimizers", "sgd",
                              "--data-root", "/data/ACDC", "--out", "/tmp/x", "--epochs", "3", "--image-size", "96",
                              "--batch-size", "2", "--seed", "7", "--resume", "--split", "seeded",
                              "--no-write-predictions", "--sgd-lr", "0.05"])
    assert config.losses == ("ce", "mime") and config.optimizers == ("sgd",)
    assert config.data_root == Path("/data/ACDC") and config.out == Path("/tmp/x")
    assert (config.epochs, config.image_size, config.batch_size, config.seed) == (3, 96, 2, 7)
    assert config.resume and not config.write_predictions and config.split == "seeded"
    assert config.size == (96, 96)
    run = experiment.train_config(config, model="enet", optimizer="sgd", loss="mime", num_classes=4)
    assert (run.model, run.loss, run.optimizer, run.learning_rate) == ("enet", "mime", "sgd", 0.05)
    assert run.loss_classes is None
    assert (run.epochs, run.batch_size, run.seed, run.write_predictions, run.augment) == (3, 2, 7, False, False)


@pytest.mark.parametrize("argv", [["--optimizers", "rmsprop"], ["--losses", "ce,bogus"], ["--losses", "ce,ce"],
                                  ["--resume", "--overwrite"],
                                  ["--resume", "--no-checkpoints"], ["--epochs", "0"], ["--split", "random"],
                                  ["--plateau-patience", "0"], ["--over"], ["--epoch", "3"]])  # no abbreviations
def test_acdc_rejects_bad_options(argv, capsys):
    with pytest.raises(SystemExit):
        acdc.parse_args(argv)
    assert "error" in capsys.readouterr().err


def test_foreground_only_matches_aliases_and_image_size_is_checked_early():
    config = acdc.parse_args(["--losses", "dice,ce", "--foreground-only", "dsc"])
    assert experiment.train_config(config, model="enet", optimizer="adam", loss="dice", num_classes=4).loss_classes \
        == (1, 2, 3)
    assert experiment.train_config(config, model="enet", optimizer="adam", loss="ce", num_classes=4).loss_classes \
        is None
    with pytest.raises(ValueError, match="multiple of 16"):
        experiment.check_grid(acdc.parse_args(["--image-size", "40"]), "residualunet")
    experiment.check_grid(acdc.parse_args(["--image-size", "40"]), "enet")


def test_promise12_presets():
    demo = promise12.parse_args([])
    assert demo.losses == ("ce", "dsc", "mime") and demo.augment
    paper = promise12.parse_args(["--preset", "paper"])
    assert (paper.image_size, paper.batch_size, paper.epochs) == (256, 4, 200)
    assert paper.optimizers == ("adam", "sgd") and paper.augment and "nm" not in paper.losses
    assert promise12.parse_args(["--no-augment"]).augment is False
    assert demo.foreground_only == ("mime", "nm")
    mime = experiment.train_config(demo, model="residualunet", optimizer="adam", loss="mime", num_classes=2)
    dsc = experiment.train_config(demo, model="residualunet", optimizer="adam", loss="dsc", num_classes=2)
    assert (mime.loss_classes, dsc.loss_classes) == ((1,), None)
    assert promise12.parse_args(["--foreground-only", ""]).foreground_only == ()


def test_run_name_is_a_safe_folder_name():
    assert experiment.run_name("adam", "mime") == "adam-mime"
    assert experiment.run_name("sgd", "1*ce+0.5*dsc") == "sgd-1_ce_0.5_dsc"


def test_existing_runs_need_resume_or_overwrite(tmp_path):
    run_dir = tmp_path / "runs" / "adam-ce"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("{}\n")
    config = acdc.parse_args(["--out", str(tmp_path)])
    with pytest.raises(FileExistsError, match="--resume"):
        experiment._check_run_dirs([run_dir], config)
    experiment._check_run_dirs([run_dir], acdc.parse_args(["--out", str(tmp_path), "--resume"]))
    assert run_dir.exists()
    experiment._check_run_dirs([run_dir], acdc.parse_args(["--out", str(tmp_path), "--overwrite"]))
    assert not run_dir.exists()


def test_missing_data_root_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no such folder"):
        acdc.main(["--data-root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_acdc_end_to_end_smoke(tmp_path, capsys):
    out = tmp_path / "out"
    # One loss (each loss compiles its own train step), 32x32, one epoch; conftest's compilation cache.
    argv = ["--synthetic-cases", "5", "--image-size", "32", "--epochs", "1", "--losses", "mime",
            "--batch-size", "8", "--num-examples", "2", "--no-progress", "--no-compilation-cache",
            "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]
    result = acdc.main(argv)
    printed = capsys.readouterr().out
    for name in ("table1.md", "table1.csv", "results.json", "fig2.png", "fig3.png", "fig4.png"):
        assert (out / name).is_file(), name
    run_dir = out / "runs" / "adam-mime"
    for name in ("metrics.jsonl", "result.json", "checkpoints", "predictions"):
        assert (run_dir / name).exists(), name
    assert len(list((run_dir / "predictions").glob("*.nii.gz"))) == len(result.runs["adam", "mime"].test_dsc)
    assert not (tmp_path / "cache" / "jax-compilation").exists()
    assert (tmp_path / "cache" / "synthetic" / "acdc-5-0").is_dir()

    results = json.loads((out / "results.json").read_text())
    assert results["dataset"] == "acdc" and results["model"] == "enet"
    assert set(results["runs"]) == {"adam-mime"}
    assert results["environment"]["versions"]["jax"]
    assert results["data"]["synthetic"] is True
    # The table is computed from the per-volume DSC stored next to it.
    dsc = np.asarray(results["runs"]["adam-mime"]["test_dsc"], dtype=float)
    assert dsc.shape[1] == 4
    mime_row = next(r for r in results["table1"]["rows"] if r["loss"] == "Mime")
    np.testing.assert_allclose(mime_row["LV"], [100 * dsc[:, 3].mean(), 100 * dsc[:, 3].std()], rtol=1e-6)
    np.testing.assert_allclose(mime_row["All"], [100 * dsc[:, 1:].mean(), 100 * dsc[:, 1:].std()], rtol=1e-6)
    assert result.table.cell("adam", "mime", "LV") == pytest.approx(tuple(mime_row["LV"]))
    assert "ours / paper" in printed and "table1.md" in printed

    # A second run into the same folder refuses to clobber it; --resume reuses the finished run.
    with pytest.raises(SystemExit, match="--resume"):
        acdc.main(argv)
    again = acdc.main([*argv, "--resume"])
    assert "finished earlier" in capsys.readouterr().out
    np.testing.assert_array_equal(again.runs["adam", "mime"].test_dsc, result.runs["adam", "mime"].test_dsc)
    # ... but not on other data (here another synthetic seed: other images and split)
    with pytest.raises(SystemExit, match="trained on other data .*train, val, test"):
        acdc.main([*argv, "--resume", "--data-seed", "3"])
    with pytest.raises(SystemExit, match="image size 32x32 -> 48x48"):
        acdc.main([*argv, "--resume", "--image-size", "48"])
