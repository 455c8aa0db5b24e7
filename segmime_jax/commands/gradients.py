"""Gradient study of paper §2.2 / Figure 1: the Dice gradient is a two-valued negative of the ground truth.

    segmime-gradients                              # drawn cardiac phantom, 256x256 (seconds)
    segmime-gradients --out /tmp/g --size 128 --class-index 1
    segmime-gradients --data-root /data/ACDC       # a real ACDC label slice instead

Writes into ``--out`` (default ``results/gradients``): figure1.png, gradient_maps.png, gradient_table.md,
gradient_table.json, bound.png, bound.json; see :mod:`segmime_jax.paper.gradient_study`. The prediction is
always synthetic (noisy softmax built from the labels); ``--data-root`` only replaces the drawn labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from segmime_jax.cli import parse_config
from segmime_jax.paper import gradient_study as study

DESCRIPTION = __doc__.split("\n\n")[0]


@dataclass(frozen=True)
class GradientsConfig:
    """Options of the gradient study (one ``--kebab-case`` flag each)."""

    out: Path = field(default=Path("results/gradients"), metadata={"help": "output folder"})
    data_root: Path | None = field(
        default=None,
        metadata={
            "help": "ACDC download folder: use its training slice with the largest --class-index area instead of "
            "the drawn phantom (needs segmime_jax.data.acdc)"
        },
    )
    size: int = field(default=256, metadata={"help": "image size (pixels per side)"})
    class_index: int = field(
        default=3, metadata={"help": "class shown in the figure and table (0 bg, 1 RV, 2 Myo, 3 LV)"}
    )
    seed: int = field(default=0, metadata={"help": "seed of the prediction noise"})
    gain: float = field(
        default=6.0, metadata={"help": "logit margin of the true class (6: s about 0.99 without noise)"}
    )
    noise: float = field(default=1.0, metadata={"help": "std of the i.i.d. logit noise"})
    blur: float = field(default=1.5, metadata={"help": "Gaussian blur of the one-hot logits, pixels at 256x256"})
    error_blobs: bool = field(
        default=True, metadata={"help": "add one missed and one spurious blob of the shown class to the prediction"}
    )
    convention: str = field(
        default="power",
        metadata={
            "help": "default dB convention of the dynamic range (both are reported): power = 10 log10, "
            "amplitude = 20 log10",
            "choices": ("power", "amplitude"),
        },
    )
    bound_points: int = field(default=12, metadata={"help": "disc radii in the Eq. 7 sweep (0: skip it)"})
    dpi: int = field(default=110, metadata={"help": "figure resolution"})

    def __post_init__(self) -> None:
        if self.size < 32:
            raise ValueError(f"--size must be at least 32, got {self.size}")
        if self.bound_points < 0:
            raise ValueError(f"--bound-points must be >= 0, got {self.bound_points}")
        if self.noise < 0 or self.blur < 0 or self.gain <= 0:
            raise ValueError("--gain must be > 0, --noise and --blur >= 0")


def parse_args(argv: Sequence[str] | None = None, prog: str = "segmime-gradients") -> GradientsConfig:
    return parse_config(GradientsConfig, argv, description=DESCRIPTION, prog=prog)


def main(argv: Sequence[str] | None = None, prog: str = "segmime-gradients") -> study.GradientStudyResult:
    config = parse_args(argv, prog)
    try:
        if config.data_root is None:
            labels = study.cardiac_phantom(config.size)
            class_names = study.PHANTOM_CLASSES
            source = {
                "kind": "phantom",
                "size": config.size,
                "description": f"drawn cardiac phantom {config.size}x{config.size}",
            }
        else:
            labels, class_names, source = study.acdc_slice(
                config.data_root, size=config.size, class_index=config.class_index
            )
            source["description"] = f"ACDC {source['volume']} slice {source['slice_index']} labels"
        if not 0 <= config.class_index < len(class_names):
            raise ValueError(f"--class-index {config.class_index} out of range for classes {class_names}")
        probs = study.noisy_prediction(
            labels,
            len(class_names),
            seed=config.seed,
            gain=config.gain,
            noise=config.noise,
            blur=config.blur,
            error_class=config.class_index if config.error_blobs else None,
        )
        source["prediction"] = (
            f"softmax({config.gain} * blur_{config.blur}(onehot) + {config.noise} * N(0,1)), "
            f"seed {config.seed}" + (", one missed + one spurious blob" if config.error_blobs else "")
        )
        bound_rows = (
            study.bound_sweep(
                config.size,
                points=config.bound_points,
                seed=config.seed,
                gain=config.gain,
                noise=config.noise,
                blur=config.blur,
            )
            if config.bound_points
            else []
        )
        result = study.run_gradient_study(
            config.out,
            labels,
            probs,
            class_names=class_names,
            class_index=config.class_index,
            convention=config.convention,
            bound_rows=bound_rows,
            source=source,
            dpi=config.dpi,
        )
    except (ValueError, RuntimeError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from err
    print(study.format_summary(result), flush=True)
    return result


def console() -> None:
    """The ``segmime-gradients`` console script: :func:`main` on ``sys.argv``, its return value dropped (a console
    script's return value becomes its exit status)."""
    main()


if __name__ == "__main__":  # python -m segmime_jax.commands.gradients, as the console script
    console()
