"""The benchmark tool's quick mode runs end to end and writes a complete report (no timing assertions)."""

from __future__ import annotations

import json
import os
import tarfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segmime_jax.bench.report import format_table
from segmime_jax.bench.suite import BenchCase
from segmime_jax.bench.timing import time_call


def test_time_call_counts_and_orders():
    calls = []
    stats = time_call(lambda: calls.append(1) or 0, warmup=2, repeats=5)
    assert len(calls) == 7
    assert stats.repeats == 5
    assert stats.min_s <= stats.median_s <= stats.max_s
    assert stats.per_second(8) == pytest.approx(8 / stats.median_s)


def test_case_validation():
    with pytest.raises(ValueError, match="precision"):
        BenchCase("enet", 4, 64, 8, precision="float16")
    with pytest.raises(ValueError, match="does not split"):
        BenchCase("enet", 4, 64, 6, num_devices=4)


def test_config_rejects_bad_values():
    from segmime_jax.commands.benchmark import BenchmarkConfig

    with pytest.raises(ValueError, match="unknown model"):
        BenchmarkConfig(models=("vgg",))
    with pytest.raises(ValueError, match="multiple of 16"):
        BenchmarkConfig(size=100)
    with pytest.raises(ValueError, match="matmul precision"):
        BenchmarkConfig(matmul_precision="tf32")
    with pytest.raises(ValueError, match="profile_steps"):
        BenchmarkConfig(profile_steps=-1)
    cases = BenchmarkConfig(models=("enet",), batches=(8, 6), precisions=("float32",), devices=("1", "4")).cases()
    # batch 6 does not split over 4 devices: that case is skipped, the others kept.
    assert [(c.batch_size, c.num_devices) for c in cases] == [(8, 1), (6, 1), (8, 4)]
    # all: every device of every process
    assert BenchmarkConfig(devices=("all", "1")).device_counts() == (jax.device_count(), 1)
    with pytest.raises(ValueError, match="positive device counts or all"):
        BenchmarkConfig(devices=("every",))


def test_report_names_the_processes():
    env = {
        "local_device_count": 2,
        "device_count": 4,
        "process_count": 2,
        "device_kind": "cpu",
        "backend": "cpu",
        "versions": {"jax": "0.10", "flax": "0.12"},
    }
    heading = format_table({"environment": env, "cases": [], "epochs": [], "failed": []}).splitlines()[0]
    assert heading.startswith("Device: 4 x cpu (cpu), 2 processes;")


@pytest.mark.slow
def test_quick_mode_writes_report(tmp_path):
    from segmime_jax.commands.benchmark import main

    report = main(["--quick", "--models", "enet", "--profile-steps", "2", "--dump-hlo", "--out", str(tmp_path)])
    written = json.loads((tmp_path / "benchmark.json").read_text())
    assert written["environment"]["backend"] == report["environment"]["backend"]
    assert written["complete"] is True and written["environment"]["matmul_precision"] == "default"
    (case,) = written["cases"]
    assert case["case"]["model"] == "enet" and case["case"]["batch_size"] == 2
    assert 0 < case["train_step"]["min_ms"] <= case["train_step"]["median_ms"] <= case["train_step"]["max_ms"]
    assert case["train_images_per_s"] > 0 and case["inference_images_per_s"] > 0
    assert case["train_step_flops"] > case["forward_flops"] > 0  # backward pass costs more than forward
    assert case["flops_source"] == "device lowering"  # the CPU gives a cost analysis of the lowered step
    assert case["compile_s"] > 0 and case["planned_memory_bytes"] > 0
    assert all(e["epoch_s"] > 0 and 0.0 <= e["pipeline_share"] < 1.0 for e in written["epochs"])
    assert {e["resident"] for e in written["epochs"]} == {False, True}
    # What XLA made of the train step: the whole state donated, no host round trip, and ENet's max-unpooling
    # stayed a fused select (no gather/scatter anywhere in the program).
    program = case["program"]
    assert program["fully_donated"] and program["donated_bytes"] == program["donatable_bytes"] > 0
    assert program["host_transfers"] == 0
    assert program["all_ops"]["gather"] == program["all_ops"]["scatter"] == 0
    assert program["kernels"] > program["top_level_ops"].get("convolution", 0) > 0
    hlo = (tmp_path / "hlo" / "enet_32x32_b2_float32_1dev.hlo.txt").read_text()
    assert hlo.count("ENTRY") == 1
    profile = case["profile"]
    assert "error" not in profile, profile
    assert profile["steps"] == 2 and profile["op_ms_per_step"] > 0 and profile["top_ops"]
    assert sum(profile["by_category_ms"].values()) == pytest.approx(profile["op_ms_per_step"])
    assert profile["busy_vs_untraced"] == pytest.approx(profile["op_ms_per_step"] / case["train_step"]["median_ms"])
    assert list((tmp_path / "profile").rglob("*.xplane.pb"))
    table = format_table(written)
    assert "enet" in table and "pipeline share" in table and "profile: case" in table
    # The compiler flags a figure was measured under are part of its record and of its table's heading.
    assert written["environment"]["xla_flags"] == os.environ.get("XLA_FLAGS")
    flagged = {**written, "environment": {**written["environment"], "xla_flags": "--xla_gpu_enable_command_buffer=+X"}}
    assert "XLA_FLAGS=--xla_gpu_enable_command_buffer=+X" in format_table(flagged).splitlines()[0]


