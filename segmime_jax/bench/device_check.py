"""A GPU check in one command: benchmarks, traces and the model-vs-fixture comparison, as a few flat files.

:func:`run_check` (``segmime-device-check --out DIR``; in a checkout ``python -m experiments.device_check`` or
``make device-check``) runs each step in a child process with its own time limit: the steps run
``python -m segmime_jax.commands.benchmark`` and ``python -m segmime_jax.models.reference`` with this package on
``PYTHONPATH``, so a checkout needs nothing installed, and they need only jax, flax, optax, orbax and chex (no
nibabel or SimpleITK).
It writes to ``out``, without subfolders, in order of importance:

1. ``benchmark_fp32_enet.json`` and ``benchmark_fp32_residualunet.json``: each model in float32 at batches
   8 and 32, one process per model so that a slow compilation of one cannot use up the other's time, with a
   profile of each case (``profile_steps`` steps), each train step's optimised HLO and the epoch timing;
2. ``benchmark_bf16.json``: both models in bfloat16 (ResidualUNet first), profiled likewise, no epoch timing;
3. ``benchmark_runs.json``: ENet in float32, batch 8, a grid of R = 1, 4 and 8 runs trained stacked (vmapped on
   the device) against one after another (``--runs``): where stacked is faster, the backend belongs in
   :data:`segmime_jax.train.layout.STACKED_FASTER_ON`, and ``--grid-mode auto`` should pick it there;
4. ``benchmark_enet_cmdbuf.json``: ENet in float32 at batches 8 and 32 again, with XLA:GPU's cuDNN
   convolutions captured in its command buffers (CUDA graphs) as well
   (``XLA_FLAGS=--xla_gpu_enable_command_buffer=+CONVOLUTION``, not XLA's default): against step 1, what
   launching ENet's convolutions one by one costs;
5. ``fixture.json``: both models' logits and input gradients against the PyTorch fixtures in ``reference``,
   in true float32 (``highest``) and at ``default`` precision (TF32 convolutions on recent GPUs); an
   ``error`` entry where the fixtures are missing or a comparison printed no result;
6. only when ``b128_timeout_s`` > 0: ``benchmark_b128.json``, batch 128 in both precisions (no profile, no
   epoch timing; a case that runs out of memory is recorded as failed and the others go on);

plus ``traces.tar.gz`` (the profiles and HLO of steps 1 and 2, most useful first, at most ``max_traces_mib``;
what does not fit is named in the log) and ``log`` (the jax version and devices, ``nvidia-smi``'s view of the
GPU, every command with its time limit, everything the steps printed and how each ended).

A step that fails or runs out of time leaves the others' results, and a benchmark that is stopped keeps the
cases it finished (it rewrites its JSON after each). A step whose time limit is 0 is skipped;
``time_budget_s`` > 0 bounds the whole check (each step's limit is cut to the time left). ``quick`` runs the
benchmarks at their CPU smoke size. Intermediate files go to ``work``, emptied at the start.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
import subprocess
import sys
import tarfile
import time
import zlib
from collections.abc import Sequence

from segmime_jax.atomic_files import write_text_atomic
from segmime_jax.cli import NON_NEGATIVE, POSITIVE, Range, check_options, option
from segmime_jax.environment import child_process_environment
from segmime_jax.models.reference import REFERENCE_FIXTURES

MODELS = ("enet", "residualunet")
MIB = 2**20
CONVOLUTION_COMMAND_BUFFERS = "--xla_gpu_enable_command_buffer=+CONVOLUTION"
WORK_MARKER = ".device_check_work"
_TIMEOUTS = (
    "devices_timeout_s",
    "nvidia_smi_timeout_s",
    "fp32_enet_timeout_s",
    "fp32_residualunet_timeout_s",
    "bf16_timeout_s",
    "runs_timeout_s",
    "cmdbuf_timeout_s",
    "fixture_timeout_s",
    "b128_timeout_s",
    "time_budget_s",
)


@dataclasses.dataclass(frozen=True)
class DeviceCheckConfig:
    out: pathlib.Path = option(pathlib.Path("results/device-out"), "folder for the result files (flat, at most 9)")
    work: pathlib.Path = option(
        pathlib.Path("results/device-work"),
        "folder for traces and HLO before packing (emptied at the start; only a folder the check made, or an "
        "empty one, is accepted)",
    )
    reference: pathlib.Path = option(
        REFERENCE_FIXTURES,
        "folder of the PyTorch reference fixtures (forward_fixture.npz; the default is the checkout's, relative to "
        "the current folder)",
    )
    time_budget_s: int = option(
        0,
        "total time limit of the check in seconds: each step gets at most the time left, and steps are "
        "skipped once it is spent (0 = no total limit, only each step's own)",
        within=NON_NEGATIVE,
    )
    devices_timeout_s: int = option(
        120, "time limit of the device description (jax version, backend, devices)", within=NON_NEGATIVE
    )
    nvidia_smi_timeout_s: int = option(
        30, "time limit of the nvidia-smi query (where nvidia-smi exists)", within=NON_NEGATIVE
    )
    fp32_enet_timeout_s: int = option(130, "time limit of the float32 ENet benchmark", within=NON_NEGATIVE)
    fp32_residualunet_timeout_s: int = option(
        90, "time limit of the float32 ResidualUNet benchmark", within=NON_NEGATIVE
    )
    bf16_timeout_s: int = option(130, "time limit of the bfloat16 benchmark", within=NON_NEGATIVE)
    runs_timeout_s: int = option(
        150, "time limit of the ENet benchmark of 1, 4 and 8 runs stacked against sequential", within=NON_NEGATIVE
    )
    cmdbuf_timeout_s: int = option(
        100, "time limit of the ENet benchmark with convolutions in command buffers", within=NON_NEGATIVE
    )
    fixture_timeout_s: int = option(40, "time limit of each of the two fixture comparisons", within=NON_NEGATIVE)
    b128_timeout_s: int = option(0, "time limit of the batch 128 benchmark (0 = not run)", within=NON_NEGATIVE)
    max_traces_mib: float = option(
        15.0,
        "maximum size of traces.tar.gz in MiB (estimated before packing; files that would exceed it are "
        "left out and named in the log)",
        within=POSITIVE,
    )
    memory_fraction: float = option(
        0.95,
        "share of the GPU memory XLA may take in the steps (XLA_PYTHON_CLIENT_MEM_FRACTION, unless it is "
        "already set; XLA's own default is 0.75)",
        within=Range(0, 1, low_open=True),
    )
    profile_steps: int = option(3, "profiled steps per benchmark case (0 = no profile)", within=NON_NEGATIVE)
    models: tuple[str, ...] = option(MODELS, "models to benchmark")
    quick: bool = option(False, "run the benchmarks at their CPU smoke size")

    def __post_init__(self) -> None:
        check_options(self)
        unknown = [m for m in self.models if m not in MODELS]
        if unknown or not self.models:
            raise ValueError(f"models must be among {', '.join(MODELS)}, got {','.join(self.models) or 'none'}")


def child_environment(memory_fraction: float = 0.95) -> dict[str, str]:
    """The steps' environment: this package on ``PYTHONPATH`` (so that a checkout needs nothing installed,
    :func:`~segmime_jax.environment.child_process_environment`), and
    ``XLA_PYTHON_CLIENT_MEM_FRACTION=memory_fraction`` unless already set (batch 128 in float32 needs more
    than XLA's default 75 % of the GPU memory)."""
    env = child_process_environment()
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", str(memory_fraction))
    return env


def _run(
    command: list[str], *, timeout_s: int, log: list[str], xla_flags: str = "", env: dict[str, str] | None = None
) -> str:
    """Run ``command`` in the current folder in ``env`` (default :func:`child_environment`), ``xla_flags``
    appended to its ``XLA_FLAGS``; append its output and how it ended to ``log``; return its stdout."""
    env, shown = dict(env or child_environment()), ""
    if xla_flags:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {xla_flags}".strip()
        shown = f"XLA_FLAGS={env['XLA_FLAGS']!r} "
    log.append(f"$ {shown}{' '.join(command)}  (limit {timeout_s} s)")
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False, env=env)
        stdout, stderr, status = done.stdout, done.stderr, f"exit {done.returncode}"
    except subprocess.TimeoutExpired as expired:
        stdout = expired.stdout.decode() if isinstance(expired.stdout, bytes) else (expired.stdout or "")
        stderr = expired.stderr.decode() if isinstance(expired.stderr, bytes) else (expired.stderr or "")
        status = f"stopped after {timeout_s} s"
    log += [stdout.rstrip(), stderr.rstrip(), f"[{status}, {time.perf_counter() - start:.0f} s]", ""]
    return stdout


