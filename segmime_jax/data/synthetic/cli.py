"""The command line, ``python -m segmime_jax.data.synthetic {acdc,promise12} OUT_DIR [options]``."""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
from collections.abc import Sequence

from segmime_jax.data.synthetic.acdc import write_synthetic_acdc
from segmime_jax.data.synthetic.promise12 import write_synthetic_promise12


def main(argv: Sequence[str] | None = None) -> int:
    """Write one synthetic dataset; returns the exit status (2 on a bad argument or an unusable output folder)."""
    parser = argparse.ArgumentParser(
        prog="python -m segmime_jax.data.synthetic",
        description="Write a synthetic ACDC-like or PROMISE12-like dataset in the real layout and formats.",
        allow_abbrev=False,
    )
    parser.add_argument("dataset", choices=("acdc", "promise12"))
    parser.add_argument("out_dir", type=pathlib.Path, help="output folder (must not exist or be empty)")
    parser.add_argument("--cases", type=int, default=20, help="number of patients/cases (default: 20)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default: 0)")
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="in-plane matrix size multiplier at constant field of view (default: 1)",
    )
    parser.add_argument(
        "--zoom",
        type=float,
        default=1.0,
        help="field of view shrunk by this factor around the heart or prostate (default: 1)",
    )
    parser.add_argument(
        "--testing-cases",
        type=int,
        default=0,
        help="ACDC only: patients in testing/ (patient101...), with ground truth (default: 0)",
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        if args.dataset == "acdc":
            path = write_synthetic_acdc(
                args.out_dir,
                cases=args.cases,
                seed=args.seed,
                scale=args.scale,
                testing_cases=args.testing_cases,
                zoom=args.zoom,
            )
        else:
            if args.testing_cases:
                parser.error("--testing-cases applies to acdc only")
            path = write_synthetic_promise12(
                args.out_dir, cases=args.cases, seed=args.seed, scale=args.scale, zoom=args.zoom
            )
    except (FileExistsError, ValueError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.cases} synthetic {args.dataset} cases to {path} in {time.perf_counter() - start:.1f} s")
    return 0