def test_flops_fall_back_to_a_cpu_lowering():
    """A backend without a cost analysis of lowered programs (PJRT plugins such as CUDA) still gets the count."""
    from segmime_jax.bench.suite import flops_with_fallback

    def fn(a, b):
        return jnp.tanh(a @ b).sum()

    a, b = jnp.ones((16, 32)), jnp.ones((32, 8))
    lowered = jax.jit(fn).lower(a, b)
    expected, source = flops_with_fallback(lowered, fn, a, b)
    assert source == "device lowering" and expected >= 2 * 16 * 32 * 8

    class NoCostAnalysis:
        def cost_analysis(self):
            return None

    assert flops_with_fallback(NoCostAnalysis(), fn, a, b) == (expected, "cpu lowering")


def test_a_failing_case_is_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    from segmime_jax.commands import benchmark

    def out_of_memory(case, **kwargs):
        raise RuntimeError(f"RESOURCE_EXHAUSTED: out of memory allocating the {case.model} state")

    monkeypatch.setattr(benchmark, "build_setup", out_of_memory)
    report = benchmark.main(["--quick", "--out", str(tmp_path)])
    assert report["complete"] and report["cases"] == []
    failed = [(f["case"]["model"], f["what"]) for f in report["failed"]]
    assert failed == [
        ("enet", "case"),
        ("residualunet", "case"),
        ("enet", "epoch timing"),
        ("residualunet", "epoch timing"),
    ]
    assert "RESOURCE_EXHAUSTED" in report["failed"][0]["error"]
    assert "FAILED (case): RuntimeError: RESOURCE_EXHAUSTED" in format_table(report)
    assert json.loads((tmp_path / "benchmark.json").read_text())["failed"] == report["failed"]


@pytest.mark.slow
def test_a_failing_epoch_timing_is_recorded_once(tmp_path, monkeypatch):
    from segmime_jax.commands import benchmark

    builds = []
    real_build = benchmark.build_setup

    def counting_build(case, **kwargs):
        builds.append(case.model)
        return real_build(case, **kwargs)

    def broken_epoch(setup, **kwargs):
        raise RuntimeError("pipeline broke")

    monkeypatch.setattr(benchmark, "build_setup", counting_build)
    monkeypatch.setattr(benchmark, "run_epoch", broken_epoch)
    report = benchmark.main(["--quick", "--models", "residualunet", "--out", str(tmp_path)])
    assert builds == ["residualunet"]  # the case's compiled step, not a second build for the epoch timing
    assert len(report["cases"]) == 1 and report["epochs"] == []
    assert [(f["what"], f["error"]) for f in report["failed"]] == [("epoch timing", "RuntimeError: pipeline broke")]