class _Check:
    """One run of the check: its config, log, the files written so far and the time left."""

    def __init__(self, config: DeviceCheckConfig) -> None:
        self.config = config
        self.log: list[str] = []
        self.written: list[pathlib.Path] = []
        self.env = child_environment(config.memory_fraction)
        self.start = time.monotonic()

    def limit(self, step_s: int) -> int:
        """A step's time limit: ``step_s``, cut to what is left of the total time budget (if any)."""
        if self.config.time_budget_s <= 0:
            return step_s
        left = int(self.config.time_budget_s - (time.monotonic() - self.start))
        return max(0, min(step_s, left))

    def run(self, what: str, command: list[str], step_s: int, *, xla_flags: str = "") -> str | None:
        """Run one step (see :func:`_run`); ``None`` (and a line in the log) when it has no time to run."""
        timeout_s = self.limit(step_s)
        if timeout_s <= 0:
            reason = "its time limit is 0" if step_s <= 0 else "the total time budget is spent"
            self.log.append(f"(skipped {what}: {reason})")
            return None
        return _run(command, timeout_s=timeout_s, log=self.log, xla_flags=xla_flags, env=self.env)

    def save(self, name: str, text: str) -> None:
        self.written.append(write_text_atomic(self.config.out / name, text))

    def save_log(self) -> None:
        self.save("log", "\n".join(self.log) + "\n")

    def keep(self, source: pathlib.Path, name: str) -> None:
        """Copy a step's result into ``out`` as ``name`` (or say in the log that there is none); save the log."""
        if source.is_file():
            shutil.copyfile(source, self.config.out / name)
            self.written.append(self.config.out / name)
        else:
            self.log.append(f"(no {source}: that step wrote nothing)")
        self.save_log()


