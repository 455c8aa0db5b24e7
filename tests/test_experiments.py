"""The experiment CLIs (presets, overrides, validation) and an end-to-end run of the ACDC grid (commands.acdc)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from segmime_jax.commands import acdc, promise12
from segmime_jax.paper import grid


def test_acdc_demo_is_the_default_preset():
    config = acdc.parse_args([])
    assert config == acdc.PRESETS["demo"]
    assert config.losses == ("ce", "dsc", "mime", "nm")
    assert config.optimizers == ("adam",)
    assert config.data_root is None and config.synthetic_zoom == 2.0
    assert config.out == Path("results/acdc/demo")
    assert not config.train.augment
    assert (config.adam_lr, config.train.adam_b1, config.train.epochs, config.seeds) == (2e-3, 0.9, 16, 1)
    assert (config.synthetic_cases, config.train.plateau_patience) == (30, 2)


def test_acdc_paper_preset_has_the_paper_settings():
    config = acdc.parse_args(["--preset", "paper"])
    assert (config.image_size, config.train.batch_size, config.train.epochs) == (256, 8, 100)
    assert config.optimizers == ("adam", "sgd") and config.synthetic_zoom == 1.0
    assert (config.adam_lr, config.sgd_lr, config.train.plateau_patience) == (5e-4, 1e-2, 20)
    assert config.out == Path("results/acdc/paper")


def test_acdc_overrides_reach_the_runs():
    config = acdc.parse_args(
        [
            "--preset",
            "paper",
            "--losses",
            "ce,mime",
            "--reference-loss",
            "ce",
            "--optimizers",
            "sgd",
            "--data-root",
            "/data/ACDC",
            "--out",
            "/tmp/x",
            "--epochs",
            "3",
            "--image-size",
            "96",
            "--batch-size",
            "2",
            "--seed",
            "7",
            "--seeds",
            "2",
            "--split",
            "seeded",
            "--no-write-predictions",
            "--sgd-lr",
            "0.05",
        ]
    )
    assert config.losses == ("ce", "mime") and config.optimizers == ("sgd",)
    assert config.data_root == Path("/data/ACDC") and config.out == Path("/tmp/x")
    assert (config.train.epochs, config.image_size, config.train.batch_size, config.train.seed) == (3, 96, 2, 7)
    assert not config.train.write_predictions and config.split == "seeded" and config.size == (96, 96)
    runs = grid.grid_runs(config, model="enet", num_classes=4)
    assert [(r.optimizer, r.loss, r.seed, r.name) for r in runs] == [
        ("sgd", "ce", 7, "sgd-ce-seed7"),
        ("sgd", "ce", 8, "sgd-ce-seed8"),
        ("sgd", "mime", 7, "sgd-mime-seed7"),
        ("sgd", "mime", 8, "sgd-mime-seed8"),
    ]
    run = runs[2].config
    assert (run.model, run.loss, run.optimizer, run.learning_rate, run.loss_classes) == (
        "enet",
        "mime",
        "sgd",
        0.05,
        None,
    )
    assert (run.epochs, run.batch_size, run.seed, run.write_predictions, run.augment) == (3, 2, 7, False, False)
    assert runs[2].directory == Path("/tmp/x/runs/sgd-mime-seed7")
    assert grid.loss_terms(runs, 4) == ("ce", "mime")  # the one compiled loss of the grid


@pytest.mark.parametrize(
    "argv",
    [
        ["--optimizers", "rmsprop"],
        ["--losses", "ce,bogus"],
        ["--losses", "ce,ce"],
        ["--epochs", "0"],
        ["--split", "random"],
        ["--seeds", "0"],
        ["--plateau-patience", "0"],
        ["--over"],
        ["--epoch", "3"],  # no abbreviations
        ["--loss", "ce"],
        ["--synthetic-zoom", "0.5"],
        ["--losses", "ce,dsc", "--reference-loss", "mime"],  # nothing to compare with
        ["--losses", "ce,mime"],  # the default reference, dsc, is not trained
        ["--adam-b1", "1.5"],
        ["--adam-b2", "1"],
        ["--momentum", "-0.1"],
        ["--weight-decay", "-1e-4"],
        ["--sgd-lr", "inf"],
        ["--adam-lr", "nan"],
        ["--adam-lr", "-1"],
        ["--plateau-factor", "1"],
        ["--plateau-min-delta", "nan"],
        ["--num-devices", "0"],
        ["--seed", "-1"],
        ["--shard", "0/2"],
        ["--shard", "3/2"],
        ["--shard", "1/0"],
        ["--shard", "x"],
    ],
)  # --loss is set per run
def test_acdc_rejects_bad_options_in_two_lines(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        acdc.parse_args(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0].startswith("usage:") and err[1].startswith("error:"), err
    assert exit_info.value.code == 2  # one exit status for every refused option


def test_numeric_options_show_and_enforce_their_range(capsys):
    with pytest.raises(SystemExit):
        acdc.parse_args(["--adam-b1", "1.5"])
    assert capsys.readouterr().err.strip().endswith("error: --adam-b1 must be in [0, 1), got 1.5")
    with pytest.raises(ValueError, match=r"--sgd-lr must be > 0, got inf"):
        grid.GridConfig(sgd_lr=float("inf"))  # the same check from Python
    with pytest.raises(SystemExit):
        acdc.parse_args(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "Adam beta1; in [0, 1) (default: 0.9)" in help_text
    assert "--resume" not in help_text  # there is no such flag: a rerun continues


def test_foreground_only_matches_aliases_and_image_size_is_checked_early():
    config = acdc.parse_args(["--losses", "dice,ce", "--foreground-only", "dsc"])
    classes = {r.loss: r.config.loss_classes for r in grid.grid_runs(config, model="enet", num_classes=4)}
    assert classes == {"dice": (1, 2, 3), "ce": None}
    with pytest.raises(ValueError, match="multiple of 16"):
        grid.check_grid(acdc.parse_args(["--image-size", "40"]), "residualunet")
    grid.check_grid(acdc.parse_args(["--image-size", "40"]), "enet")


def test_promise12_presets():
    demo = promise12.parse_args([])
    assert demo.losses == ("ce", "dsc", "mime") and demo.train.augment
    paper = promise12.parse_args(["--preset", "paper"])
    assert (paper.image_size, paper.train.batch_size, paper.train.epochs) == (256, 4, 200)
    assert paper.optimizers == ("adam", "sgd") and paper.train.augment and "nm" not in paper.losses
    assert promise12.parse_args(["--no-augment"]).train.augment is False
    assert demo.foreground_only == ("mime", "nm")
    classes = {r.loss: r.config.loss_classes for r in grid.grid_runs(demo, model="residualunet", num_classes=2)}
    assert classes == {"ce": None, "dsc": None, "mime": (1,)}
    converged = promise12.parse_args(["--preset", "converged"])  # the demo trained 6x longer, Dice and Mime
    assert converged.losses == ("dsc", "mime") and (converged.train.epochs, converged.train.plateau_patience) == (72, 6)
    assert (converged.image_size, converged.synthetic_cases, converged.train.adam_b1) == (48, 16, 0.9)
    assert promise12.parse_args(["--foreground-only", ""]).foreground_only == ()


def test_run_name_is_a_safe_folder_name():
    assert grid.run_name("adam", "mime", 0) == "adam-mime-seed0"
    assert grid.run_name("sgd", "1*ce+0.5*dsc", 3) == "sgd-1_ce_0.5_dsc-seed3"


def test_bad_paths_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(SystemExit, match="no such folder"):
        acdc.main(["--data-root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(SystemExit, match="is a file; give the folder"):
        acdc.main(["--data-root", str(a_file), "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit):
        acdc.main(["--out", str(a_file)])
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: --out {a_file}: is a file, not a folder"
    for flag, path, problem in (
        ("--out", a_file / "sub", f"is under {a_file}, a file"),
        ("--cache-dir", a_file, "is a file"),
    ):
        with pytest.raises(SystemExit):
            acdc.main([flag, str(path)])
        assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: {flag} {path}: {problem}, not a folder"


def test_a_damaged_synthetic_dataset_says_how_to_regenerate_it(tmp_path, capsys):
    from segmime_jax.paper.grid.datasets import dataset_root

    argv = ["--synthetic-cases", "4", "--image-size", "32", "--cache-dir", str(tmp_path / "cache")]
    root, synthetic = dataset_root("acdc", acdc.parse_args(argv), log=lambda _: None)
    assert synthetic
    image = next(root.rglob("*_frame01.nii.gz"))
    image.write_bytes(image.read_bytes()[:100])  # truncated
    with pytest.raises(SystemExit) as exit_info:
        acdc.main([*argv, "--out", str(tmp_path / "out")])
    message = str(exit_info.value)
    assert message.startswith(f"error: {image}") and f"delete {root} and rerun to generate it again" in message


@pytest.mark.slow
def test_acdc_end_to_end(tmp_path, capsys):
    """Two losses share one compiled train step; the report pairs them; a rerun reuses the finished runs."""
    out = tmp_path / "out"
    argv = [
        "--synthetic-cases",
        "5",
        "--synthetic-zoom",
        "1",
        "--image-size",
        "32",
        "--epochs",
        "2",
        "--losses",
        "dsc,mime",
        "--batch-size",
        "8",
        "--num-examples",
        "2",
        "--no-compilation-cache",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--out",
        str(out),
    ]
    result = acdc.main(argv)
    printed = capsys.readouterr().out
    _check_first_run(out, result, printed, tmp_path / "cache")
    _check_report(out, printed)
    _check_rerun(argv, result, capsys)


def _check_first_run(out, result, printed, cache):
    # one compilation per program for the whole grid (the last batch is trimmed: a second train step shape)
    assert printed.count("compiling the train step (batches of 8)") == 1
    assert printed.count("compiling the train step (the last batch") == 1
    assert printed.count("compiling the evaluation step") == 1 and printed.count("compiling the gradient probe") == 1
    assert printed.count("epoch 2/2") == 2  # plain lines when not on a terminal
    for name in (
        "table1.md",
        "table1.csv",
        "results.json",
        "fig2.png",
        "fig3.png",
        "fig4.png",
        "train_loss.png",
        "gradient_range.png",
        "hd95.png",
        "test_metrics.csv",
    ):
        assert (out / name).is_file(), name
    run_dir = out / "runs" / "adam-mime-seed0"
    for name in ("metrics.jsonl", "result.json", "checkpoints", "predictions", "test_metrics.csv"):
        assert (run_dir / name).exists(), name
    mime = result.runs["adam-mime-seed0"]
    assert len(list((run_dir / "predictions").glob("*.nii.gz"))) == len(mime.test_dsc)
    assert not (cache / "jax-compilation").exists()
    assert (cache / "synthetic" / "acdc-5-0").is_dir()
    record = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert all(record[k] >= 0 for k in ("train_s", "val_s", "telemetry_s", "checkpoint_s"))


def _check_report(out, printed):
    results = json.loads((out / "results.json").read_text())
    assert results["dataset"] == "acdc" and results["model"] == "enet"
    assert set(results["runs"]) == {"adam-dsc-seed0", "adam-mime-seed0"}
    assert results["environment"]["versions"]["jax"] and results["data"]["synthetic"] is True
    # The table is computed from the per-volume DSC stored next to it.
    dsc = np.asarray(results["runs"]["adam-mime-seed0"]["test_dsc"], dtype=float)
    assert dsc.shape[1] == 4
    mime_row = next(r for r in results["table1"]["rows"] if r["loss"] == "Mime")
    np.testing.assert_allclose(mime_row["LV"], [100 * dsc[:, 3].mean(), 100 * dsc[:, 3].std()], rtol=1e-6)
    np.testing.assert_allclose(mime_row["All"], [100 * dsc[:, 1:].mean(), 100 * dsc[:, 1:].std()], rtol=1e-6)
    # ... and the comparison from the same values, paired by volume
    reference = np.asarray(results["runs"]["adam-dsc-seed0"]["test_dsc"], dtype=float)
    comparison = results["comparisons"]["adam/mime"]["test_all_dsc"]
    assert comparison["mean"] == pytest.approx((dsc[:, 1:].mean(1) - reference[:, 1:].mean(1)).mean())
    assert comparison["n_units"] == len(dsc) and comparison["n_seeds"] == 1
    assert "Mime − DSC: test All-DSC" in printed and "ours / paper" in printed
    assert "Mime − DSC" in (out / "table1.md").read_text()
    # HD95 and ASSD (mm) next to the DSC: measured on the synthetic label files, in the tables and the CSV
    hd95 = np.asarray(results["runs"]["adam-mime-seed0"]["test_hd95"], dtype=float)
    assert hd95.shape == dsc.shape and results["runs"]["adam-mime-seed0"]["surface"]["ground_truth"] == "label files"
    assert "Testing HD95 / ASSD (mm" in printed and "testing HD95 (mm)" in (out / "table1.md").read_text()
    mime_hd95 = next(r for r in results["table1_hd95"]["rows"] if r["loss"] == "Mime")
    if np.isfinite(hd95[:, 3]).all():
        np.testing.assert_allclose(mime_hd95["LV"], [hd95[:, 3].mean(), hd95[:, 3].std()], rtol=1e-6)
    lines = (out / "test_metrics.csv").read_text().splitlines()
    assert lines[0] == "optimizer,loss,seed,volume,class,dsc,hd95_mm,assd_mm" and len(lines) == 1 + 2 * 3 * len(dsc)


def _check_rerun(argv, result, capsys):
    mime = result.runs["adam-mime-seed0"]
    # A run finished before surface metrics existed: a rerun measures them from its NIfTI predictions
    out = Path(argv[argv.index("--out") + 1])
    stored = json.loads((out / "runs" / "adam-mime-seed0" / "result.json").read_text())
    for key in ("test_hd95", "test_assd", "surface"):
        del stored[key]
    (out / "runs" / "adam-mime-seed0" / "result.json").write_text(json.dumps(stored))
    # Rerunning the same command reuses the finished runs (and compiles nothing) ...
    again = acdc.main(argv)
    printed = capsys.readouterr().out
    assert printed.count("finished earlier") == 2 and "compiling" not in printed
    assert printed.count("HD95 and ASSD measured from its predictions/") == 1
    np.testing.assert_array_equal(again.runs["adam-mime-seed0"].test_dsc, mime.test_dsc)
    np.testing.assert_array_equal(again.runs["adam-mime-seed0"].test_hd95, mime.test_hd95)
    np.testing.assert_array_equal(again.runs["adam-mime-seed0"].test_assd, mime.test_assd)
    # ... more epochs continue them from their checkpoints (with the programs compiled above) ...
    longer = acdc.main([*argv, "--epochs", "3"])
    printed = capsys.readouterr().out
    assert printed.count("resuming") == 2 and "compiling" not in printed
    assert [h["epoch"] for h in longer.runs["adam-mime-seed0"].history] == [1, 2, 3]
    argv = [*argv, "--epochs", "3"]
    # ... but other data or settings are refused, naming the fix
    with pytest.raises(SystemExit, match="trained on other data .*train, val, test.*--overwrite"):
        acdc.main([*argv, "--data-seed", "3"])
    with pytest.raises(SystemExit, match="image size 32x32 -> 48x48"):
        acdc.main([*argv, "--image-size", "48"])
    with pytest.raises(SystemExit, match="another configuration \\(different batch_size\\)"):
        acdc.main([*argv, "--batch-size", "4"])
    with pytest.raises(SystemExit, match="another configuration \\(different adam_b1\\)"):
        acdc.main([*argv, "--adam-b1", "0.95"])  # the demo has 0.9
    capsys.readouterr()
    retrained = acdc.main([*argv, "--adam-b1", "0.95", "--overwrite", "--epochs", "1"])
    printed = capsys.readouterr().out
    assert printed.count("--overwrite: training it again") == 2 and "compiling" not in printed  # betas are state
    assert len(retrained.runs["adam-dsc-seed0"].history) == 1


def test_shards_split_the_grid_and_slurm_arrays_name_them():
    from segmime_jax.paper.grid.config import Shard, parse_shard, resolve_shard, shard_from_environment

    runs = [f"run{i}" for i in range(1, 9)]
    assert parse_shard("2/3").select(runs) == ["run2", "run5", "run8"]
    assert sorted(sum((Shard(k, 3).select(runs) for k in (1, 2, 3)), [])) == runs  # each run in exactly one shard
    array = {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "8", "SLURM_ARRAY_TASK_MIN": "1"}
    assert shard_from_environment(array) == Shard(3, 8)
    assert shard_from_environment({**array, "SLURM_ARRAY_TASK_ID": "10", "SLURM_ARRAY_TASK_MIN": "10"}) == Shard(1, 8)
    assert shard_from_environment({"SLURM_JOB_ID": "7"}) is None  # a job, not an array
    assert resolve_shard("1/1", array) == Shard(1, 1)  # --shard wins over the array
    with pytest.raises(ValueError, match="contiguous"):
        shard_from_environment({**array, "SLURM_ARRAY_TASK_ID": "12"})


@pytest.mark.slow
def test_shards_then_a_plain_command_write_the_table_of_one_plain_command(tmp_path, capsys):
    argv = [
        *("--synthetic-cases", "5", "--synthetic-zoom", "1", "--image-size", "32", "--epochs", "1"),
        *("--losses", "dsc,mime", "--seeds", "2", "--num-examples", "1", "--cache-dir", str(tmp_path / "cache")),
    ]
    plain = tmp_path / "plain"
    acdc.main([*argv, "--out", str(plain)])
    sharded = tmp_path / "sharded"
    assert acdc.main([*argv, "--out", str(sharded), "--shard", "1/2"]) is None  # runs 1 and 3 of 4
    printed = capsys.readouterr().out
    assert "shard 1/2: 2 of the grid's 4 runs (adam-dsc-seed0, adam-mime-seed0)" in printed
    assert "waits for 2 unfinished run(s) of other shards (adam-dsc-seed1, adam-mime-seed1)" in printed
    assert not (sharded / "table1.md").exists()
    acdc.main([*argv, "--out", str(sharded), "--shard", "2/2"])  # the last shard finds the grid finished
    assert "every run of the grid is finished, writing the grid's report" in capsys.readouterr().out
    assert acdc.main([*argv, "--out", str(sharded), "--shard", "2/2"]) is not None
    assert "shard 2/2: its runs are all finished already" in capsys.readouterr().out
    acdc.main([*argv, "--out", str(sharded)])  # the final plain command reuses every run
    assert "finished earlier: reusing" in capsys.readouterr().out
    assert (sharded / "table1.md").read_text() == (plain / "table1.md").read_text()


def test_python_dash_m_runs_each_command():
    # the GPU check runs `python -m segmime_jax.commands.benchmark`: a module that only defined main did nothing
    import subprocess
    import sys

    commands = ("acdc", "promise12", "benchmark", "device_check", "gradients", "mime_study")
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", f"segmime_jax.commands.{name}", "--help"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in commands
    }
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0 and out.startswith("usage:"), (name, err[-2000:])