def test_device_check_children_import_this_package(tmp_path):
    """The steps' ``python -m segmime_jax...`` finds this same package from any folder, installed or not."""
    import subprocess
    import sys

    import segmime_jax
    from segmime_jax.bench.device_check import child_environment

    env = child_environment()
    assert env["XLA_PYTHON_CLIENT_MEM_FRACTION"]
    where = subprocess.run(
        [sys.executable, "-c", "import segmime_jax; print(segmime_jax.__file__)"],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": env["PYTHONPATH"].split(os.pathsep)[0]},
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.strip() == segmime_jax.__file__


def test_device_check_step_gets_its_xla_flags(monkeypatch):
    """The command-buffer step's flag reaches the child (appended to any XLA_FLAGS already set), and the
    flag itself parses in this jaxlib (an unknown XLA flag or command type aborts the process)."""
    import subprocess
    import sys

    from segmime_jax.bench.device_check import CONVOLUTION_COMMAND_BUFFERS, _run

    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    log: list[str] = []
    code = "import os, jax; print(os.environ['XLA_FLAGS']); print(jax.device_count())"
    stdout = _run([sys.executable, "-c", code], timeout_s=120, log=log, xla_flags=CONVOLUTION_COMMAND_BUFFERS)
    assert stdout.split("\n")[:2] == [f"--xla_force_host_platform_device_count=2 {CONVOLUTION_COMMAND_BUFFERS}", "2"]
    assert "exit 0" in log[-2]
    monkeypatch.delenv("XLA_FLAGS")
    bad = subprocess.run(
        [sys.executable, "-c", "import jax; jax.numpy.ones(1).block_until_ready()"],
        check=False,
        capture_output=True,
        env={**os.environ, "XLA_FLAGS": "--xla_gpu_enable_command_buffer=+NOPE"},
    )
    assert bad.returncode != 0  # so the step above would have failed had the flag not parsed


@pytest.mark.slow
def test_device_check_writes_its_files_flat(tmp_path, monkeypatch):
    """The GPU check, at the CPU smoke size: flat files only, and a missing reference is reported. The steps
    share the tests' compilation cache (both benchmarks compile the same float32 program at this size)."""
    from helpers import CACHE_DIR

    from segmime_jax.commands.device_check import main

    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(CACHE_DIR))
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    out = tmp_path / "out"
    written = main(
        [
            "--out",
            str(out),
            "--work",
            str(tmp_path / "work"),
            "--reference",
            str(tmp_path / "none"),
            "--models",
            "residualunet",
            "--quick",
            "--profile-steps",
            "1",
        ]
    )
    names = sorted(path.name for path in written)
    # The command-buffer run is ENet-only, so with --models residualunet it benchmarks nothing and writes no
    # file; batch 128 is off by default.
    assert names == ["benchmark_bf16.json", "benchmark_fp32_residualunet.json", "fixture.json", "log", "traces.tar.gz"]
    assert sorted(path.name for path in out.iterdir()) == names  # nothing in subfolders
    assert "no forward_fixture.npz" in json.loads((out / "fixture.json").read_text())["error"]
    (case,) = json.loads((out / "benchmark_fp32_residualunet.json").read_text())["cases"]
    assert case["case"]["model"] == "residualunet" and case["profile"]["steps"] == 1
    with tarfile.open(out / "traces.tar.gz") as archive:
        members = archive.getnames()
    assert "fp32_residualunet/hlo/residualunet_32x32_b2_float32_1dev.hlo.txt" in members
    assert any(name.endswith(".xplane.pb") for name in members)
    assert "exit 0" in (out / "log").read_text()


def test_device_check_empties_only_its_own_work_folder(tmp_path):
    from segmime_jax.bench.device_check import WORK_MARKER, _fresh_work_folder

    work = tmp_path / "work"
    _fresh_work_folder(work)  # new
    (work / "old.json").write_text("{}")
    _fresh_work_folder(work)  # its own: emptied
    assert sorted(p.name for p in work.iterdir()) == [WORK_MARKER]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit, match="did not write"):
        _fresh_work_folder(mine)
    assert (mine / "notes.txt").read_text() == "keep me"


def test_pack_traces_keeps_the_most_useful_files_within_its_size_cap(tmp_path):
    from segmime_jax.bench.device_check import pack_traces

    rng = np.random.default_rng(0)
    for run in ("fp32", "bf16"):
        (tmp_path / run / "profile" / "case" / "t").mkdir(parents=True)
        (tmp_path / run / "hlo").mkdir()
        (tmp_path / run / "profile" / "case" / "t" / "h.xplane.pb").write_bytes(rng.bytes(4000))  # incompressible
        (tmp_path / run / "profile" / "case" / "t" / "h.trace.json.gz").write_bytes(rng.bytes(4000))
        (tmp_path / run / "hlo" / "case.hlo.txt").write_text("HloModule m\n" * 300)  # compresses well
    log: list[str] = []
    archive = tmp_path / "traces.tar.gz"
    assert pack_traces(archive, tmp_path, ["fp32", "bf16"], log, max_bytes=11_000)
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    # fp32 profile + fp32 HLO + bf16 HLO fit; the bf16 profile and both Perfetto copies do not.
    assert names == ["fp32/profile/case/t/h.xplane.pb", "fp32/hlo/case.hlo.txt", "bf16/hlo/case.hlo.txt"]
    assert sum("left out" in line for line in log) == 3
    assert not pack_traces(tmp_path / "none.tar.gz", tmp_path / "empty", ["fp32"], [])


