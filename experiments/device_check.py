"""GPU check: ``python -m experiments.device_check --out DIR --reference DIR``.

Benchmarks ENet and ResidualUNet on the GPU (float32 and bfloat16 with profiles and HLO, ENet with its
convolutions in CUDA graphs, optionally batch 128) and compares both models with the PyTorch fixtures, each
step in its own process with its own time limit in seconds (0 skips a step), and writes a few flat files to
--out: one JSON per benchmark, fixture.json, traces.tar.gz and log. Run it from the repository root; it needs
jax, flax, optax, orbax and chex only.

What each step does and writes: :mod:`segmime_jax.bench.device_check`.

Examples::

    python -m experiments.device_check --out results/device-out --reference tests/fixtures
    python -m experiments.device_check --out DIR --time-budget-s 300     # all steps within 300 s
    python -m experiments.device_check --out DIR --b128-timeout-s 70     # also batch 128
    python -m experiments.device_check --out DIR --quick --models enet   # smoke run at the CPU size
"""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Sequence

from segmime_jax.bench.device_check import DeviceCheckConfig, run_check
from segmime_jax.cli import parse_config


def main(argv: Sequence[str] | None = None) -> list[pathlib.Path]:
    config = parse_config(
        DeviceCheckConfig, argv, description=__doc__.split("\n\n")[1], prog="python -m experiments.device_check"
    )
    written = run_check(config)
    print((config.out / "log").read_text())
    print("wrote " + ", ".join(str(path) for path in written))
    return written


if __name__ == "__main__":
    main(sys.argv[1:])
