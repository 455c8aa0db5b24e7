"""``python -m segmime_jax.models [--size 256] [--batch 1]``: parameters and FLOPs of each model.

Models are built abstractly (``nnx.eval_shape``): nothing is allocated or executed; the FLOPs come from
XLA's cost analysis of the compiled eval-mode forward pass on the default backend, next to the
analytic convolution FLOPs (2 × multiply-accumulates).
"""

from __future__ import annotations

import argparse

from flax import nnx

from segmime_jax.models.analysis import conv_flops, count_params, forward_flops
from segmime_jax.models.registry import MODELS, build_model, check_input_size


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m segmime_jax.models", description=__doc__.splitlines()[0], allow_abbrev=False
    )
    parser.add_argument("--size", type=int, default=256, help="image height and width (default 256)")
    parser.add_argument("--batch", type=int, default=1, help="images per forward pass (default 1)")
    args = parser.parse_args(argv)
    for name in MODELS:  # every model is shown, so the size must suit each
        try:
            check_input_size(name, args.size)
        except ValueError as err:
            parser.error(f"--size: {err}")
    if args.batch < 1:
        parser.error(f"--batch must be at least 1, got {args.batch}")

    shape = (args.batch, args.size, args.size, 1)
    print(f"input {shape} (B, H, W, C); FLOPs per forward pass of the batch")
    print(f"{'model':<14}{'classes':>8}{'params':>14}{'XLA FLOPs':>14}{'conv FLOPs':>14}")
    for name, classes in (("enet", 4), ("enet", 2), ("residualunet", 4), ("residualunet", 2)):
        model = nnx.eval_shape(lambda name=name, classes=classes: build_model(name, classes, rngs=nnx.Rngs(0)))
        xla = forward_flops(model, shape)
        conv = conv_flops(model, shape)
        print(f"{name:<14}{classes:>8}{count_params(model):>14,}{xla / 1e9:>13.3f}G{conv / 1e9:>13.3f}G")


if __name__ == "__main__":
    main()