def _device_check_plan(tmp_path, monkeypatch, *args: str) -> tuple[list, dict]:
    """The steps ``main(args)`` runs, as ``(step, time limit, XLA flags)``, each faked (it writes nothing and
    uses its whole time limit on a fake clock), and the ``fixture.json`` it writes."""
    import shutil
    import types

    from segmime_jax.bench import device_check
    from segmime_jax.commands.device_check import main

    clock, plan = [0.0], []

    def fake_run(command, *, timeout_s, log, xla_flags="", env=None):
        clock[0] += timeout_s
        if "segmime_jax.commands.benchmark" in command:
            out = command[command.index("--out") + 1]
            step = f"{os.path.basename(out)}: {' '.join(command[command.index('--models') :])}"
        else:
            step = f"fixture {command[-1]}" if "segmime_jax.models.reference" in command else "devices"
        plan.append((step, timeout_s, xla_flags))
        return ""

    monkeypatch.setattr(device_check, "_run", fake_run)
    monkeypatch.setattr(device_check, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    monkeypatch.setattr(shutil, "which", lambda name: None)  # no nvidia-smi step
    reference = tmp_path / "reference"
    reference.mkdir(exist_ok=True)
    (reference / "forward_fixture.npz").write_bytes(b"")
    out = tmp_path / "out"
    main(["--out", str(out), "--work", str(tmp_path / "work"), "--reference", str(reference), *args])
    return plan, json.loads((out / "fixture.json").read_text())


def test_device_check_default_steps_and_time_limits(tmp_path, monkeypatch):
    from segmime_jax.bench.device_check import CONVOLUTION_COMMAND_BUFFERS

    profiled = "--batches 8,32 --profile-steps 3 --dump-hlo"
    plan, _ = _device_check_plan(tmp_path, monkeypatch, "--b128-timeout-s", "70")
    assert plan == [
        ("devices", 120, ""),
        (f"fp32_enet: --models enet --precisions float32 {profiled}", 130, ""),
        (f"fp32_residualunet: --models residualunet --precisions float32 {profiled}", 90, ""),
        (f"bf16: --models residualunet,enet --precisions bfloat16 --epoch-steps 0 {profiled}", 130, ""),
        ("runs: --models enet --precisions float32 --batches 8 --runs 1,4,8 --epoch-steps 0", 150, ""),
        (
            "enet_cmdbuf: --models enet --precisions float32 --batches 8,32 --epoch-steps 0",
            100,
            CONVOLUTION_COMMAND_BUFFERS,
        ),
        ("fixture highest", 40, ""),
        ("fixture default", 40, ""),
        ("b128: --models enet,residualunet --batches 128 --epoch-steps 0", 70, ""),  # only when asked for
    ]


def test_device_check_time_budget_cuts_and_skips_steps(tmp_path, monkeypatch):
    plan, fixture = _device_check_plan(tmp_path, monkeypatch, "--time-budget-s", "300", "--fixture-timeout-s", "0")
    # 120 s + 130 s used, 50 s left for the third step's 90; then nothing is left
    assert [(step.split(":")[0], limit) for step, limit, _ in plan] == [
        ("devices", 120),
        ("fp32_enet", 130),
        ("fp32_residualunet", 50),
    ]
    assert fixture == {"highest": {"error": "not run (see log)"}, "default": {"error": "not run (see log)"}}
    log = (tmp_path / "out" / "log").read_text()
    # bf16, runs and cmdbuf find the budget spent; the two fixture comparisons have a limit of 0
    assert log.count("the total time budget is spent") == 3 and log.count("its time limit is 0") == 2


@pytest.mark.slow
def test_grid_throughput_stacked_against_sequential(tmp_path, monkeypatch):
    """--runs: one row per run count with both modes' grid-step times (a tiny network stands in for ENet)."""
    from train_support import TinyNet

    from segmime_jax.bench import grid, suite
    from segmime_jax.commands import benchmark

    def tiny(name, num_classes, *, rngs, dtype):
        return TinyNet(num_classes, rngs=rngs, dtype=dtype, width=8)

    monkeypatch.setattr(suite, "build_model", tiny)
    monkeypatch.setattr(grid, "build_model", tiny)
    report = benchmark.main(["--quick", "--models", "enet", "--runs", "1,3", "--out", str(tmp_path)])
    written = json.loads((tmp_path / "benchmark.json").read_text())
    assert written["complete"] and not written["failed"] and written["cases"] == []
    rows = report["grid"]
    assert [r["runs"] for r in rows] == [1, 3] and all(r["mesh"] == {"runs": 1, "data": 1} for r in rows)
    for r in rows:
        assert r["sequential_ms"] > 0 and r["stacked_ms"] > 0
        assert r["stacked_run_images_per_s"] == pytest.approx(1e3 * r["runs"] * 2 / r["stacked_ms"])
        assert r["speedup"] == pytest.approx(r["sequential_ms"] / r["stacked_ms"])
    assert "| grid: case | runs |" in format_table(written)
    with pytest.raises(ValueError, match="runs"):
        benchmark.BenchmarkConfig(runs=(0,))
