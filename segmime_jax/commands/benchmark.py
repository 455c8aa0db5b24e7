"""Accelerator benchmark: ``segmime-benchmark``.

Times the jitted, data-parallel train step of ENet (4 classes) and ResidualUNet (2 classes), forward-only
inference, compile time, FLOP/s and memory, over batch sizes, precisions and device counts, plus one
epoch through the input pipeline. Prints a table and writes ``benchmark.json`` (device kind, versions,
every figure) into ``--out``, rewritten after every case so an interrupted run keeps what it measured.
``--profile-steps N`` adds a per-op profile of N steps of each case (trace in ``out/profile``),
``--dump-hlo`` the optimised HLO of each train step (``out/hlo``). ``--quick`` is a CPU-sized smoke run.
``--runs R,...`` measures instead the throughput of a grid of R runs trained stacked against one after another
(:mod:`segmime_jax.bench.grid`).

Examples::

    segmime-benchmark                                  # 256x256, batches 8,32,128, fp32+bf16
    segmime-benchmark --models enet --batches 8,32 --precisions float32
    segmime-benchmark --models enet --batches 32 --profile-steps 5 --dump-hlo
    segmime-benchmark --quick --out /tmp/bench
    segmime-benchmark --models enet --batches 8 --precisions float32 --runs 1,4,8,16
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import pathlib
from collections.abc import Sequence

import jax

from segmime_jax.atomic_files import json_ready, write_json_atomic
from segmime_jax.bench.grid import run_grid_case
from segmime_jax.bench.report import format_table
from segmime_jax.bench.suite import PRECISIONS, BenchCase, build_setup, run_case, run_epoch
from segmime_jax.cli import nested, parse_config
from segmime_jax.distributed import DistributedConfig, initialize, is_primary
from segmime_jax.environment import environment

NUM_CLASSES = {"enet": 4, "residualunet": 2}
MATMUL_PRECISIONS = ("default", "high", "highest")
PRNG_IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")


@dataclasses.dataclass(frozen=True)
class BenchmarkConfig:
    models: tuple[str, ...] = dataclasses.field(
        default=("enet", "residualunet"), metadata={"help": "models to time (enet: 4 classes, residualunet: 2)"}
    )
    size: int = dataclasses.field(default=256, metadata={"help": "image height and width"})
    batches: tuple[int, ...] = dataclasses.field(default=(8, 32, 128), metadata={"help": "global batch sizes"})
    precisions: tuple[str, ...] = dataclasses.field(
        default=("float32", "bfloat16"), metadata={"help": "compute precisions (parameters stay float32)"}
    )
    devices: tuple[str, ...] | None = dataclasses.field(
        default=None,
        metadata={
            "help": "device counts to try, or all (every device of every process); none: 1 and all (all only, "
            "over several processes)"
        },
    )
    warmup: int = dataclasses.field(default=3, metadata={"help": "untimed calls before timing"})
    repeats: int = dataclasses.field(default=20, metadata={"help": "timed calls per figure"})
    epoch_steps: int = dataclasses.field(
        default=50, metadata={"help": "steps of the pipeline epoch timing (0 = skip it)"}
    )
    epoch_batch: int = dataclasses.field(default=8, metadata={"help": "batch size of the epoch timing"})
    loss: str = dataclasses.field(default="1*ce+1*dsc", metadata={"help": "loss of the train step"})
    matmul_precision: str = dataclasses.field(
        default="default",
        metadata={
            "help": "jax default_matmul_precision for float32 convolutions and matmuls: "
            "default (TF32 allowed on recent GPUs, like PyTorch's convolutions), "
            "high, highest (true float32)"
        },
    )
    prng: str = dataclasses.field(
        default="threefry2x32",
        metadata={
            "help": "jax PRNG implementation (ENet's dropout masks): threefry2x32 "
            "(jax's default, what training uses), rbg, unsafe_rbg"
        },
    )
    profile_steps: int = dataclasses.field(
        default=0, metadata={"help": "profile this many extra steps of each case (0 = off); trace in out/profile"}
    )
    dump_hlo: bool = dataclasses.field(
        default=False, metadata={"help": "write each train step's optimised HLO text to out/hlo"}
    )
    runs: tuple[int, ...] | None = dataclasses.field(
        default=None,
        metadata={
            "help": "instead of the per-case timings: grid throughput (run-images/s) of R runs trained stacked "
            "against one after another, for each R given (e.g. 1,4,8,16), on each case"
        },
    )
    quick: bool = dataclasses.field(
        default=False, metadata={"help": "CPU smoke run: 32x32, batch 2, float32, 1 device, few repeats"}
    )
    out: pathlib.Path = dataclasses.field(default=pathlib.Path("results/benchmark"), metadata={"help": "output folder"})
    distributed: DistributedConfig = nested(DistributedConfig())

    def __post_init__(self) -> None:
        for name in self.models:
            if name not in NUM_CLASSES:
                raise ValueError(f"unknown model {name!r}; valid: {', '.join(NUM_CLASSES)}")
        for precision in self.precisions:
            if precision not in PRECISIONS:
                raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
        if self.size % 16:
            raise ValueError(f"size must be a multiple of 16 (ResidualUNet), got {self.size}")
        if self.matmul_precision not in MATMUL_PRECISIONS:
            raise ValueError(
                f"unknown matmul precision {self.matmul_precision!r}; valid: {', '.join(MATMUL_PRECISIONS)}"
            )
        if self.prng not in PRNG_IMPLS:
            raise ValueError(f"unknown PRNG implementation {self.prng!r}; valid: {', '.join(PRNG_IMPLS)}")
        for name in ("warmup", "profile_steps", "epoch_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for count in self.devices or ():
            if count != "all" and not (count.isdigit() and int(count) >= 1):
                raise ValueError(f"--devices: expected positive device counts or all, got {count!r}")
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")
        if self.runs is not None and (not self.runs or min(self.runs) < 1):
            raise ValueError(f"runs must be positive run counts, got {self.runs}")

    def effective(self) -> BenchmarkConfig:
        """The config actually run: ``quick`` replaces sizes, batches, precisions and repeats."""
        if not self.quick:
            return self
        several = jax.process_count() > 1  # then every case uses all devices: the batch must split over them
        return dataclasses.replace(
            self,
            size=32,
            batches=(jax.device_count() if several else 2,),
            precisions=("float32",),
            devices=self.devices or (("all",) if several else ("1",)),
            warmup=1,
            repeats=3,
            epoch_steps=4,
            epoch_batch=jax.device_count() if several else 2,
        )

    def device_counts(self) -> tuple[int, ...]:
        """The device counts to measure (``all``: every device of every process)."""
        available = jax.device_count()
        if self.devices is not None:
            return tuple(available if count == "all" else int(count) for count in self.devices)
        if available == 1 or jax.process_count() > 1:  # several processes: the mesh holds every device
            return (available,)
        return (1, available)

    def cases(self) -> list[BenchCase]:
        return [
            BenchCase(
                model=model,
                num_classes=NUM_CLASSES[model],
                size=self.size,
                batch_size=batch,
                precision=precision,
                num_devices=devices,
                loss=self.loss,
            )
            for model in self.models
            for precision in self.precisions
            for devices in self.device_counts()
            for batch in self.batches
            if batch % devices == 0
        ]


def _record_failure(report: dict, case: BenchCase, error: Exception, *, what: str = "case") -> None:
    message = f"{type(error).__name__}: {str(error).strip()}"
    print(f" FAILED ({what}): {message[:500]}", flush=True)
    report["failed"].append(
        {"case": dataclasses.asdict(case), "label": case.label, "what": what, "error": message[:4000]}
    )


def run(config: BenchmarkConfig) -> dict:
    """Run every case and epoch timing of ``config``; ``benchmark.json`` is rewritten after each one."""
    env = environment()
    env["matmul_precision"] = config.matmul_precision
    env["prng"] = config.prng
    processes = f"{env['process_count']} processes, " if env["process_count"] > 1 else ""
    print(
        f"benchmark on {processes}{env['device_count']} x {env['device_kind']} ({env['backend']}), "
        f"jax {env['versions']['jax']}",
        flush=True,
    )
    path = config.out / "benchmark.json"
    report = {
        "environment": env,
        "config": json_ready(config),
        "complete": False,
        "cases": [],
        "epochs": [],
        "failed": [],
    }
    options = {
        "warmup": config.warmup,
        "repeats": config.repeats,
        "profile": config.profile_steps,
        "profile_dir": config.out / "profile",
        "hlo_dir": config.out / "hlo" if config.dump_hlo else None,
    }
    epoch_cases = (
        {
            model: BenchCase(
                model=model,
                num_classes=NUM_CLASSES[model],
                size=config.size,
                batch_size=config.epoch_batch,
                num_devices=jax.device_count() if jax.process_count() > 1 else 1,
                loss=config.loss,
            )
            for model in config.models
        }
        if config.epoch_steps > 0
        else {}
    )
    if config.runs is not None:
        return _run_grid(config, report, path)
    for case in config.cases():
        print(f"  {case.label} ...", end="", flush=True)
        try:
            setup = build_setup(case)
            result = run_case(setup, **options)
            print(
                f" compile {result['compile_s']:.1f} s, {result['train_step']['median_ms']:.2f} ms/step, "
                f"{result['train_images_per_s']:.0f} img/s, {result['program']['kernels']} kernels",
                flush=True,
            )
            report["cases"].append(result)
        except Exception as error:  # noqa: BLE001 - e.g. out of device memory at batch 128: keep the other cases
            _record_failure(report, case, error)
            setup = None
        if setup is not None and epoch_cases.get(case.model) == case:  # reuse the compiled step for the epoch
            del epoch_cases[case.model]
            try:
                report["epochs"].extend(run_epoch(setup, steps=config.epoch_steps))
            except Exception as error:  # noqa: BLE001
                _record_failure(report, case, error, what="epoch timing")
        setup = None  # free the state and compiled step before the next case
        _write(path, report)
    for case in epoch_cases.values():
        print(f"  epoch timing {case.label} ...", flush=True)
        try:
            report["epochs"].extend(run_epoch(build_setup(case), steps=config.epoch_steps))
        except Exception as error:  # noqa: BLE001
            _record_failure(report, case, error, what="epoch timing")
    report["complete"] = True
    _write(path, report)
    return report


def _run_grid(config: BenchmarkConfig, report: dict, path: pathlib.Path) -> dict:
    """``--runs``: stacked against sequential grid steps for every case and run count."""
    report["grid"] = []
    for case in config.cases():
        try:
            setup = build_setup(case)
        except Exception as error:  # noqa: BLE001 - keep the other cases
            _record_failure(report, case, error)
            continue
        for runs in config.runs:
            print(f"  {case.label}, {runs} runs ...", end="", flush=True)
            try:
                row = run_grid_case(setup, runs, warmup=config.warmup, repeats=config.repeats)
                print(
                    f" sequential {row['sequential_ms']:.1f} ms, stacked {row['stacked_ms']:.1f} ms per grid step "
                    f"({row['speedup']:.2f}x)",
                    flush=True,
                )
                report["grid"].append(row)
            except Exception as error:  # noqa: BLE001 - e.g. out of device memory at 16 runs
                _record_failure(report, case, error, what=f"grid of {runs} runs")
            _write(path, report)
        setup = None
    report["complete"] = True
    _write(path, report)
    return report


def _write(path: pathlib.Path, report: dict) -> None:
    """benchmark.json, rewritten after every case (by process 0 of a multi-process run)."""
    if is_primary():
        write_json_atomic(path, report, indent=2)


def main(argv: Sequence[str] | None = None, prog: str = "segmime-benchmark") -> dict:
    config = parse_config(BenchmarkConfig, argv, description=__doc__.split("\n\n")[0], prog=prog)
    initialize(config.distributed)  # several processes: every one runs the same cases on the global mesh
    config = config.effective()
    previous_prng = jax.config.jax_default_prng_impl
    jax.config.update("jax_default_prng_impl", config.prng)
    # process 0 speaks for a multi-process benchmark
    quiet = contextlib.nullcontext() if is_primary() else contextlib.redirect_stdout(io.StringIO())
    try:
        with jax.default_matmul_precision(config.matmul_precision), quiet:
            report = run(config)
    finally:
        jax.config.update("jax_default_prng_impl", previous_prng)
    if is_primary():
        print(format_table(report))
        print(f"wrote {config.out / 'benchmark.json'}")
    return report


def console() -> None:
    """The ``segmime-benchmark`` console script: :func:`main` on ``sys.argv``, its return value dropped (a console
    script's return value becomes its exit status)."""
    main()


if __name__ == "__main__":  # python -m segmime_jax.commands.benchmark (what the GPU check runs)
    console()