@dataclasses.dataclass(frozen=True)
class _Benchmark:
    """One benchmark step: ``python -m segmime_jax.commands.benchmark`` with ``args`` into ``work/name``, its JSON
    kept as ``benchmark_<name>.json``; ``models``: the ones it runs, in this order, if they are in the config's."""

    name: str
    args: tuple[str, ...]
    timeout_s: int
    models: tuple[str, ...] = MODELS
    xla_flags: str = ""


def _benchmark(check: _Check, step: _Benchmark) -> None:
    config, out = check.config, check.config.work / step.name
    models = [m for m in step.models if m in config.models]
    if models:
        command = [
            sys.executable,
            "-m",
            "segmime_jax.commands.benchmark",
            "--out",
            str(out),
            "--models",
            ",".join(models),
            *step.args,
            *(["--quick"] if config.quick else []),
        ]
        check.run(f"the benchmark into {out}", command, step.timeout_s, xla_flags=step.xla_flags)
        check.keep(out / "benchmark.json", f"benchmark_{step.name}.json")
    else:
        check.log.append(f"(skipped the benchmark into {out}: none of its models is in --models)")


def _benchmarks(config: DeviceCheckConfig) -> tuple[tuple[_Benchmark, ...], _Benchmark, _Benchmark, _Benchmark]:
    """The profiled benchmarks (steps 1-2 of the module docstring), the runs, the command-buffer one, batch 128."""
    profiled = ("--batches", "8,32", "--profile-steps", str(config.profile_steps), "--dump-hlo")
    traced = (
        _Benchmark("fp32_enet", ("--precisions", "float32", *profiled), config.fp32_enet_timeout_s, ("enet",)),
        _Benchmark(
            "fp32_residualunet",
            ("--precisions", "float32", *profiled),
            config.fp32_residualunet_timeout_s,
            ("residualunet",),
        ),
        _Benchmark(
            "bf16",
            ("--precisions", "bfloat16", "--epoch-steps", "0", *profiled),
            config.bf16_timeout_s,
            ("residualunet", "enet"),
        ),
    )
    runs = _Benchmark(
        "runs",
        ("--precisions", "float32", "--batches", "8", "--runs", "1,4,8", "--epoch-steps", "0"),
        config.runs_timeout_s,
        ("enet",),
    )
    cmdbuf = _Benchmark(
        "enet_cmdbuf",
        ("--precisions", "float32", "--batches", "8,32", "--epoch-steps", "0"),
        config.cmdbuf_timeout_s,
        ("enet",),
        CONVOLUTION_COMMAND_BUFFERS,
    )
    b128 = _Benchmark("b128", ("--batches", "128", "--epoch-steps", "0"), config.b128_timeout_s)
    return traced, runs, cmdbuf, b128


