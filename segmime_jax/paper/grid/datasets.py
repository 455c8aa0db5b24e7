"""Where a paper experiment's data come from: a real download, or a synthetic dataset in the same on-disk format,
generated once into the cache folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from segmime_jax.data import DatasetSplits
from segmime_jax.paper.grid.config import GridConfig


def dataset_root(dataset: str, config: GridConfig, *, log: Callable[[str], None] = print) -> tuple[Path, bool]:
    """The folder to load: ``config.data_root``, or the synthetic dataset in the cache, generated if missing.

    The synthetic dataset lives in ``<cache_dir>/synthetic/<dataset>-<cases>-<data_seed>[-zoom<z>]/`` (written
    whole or not at all). Returns ``(root, synthetic)``.
    """
    from segmime_jax.data import synthetic as synthetic_data

    if config.data_root is not None:
        root = Path(config.data_root).expanduser()
        if not root.exists():
            raise FileNotFoundError(f"--data-root {root}: no such folder")
        if not root.is_dir():
            raise NotADirectoryError(f"--data-root {root}: is a file; give the folder of the dataset")
        return root, False
    writers = {"acdc": synthetic_data.write_synthetic_acdc, "promise12": synthetic_data.write_synthetic_promise12}
    if dataset not in writers:
        raise ValueError(f"no synthetic generator for dataset {dataset!r}")
    zoom = "" if config.synthetic_zoom == 1 else f"-zoom{config.synthetic_zoom:g}"
    final = Path(config.cache_dir) / "synthetic" / f"{dataset}-{config.synthetic_cases}-{config.data_seed}{zoom}"

    def write() -> None:
        writers[dataset](final, cases=config.synthetic_cases, seed=config.data_seed, zoom=config.synthetic_zoom)

    if not final.is_dir():
        log(
            f"generating a synthetic {dataset} dataset ({config.synthetic_cases} cases, seed {config.data_seed}) "
            f"into {final} ..."
        )
        try:
            write()
        except FileExistsError:
            if not final.is_dir():  # not a concurrent generation that got there first
                raise
    return final, True


def data_info(data: DatasetSplits, root: Path, synthetic: bool) -> dict:
    """Where the data came from and how big each split is."""
    return {
        "name": data.name,
        "root": str(root),
        "synthetic": synthetic,
        "class_names": list(data.class_names),
        "image_size": list(data.train.images.shape[1:3]),
        **{
            f"{split}_{what}": value
            for split in ("train", "val", "test")
            for what, value in (
                ("slices", len(getattr(data, split))),
                ("volumes", len(getattr(data, split).volumes)),
                ("patients", len(getattr(data, split).patients)),
            )
        },
    }
