"""The prepared accelerator check: ``python -m experiments.device_check --out DIR``.

One command for a session that is lent a GPU for a few minutes (``make device-check``; README, "Measuring on
a GPU"). It needs only what such a machine has (jax, flax, optax, orbax, chex; nibabel is not imported) and
writes at most 8 files, none in subfolders, to ``--out``:

- ``fixture.json``: the relative errors of both models' logits and input gradients against the PyTorch
  fixtures (``--reference``), in true float32 (``highest``) and at ``default`` precision (TF32 convolutions
  on recent GPUs);
- ``benchmark.json``: ``experiments.benchmark`` at batches 8 and 32, float32 and bfloat16, with a 5-step
  profile of each case and the epoch timing; ``traces.tar.gz``: those profiles and each step's HLO;
- ``benchmark_b128.json``: batch 128 (no profile, no epoch timing);
- ``log``: everything the steps printed.

Each step runs in its own process with its own time limit, so one that fails or overruns leaves the others'
results (and a benchmark that is stopped keeps the cases it finished: its JSON is rewritten after each).
``--quick`` runs the same steps at the benchmark's CPU smoke size (for testing this script).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Sequence

from segmime_jax.atomic_files import write_text_atomic
from segmime_jax.cli import parse_config

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
NO_YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type="  # see tests/models_reference.py (CPU only)


@dataclasses.dataclass(frozen=True)
class DeviceCheckConfig:
    out: pathlib.Path = dataclasses.field(
        default=pathlib.Path("results/device-out"), metadata={"help": "folder for the (at most 8) result files"})
    work: pathlib.Path = dataclasses.field(
        default=pathlib.Path("results/device-work"), metadata={"help": "folder for traces and HLO before packing"})
    reference: pathlib.Path = dataclasses.field(
        default=REPO_ROOT.parent / "shared" / "reference",
        metadata={"help": "the PyTorch reference fixtures (../shared/reference; copy it along to a device)"})
    fixture_timeout_s: int = dataclasses.field(default=120, metadata={"help": "time limit of each fixture run"})
    benchmark_timeout_s: int = dataclasses.field(
        default=330, metadata={"help": "time limit of the batch 8/32 benchmark"})
    b128_timeout_s: int = dataclasses.field(default=120, metadata={"help": "time limit of the batch 128 benchmark"})
    profile_steps: int = dataclasses.field(default=5, metadata={"help": "profiled steps per benchmark case"})
    models: tuple[str, ...] = dataclasses.field(
        default=("enet", "residualunet"), metadata={"help": "models to benchmark"})
    quick: bool = dataclasses.field(default=False, metadata={"help": "benchmark at the CPU smoke size"})


def _run(command: list[str], *, timeout_s: int, log: list[str], env: dict[str, str] | None = None) -> str:
    """Run ``command`` from the repository root; append its output to ``log``; return its stdout."""
    log.append(f"$ {' '.join(command)}  (limit {timeout_s} s)")
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout_s,
                              check=False)
        stdout, stderr, status = done.stdout, done.stderr, f"exit {done.returncode}"
    except subprocess.TimeoutExpired as expired:
        stdout = expired.stdout.decode() if isinstance(expired.stdout, bytes) else (expired.stdout or "")
        stderr = expired.stderr.decode() if isinstance(expired.stderr, bytes) else (expired.stderr or "")
        status = f"stopped after {timeout_s} s"
    log += [stdout.rstrip(), stderr.rstrip(), f"[{status}, {time.perf_counter() - start:.0f} s]", ""]
    return stdout


def _describe_devices(log: list[str]) -> None:
    code = ("import jax; print(jax.__version__, jax.default_backend(), "
            "[(d.device_kind, d.id) for d in jax.local_devices()])")
    _run([sys.executable, "-c", code], timeout_s=120, log=log)
    if shutil.which("nvidia-smi"):
        _run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm", "--format=csv"],
             timeout_s=30, log=log)


def _fixture_errors(config: DeviceCheckConfig, log: list[str]) -> dict:
    """Both models against the fixtures at two precisions; ``{"error": ...}`` entries where a run failed."""
    if not (config.reference / "forward_fixture.npz").is_file():
        return {"error": f"no forward_fixture.npz in {config.reference}"}
    env = dict(os.environ)
    code = "import jax; print(jax.default_backend())"
    backend = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False).stdout
    if backend.strip() == "cpu":  # the CPU's YNNPACK convolutions are not comparable (tests/models_reference.py)
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + NO_YNN_FLAG).strip()
    errors = {}
    for precision in ("highest", "default"):
        stdout = _run([sys.executable, "tests/models_reference.py", str(config.reference), precision],
                      timeout_s=config.fixture_timeout_s, log=log, env=env)
        try:
            errors[precision] = json.loads(stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            errors[precision] = {"error": "the comparison printed no result (see log)"}
    return errors


def _benchmark(config: DeviceCheckConfig, out: pathlib.Path, args: list[str], timeout_s: int,
               log: list[str]) -> None:
    command = [sys.executable, "-m", "experiments.benchmark", "--out", str(out), "--models", ",".join(config.models),
               *args]
    _run(command + (["--quick"] if config.quick else []), timeout_s=timeout_s, log=log)


def run(config: DeviceCheckConfig) -> list[pathlib.Path]:
    """Run every step of the check; returns the files written to ``config.out``."""
    config.out.mkdir(parents=True, exist_ok=True)
    if config.work.exists():
        shutil.rmtree(config.work)
    log: list[str] = []
    written = []

    def save_log() -> None:
        written.append(write_text_atomic(config.out / "log", "\n".join(log) + "\n"))

    def keep(source: pathlib.Path, name: str) -> None:
        if source.is_file():
            shutil.copyfile(source, config.out / name)
            written.append(config.out / name)
        else:
            log.append(f"(no {source}: that step wrote nothing)")

    _describe_devices(log)
    written.append(write_text_atomic(config.out / "fixture.json", json.dumps(_fixture_errors(config, log), indent=2)))
    save_log()

    main = config.work / "main"
    _benchmark(config, main, ["--batches", "8,32", "--profile-steps", str(config.profile_steps), "--dump-hlo"],
               config.benchmark_timeout_s, log)
    keep(main / "benchmark.json", "benchmark.json")
    traces = [main / name for name in ("profile", "hlo") if (main / name).is_dir()]
    if traces:
        with tarfile.open(config.out / "traces.tar.gz", "w:gz") as archive:
            for folder in traces:
                archive.add(folder, arcname=folder.name)
        written.append(config.out / "traces.tar.gz")
    save_log()

    b128 = config.work / "b128"
    _benchmark(config, b128, ["--batches", "128", "--epoch-steps", "0"], config.b128_timeout_s, log)
    keep(b128 / "benchmark.json", "benchmark_b128.json")
    save_log()
    return sorted(set(written))


def main(argv: Sequence[str] | None = None) -> list[pathlib.Path]:
    config = parse_config(DeviceCheckConfig, argv, description=__doc__.split("\n\n")[0],
                          prog="python -m experiments.device_check")
    written = run(config)
    print((config.out / "log").read_text())
    print("wrote " + ", ".join(str(path) for path in written))
    return written


if __name__ == "__main__":
    main(sys.argv[1:])