def _describe_devices(check: _Check) -> None:
    code = (
        "import jax; print(jax.__version__, jax.default_backend(), "
        "[(d.device_kind, d.id) for d in jax.local_devices()])"
    )
    check.run("the device description", [sys.executable, "-c", code], check.config.devices_timeout_s)
    if shutil.which("nvidia-smi"):
        check.run(
            "nvidia-smi",
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm", "--format=csv"],
            check.config.nvidia_smi_timeout_s,
        )


def _fixture_errors(check: _Check) -> dict:
    """Both models against the fixtures at two precisions; ``{"error": ...}`` entries where a run failed."""
    reference = check.config.reference
    if not (reference / "forward_fixture.npz").is_file():
        return {"error": f"no forward_fixture.npz in {reference} (give --reference, e.g. a checkout's tests/fixtures)"}
    errors = {}
    for precision in ("highest", "default"):
        stdout = check.run(
            f"the fixture comparison at {precision} precision",
            [sys.executable, "-m", "segmime_jax.models.reference", str(reference), precision],
            check.config.fixture_timeout_s,
        )
        if stdout is None:
            errors[precision] = {"error": "not run (see log)"}
            continue
        try:
            errors[precision] = json.loads(stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            errors[precision] = {"error": "the comparison printed no result (see log)"}
    return errors


def pack_traces(
    archive_path: pathlib.Path, work: pathlib.Path, runs: Sequence[str], log: list[str], *, max_bytes: int = 15 * MIB
) -> bool:
    """Tar-gzip the runs' profiles and HLO under ``work`` into ``archive_path``, most useful first (each run's
    ``.xplane.pb`` profiles, then its HLO; Perfetto ``.trace.json.gz`` copies last), leaving out what would take
    the archive over ``max_bytes`` (listed in ``log``). Returns whether an archive was written."""
    files = []
    for run in runs:
        files += sorted((work / run / "profile").rglob("*.xplane.pb")) + sorted((work / run / "hlo").glob("*.hlo.txt"))
    for run in runs:
        files += sorted((work / run / "profile").rglob("*.trace.json.gz"))
    chosen, total = [], 0
    for path in files:
        size = len(zlib.compress(path.read_bytes(), 6)) + 1024  # gzip size plus the tar header, roughly
        if total + size > max_bytes:
            log.append(f"({archive_path.name}: left out {path.relative_to(work)}, {size / MIB:.1f} MiB compressed)")
            continue
        chosen.append(path)
        total += size
    if not chosen:
        return False
    with tarfile.open(archive_path, "w:gz") as archive:
        for path in chosen:
            archive.add(path, arcname=str(path.relative_to(work)))
    return True


def _fresh_work_folder(work: pathlib.Path) -> None:
    """Empty ``work`` for this run, but only a folder the check made (it holds WORK_MARKER) or an empty one:
    ``--work`` pointing at anything else is refused, never wiped."""
    if work.exists():
        if (work / WORK_MARKER).is_file():
            shutil.rmtree(work)
        elif work.is_dir() and not any(work.iterdir()):
            work.rmdir()
        else:
            raise SystemExit(f"error: --work {work} holds files this tool did not write; give an empty or new folder")
    work.mkdir(parents=True)
    (work / WORK_MARKER).write_text("intermediate files of segmime-device-check; emptied on each run\n")


def run_check(config: DeviceCheckConfig) -> list[pathlib.Path]:
    """Run every step of the check (see the module docstring); returns the files written to ``config.out``."""
    config.out.mkdir(parents=True, exist_ok=True)
    _fresh_work_folder(config.work)
    check = _Check(config)
    _describe_devices(check)
    traced, runs, cmdbuf, b128 = _benchmarks(config)
    for step in traced:
        _benchmark(check, step)
    archive = config.out / "traces.tar.gz"
    if pack_traces(
        archive, config.work, [step.name for step in traced], check.log, max_bytes=int(config.max_traces_mib * MIB)
    ):
        check.written.append(archive)
    _benchmark(check, runs)
    _benchmark(check, cmdbuf)
    check.save("fixture.json", json.dumps(_fixture_errors(check), indent=2))
    check.save_log()
    if config.b128_timeout_s > 0:
        _benchmark(check, b128)
    return sorted(set(check.written))
