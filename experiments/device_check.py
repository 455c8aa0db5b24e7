"""The prepared accelerator check: ``python -m experiments.device_check --out DIR``.

One command for a session that is lent a GPU for a few minutes (``make device-check``; README, "Measuring on
a GPU"). It needs only what such a machine has (jax, flax, optax, orbax, chex; nibabel is not imported) and
writes at most 8 files, none in subfolders, to ``--out``. In order of importance, each step in its own
process with its own time limit (defaults: 8 3/4 minutes in all, within one device call's 10):

1. ``benchmark_fp32_enet.json`` and ``benchmark_fp32_residualunet.json``: ``experiments.benchmark`` in float32
   at batches 8 and 32 (the issue's targets), one process per model so that a slow compile of one cannot
   starve the other, with a profile of each case, each step's HLO and the epoch timing;
2. ``benchmark_bf16.json``: both models in bfloat16 (ResidualUNet first: its ≥ 4× target);
3. ``benchmark_enet_cmdbuf.json``: ENet in float32 at batches 8 and 32 again, with XLA:GPU's cuDNN
   convolutions captured in its command buffers (CUDA graphs) as well
   (``XLA_FLAGS=--xla_gpu_enable_command_buffer=+CONVOLUTION``, not XLA's default): against step 1, what
   launching ENet's ~270 convolutions one by one costs;
4. ``fixture.json``: both models' logits and input gradients against the PyTorch fixtures (``--reference``)
   in true float32 (``highest``) and at ``default`` precision (TF32 convolutions on recent GPUs);
5. optional (``--b128-timeout-s 70``): ``benchmark_b128.json``, batch 128, both precisions (no profile, no
   epoch timing; a case that runs out of memory is recorded as failed and the others go on);

plus ``traces.tar.gz`` (the profiles and HLO of steps 1-2, at most 15 MiB: what would not fit is named in
the log) and ``log`` (everything the steps printed): 8 files at most.
A step that fails or overruns leaves the others' results, and a benchmark that is stopped keeps the cases it
finished (its JSON is rewritten after each). ``--quick`` runs the benchmarks at their CPU smoke size.
The steps run with the repository on ``PYTHONPATH`` (nothing is installed there) and with
``XLA_PYTHON_CLIENT_MEM_FRACTION=0.95``.
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
import zlib
from collections.abc import Sequence

from segmime_jax.atomic_files import write_text_atomic
from segmime_jax.cli import parse_config

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
TRACES_BUDGET_BYTES = 15 * 2**20  # the device tool returns files of at most 16 MiB


@dataclasses.dataclass(frozen=True)
class DeviceCheckConfig:
    out: pathlib.Path = dataclasses.field(
        default=pathlib.Path("results/device-out"), metadata={"help": "folder for the (at most 8) result files"})
    work: pathlib.Path = dataclasses.field(
        default=pathlib.Path("results/device-work"),
        metadata={"help": "folder for traces and HLO before packing (emptied at start; only a folder this tool "
                          "made, or an empty one, is accepted)"})
    reference: pathlib.Path = dataclasses.field(
        default=REPO_ROOT.parent / "shared" / "reference",
        metadata={"help": "the PyTorch reference fixtures (../shared/reference; copy it along to a device)"})
    fp32_enet_timeout_s: int = dataclasses.field(
        default=130, metadata={"help": "time limit of the float32 ENet benchmark"})
    fp32_residualunet_timeout_s: int = dataclasses.field(
        default=90, metadata={"help": "time limit of the float32 ResidualUNet benchmark"})
    bf16_timeout_s: int = dataclasses.field(default=130, metadata={"help": "time limit of the bfloat16 benchmark"})
    cmdbuf_timeout_s: int = dataclasses.field(
        default=100, metadata={"help": "time limit of the ENet benchmark with convolutions in command buffers"})
    fixture_timeout_s: int = dataclasses.field(default=40, metadata={"help": "time limit of each fixture run"})
    b128_timeout_s: int = dataclasses.field(
        default=0, metadata={"help": "time limit of the batch 128 benchmark (0 = skip it)"})
    profile_steps: int = dataclasses.field(default=3, metadata={"help": "profiled steps per benchmark case"})
    models: tuple[str, ...] = dataclasses.field(
        default=("enet", "residualunet"), metadata={"help": "models to benchmark"})
    quick: bool = dataclasses.field(default=False, metadata={"help": "benchmark at the CPU smoke size"})


def child_environment() -> dict[str, str]:
    """The steps' environment: the repository on ``PYTHONPATH`` (a device machine has no editable install of
    it, and ``python tests/models_reference.py`` would otherwise only see ``tests/``), and 95 % of the GPU's
    memory for XLA instead of its default 75 % (batch 128 in float32 needs it) unless already set."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")
    return env


CONVOLUTION_COMMAND_BUFFERS = "--xla_gpu_enable_command_buffer=+CONVOLUTION"


