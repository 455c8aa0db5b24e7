"""Mime study: why the mimes trail Dice in a small demo, from finished grids (see docs/mime_study.md).

    segmime-mime-study --grids results/promise12/demo,results/acdc/demo
    segmime-mime-study --grids /tmp/p48,/tmp/p64 --figures docs/images

Prints one Markdown row per (grid, loss): test All-DSC, the paired difference to Dice with its 95 % interval,
epochs to 90 % of the best validation DSC, the late gain, the epochs with a missed class (one under 5 %
validation DSC), and for PROMISE12 the halo (false-positive volume and distance in pixels); see
:mod:`segmime_jax.paper.mime_study`. With ``--figures``: gap_against_size.png from the PROMISE12 grids and
class_curves_<grid>.png per ACDC grid.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from segmime_jax.cli import option, parse_config
from segmime_jax.paper import mime_study as study

DESCRIPTION = __doc__.split("\n\n")[0]


@dataclasses.dataclass(frozen=True)
class MimeStudyConfig:
    """Options of the mime study."""

    grids: tuple[Path, ...] = option((), "comma-separated grid folders (the --out of segmime-acdc/promise12)")
    figures: Path | None = option(None, "folder for the figures (none: no figures)")
    halo: bool = option(True, "measure the halo on the PROMISE12 test predictions (--no-halo: skip)")


def main(argv: Sequence[str] | None = None, prog: str = "segmime-mime-study") -> list[study.GridSummary]:
    config = parse_config(MimeStudyConfig, argv, description=DESCRIPTION, prog=prog)
    if not config.grids:
        raise SystemExit("error: --grids names no grid folder")
    for folder in config.grids:
        if not (folder / "results.json").is_file():
            raise SystemExit(f"error: {folder}: not a finished grid (no results.json)")
    summaries = [study.summarize_grid(folder, halo=config.halo) for folder in config.grids]
    print(study.markdown_table(summaries))
    if any(loss.rim_dsc for s in summaries for loss in s.losses.values()):
        print()
        print(study.rim_table(summaries))
    if config.figures is not None:
        promise12 = [s for s in summaries if s.dataset == "promise12" and "mime" in s.dsc_differences]
        if promise12:
            print(study.plot_gap_against_size(promise12, config.figures / "gap_against_size.png"))
        for s in summaries:
            if s.dataset == "acdc":
                print(study.plot_class_curves(s, config.figures / f"class_curves_{s.folder.name}.png"))
    return summaries


def console() -> None:
    """The ``segmime-mime-study`` console script: :func:`main` on ``sys.argv``, its return value dropped (a console
    script's return value becomes its exit status)."""
    main()


if __name__ == "__main__":  # python -m segmime_jax.commands.mime_study, as the console script
    console()
