"""GPU check: ``segmime-device-check --out DIR --reference DIR``.

Benchmarks ENet and ResidualUNet on the GPU (float32 and bfloat16 with profiles and HLO, ENet with its
convolutions in CUDA graphs, optionally batch 128) and compares both models with the PyTorch fixtures, each
step in its own process with its own time limit in seconds (0 skips a step), and writes a few flat files to
--out: one JSON per benchmark, fixture.json, traces.tar.gz and log. Run it from the repository root; it needs
jax, flax, optax, orbax and chex only.

What each step does and writes: :mod:`segmime_jax.bench.device_check`.

Examples::

    segmime-device-check --out results/device-out --reference tests/fixtures
    segmime-device-check --out DIR --time-budget-s 300     # all steps within 300 s
    segmime-device-check --out DIR --b128-timeout-s 70     # also batch 128
    segmime-device-check --out DIR --quick --models enet   # smoke run at the CPU size
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

from segmime_jax.bench.device_check import DeviceCheckConfig, run_check
from segmime_jax.cli import parse_config


def main(argv: Sequence[str] | None = None, prog: str = "segmime-device-check") -> list[pathlib.Path]:
    config = parse_config(DeviceCheckConfig, argv, description=__doc__.split("\n\n")[1], prog=prog)
    written = run_check(config)
    print((config.out / "log").read_text())
    print("wrote " + ", ".join(str(path) for path in written))
    return written


def console() -> None:
    """The ``segmime-device-check`` console script: :func:`main` on ``sys.argv``, its return value dropped (a console
    script's return value becomes its exit status)."""
    main()


if __name__ == "__main__":  # python -m segmime_jax.commands.device_check, as the console script
    console()