def _run(command: list[str], *, timeout_s: int, log: list[str], xla_flags: str = "") -> str:
    """Run ``command`` from the repository root (``xla_flags`` appended to its ``XLA_FLAGS``); append its
    output to ``log``; return its stdout."""
    env, shown = child_environment(), ""
    if xla_flags:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {xla_flags}".strip()
        shown = f"XLA_FLAGS={env['XLA_FLAGS']!r} "
    log.append(f"$ {shown}{' '.join(command)}  (limit {timeout_s} s)")
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s,
                              check=False, env=env)
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
    errors = {}
    for precision in ("highest", "default"):
        stdout = _run([sys.executable, "tests/models_reference.py", str(config.reference), precision],
                      timeout_s=config.fixture_timeout_s, log=log)
        try:
            errors[precision] = json.loads(stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            errors[precision] = {"error": "the comparison printed no result (see log)"}
    return errors


def pack_traces(archive_path: pathlib.Path, work: pathlib.Path, runs: Sequence[str], log: list[str], *,
                budget_bytes: int = TRACES_BUDGET_BYTES) -> bool:
    """Tar-gzip the runs' profiles and HLO under ``work`` into ``archive_path``, most useful first (each run's
    ``.xplane.pb`` profiles, then its HLO; Perfetto ``.trace.json.gz`` copies last), leaving out what would take
    the archive over ``budget_bytes`` (listed in ``log``). Returns whether an archive was written."""
    files = []
    for run in runs:
        files += sorted((work / run / "profile").rglob("*.xplane.pb")) + sorted((work / run / "hlo").glob("*.hlo.txt"))
    for run in runs:
        files += sorted((work / run / "profile").rglob("*.trace.json.gz"))
    chosen, total = [], 0
    for path in files:
        size = len(zlib.compress(path.read_bytes(), 6)) + 1024  # gzip size plus the tar header, roughly
        if total + size > budget_bytes:
            log.append(f"(traces.tar.gz: left out {path.relative_to(work)}, {size / 2**20:.1f} MiB compressed)")
            continue
        chosen.append(path)
        total += size
    if not chosen:
        return False
    with tarfile.open(archive_path, "w:gz") as archive:
        for path in chosen:
            archive.add(path, arcname=str(path.relative_to(work)))
    return True


def _benchmark(config: DeviceCheckConfig, out: pathlib.Path, args: list[str], timeout_s: int, log: list[str],
               *, models: Sequence[str] | None = None, xla_flags: str = "") -> None:
    models = [m for m in (models or config.models) if m in config.models]
    if not models:
        log.append(f"(skipped the benchmark into {out}: none of its models is in --models)")
        return
    if timeout_s <= 0:
        log.append(f"(skipped the benchmark into {out}: its time limit is 0)")
        return
    command = [sys.executable, "-m", "experiments.benchmark", "--out", str(out), "--models", ",".join(models),
               *args, *(["--quick"] if config.quick else [])]
    _run(command, timeout_s=timeout_s, log=log, xla_flags=xla_flags)


WORK_MARKER = ".device_check_work"


def _fresh_work_folder(work: pathlib.Path) -> None:
    """Empty ``work`` for this run, but only a folder this tool made (it holds WORK_MARKER) or an empty one:
    ``--work`` pointing at anything else is refused, never wiped."""
    if work.exists():
        if (work / WORK_MARKER).is_file():
            shutil.rmtree(work)
        elif work.is_dir() and not any(work.iterdir()):
            work.rmdir()
        else:
            raise SystemExit(f"error: --work {work} holds files this tool did not write; give an empty or new folder")
    work.mkdir(parents=True)
    (work / WORK_MARKER).write_text("intermediate files of python -m experiments.device_check; emptied on each run\n")


def run(config: DeviceCheckConfig) -> list[pathlib.Path]:
    """Run every step of the check; returns the files written to ``config.out``."""
    config.out.mkdir(parents=True, exist_ok=True)
    _fresh_work_folder(config.work)
    log: list[str] = []
    written: list[pathlib.Path] = []

    def save(name: str, text: str) -> None:
        written.append(write_text_atomic(config.out / name, text))

    def keep(source: pathlib.Path, name: str) -> None:
        if source.is_file():
            shutil.copyfile(source, config.out / name)
            written.append(config.out / name)
        else:
            log.append(f"(no {source}: that step wrote nothing)")
        save("log", "\n".join(log) + "\n")

    _describe_devices(log)
    profiled = ["--batches", "8,32", "--profile-steps", str(config.profile_steps), "--dump-hlo"]
    runs = (
        ("fp32_enet", ["--precisions", "float32", *profiled], config.fp32_enet_timeout_s, ("enet",)),
        ("fp32_residualunet", ["--precisions", "float32", *profiled], config.fp32_residualunet_timeout_s,
         ("residualunet",)),
        ("bf16", ["--precisions", "bfloat16", "--epoch-steps", "0", *profiled], config.bf16_timeout_s,
         ("residualunet", "enet")),
    )
    for name, args, timeout_s, models in runs:
        _benchmark(config, config.work / name, args, timeout_s, log, models=models)
        keep(config.work / name / "benchmark.json", f"benchmark_{name}.json")

    if pack_traces(config.out / "traces.tar.gz", config.work, [name for name, *_ in runs], log):
        written.append(config.out / "traces.tar.gz")

    _benchmark(config, config.work / "enet_cmdbuf", ["--precisions", "float32", "--batches", "8,32", "--epoch-steps",
                                                     "0"], config.cmdbuf_timeout_s, log, models=("enet",),
               xla_flags=CONVOLUTION_COMMAND_BUFFERS)
    keep(config.work / "enet_cmdbuf" / "benchmark.json", "benchmark_enet_cmdbuf.json")

    save("fixture.json", json.dumps(_fixture_errors(config, log), indent=2))
    save("log", "\n".join(log) + "\n")

    if config.b128_timeout_s > 0:
        _benchmark(config, config.work / "b128", ["--batches", "128", "--epoch-steps", "0"], config.b128_timeout_s,
                   log)
        keep(config.work / "b128" / "benchmark.json", "benchmark_b128.json")
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
