"""What a run produced (:class:`RunResult`), and its files: ``result.json``, ``examples.npz`` and
``test_metrics.csv`` (one row per test volume and foreground class: DSC, HD95 and ASSD)."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from segmime_jax.atomic_files import array_from_json, atomic_output, json_ready, write_json_atomic, write_text_atomic
from segmime_jax.train import metrics as metrics_lib
from segmime_jax.train.config import TrainConfig

RESULT_FILE = "result.json"
EXAMPLES_FILE = "examples.npz"
METRICS_FILE = "metrics.jsonl"
VOLUME_METRICS_FILE = "test_metrics.csv"
VOLUME_METRICS_COLUMNS = ("volume", "class", "dsc", "hd95_mm", "assd_mm")


@dataclasses.dataclass
class RunResult:
    """What a run produced (see :func:`segmime_jax.train.train_and_evaluate`).

    Attributes:
      config: the run's configuration.
      class_names: background first.
      history: one dict per epoch (the lines of ``metrics.jsonl``).
      best_epoch: the epoch whose state was tested (best mean foreground validation DSC, first on ties).
      test_volume_names, test_dsc: 3D DSC per test volume and class, ``(V, K)``.
      test_clece: class-wise ECE per class, ``(K,)``.
      reliability: ``confidence``, ``accuracy``, ``count`` per class and bin.
      examples: test slices for Figure 4 (``image``, ``label``, ``prediction``, ...).
      wall_time_s: seconds spent on the run, interrupted calls included.
      data: the :meth:`~segmime_jax.data.DatasetSplits.fingerprint` of its data.
      test_hd95, test_assd: ``(V, K)`` HD95 and ASSD in mm per test volume and class on the original grid
        (:mod:`segmime_jax.train.surface`; background and undefined values NaN); ``None`` in results made
        before they were measured.
      surface: how they were measured (``ground_truth``, ``time_s``, ``convention``), or ``None``.
    """

    config: TrainConfig
    class_names: tuple[str, ...]
    history: list[dict]
    best_epoch: int
    test_volume_names: list[str]
    test_dsc: np.ndarray
    test_clece: np.ndarray
    reliability: dict[str, np.ndarray]
    examples: dict[str, np.ndarray]
    wall_time_s: float
    data: dict[str, str] | None = None
    test_hd95: np.ndarray | None = None
    test_assd: np.ndarray | None = None
    surface: dict[str, Any] | None = None

    def summary(self) -> dict[str, Any]:
        """Test DSC mean and std over volumes per class and "All" (foreground mean per volume), ClECE means, and
        the HD95 and ASSD (mm) means over the volumes where they are defined, per class and "All" (every defined
        (volume, foreground class) value), with how many were undefined."""
        dsc = np.asarray(self.test_dsc, np.float64)
        fg = metrics_lib.mean_foreground(dsc)
        clece = np.asarray(self.test_clece, np.float64)
        return {
            "test_dsc_mean": dsc.mean(0).tolist(),
            "test_dsc_std": dsc.std(0).tolist(),
            "test_dsc_all_mean": float(fg.mean()),
            "test_dsc_all_std": float(fg.std()),
            "test_clece_mean_all_classes": float(np.nanmean(clece)),
            "test_clece_mean_foreground": float(np.nanmean(clece[1:] if clece.size > 1 else clece)),
            **_surface_summary("hd95", self.test_hd95),
            **_surface_summary("assd", self.test_assd),
        }

    def to_json(self, *, include_examples: bool = True) -> dict[str, Any]:
        """Everything JSON-ready (arrays as nested lists, NaN as null)."""
        out = {
            "config": self.config,
            "class_names": list(self.class_names),
            "history": self.history,
            "best_epoch": self.best_epoch,
            "test_volume_names": list(self.test_volume_names),
            "test_dsc": self.test_dsc,
            "test_clece": self.test_clece,
            "reliability": self.reliability,
            "wall_time_s": self.wall_time_s,
            "summary": self.summary(),
            "data": self.data,
            "test_hd95": self.test_hd95,
            "test_assd": self.test_assd,
            "surface": self.surface,
        }
        if include_examples:
            out["examples"] = self.examples
        return json_ready(out)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], examples: Mapping[str, np.ndarray] | None = None) -> RunResult:
        """Inverse of :meth:`to_json` (``examples`` from the JSON when present, else from the argument)."""
        stored = data.get("examples")
        if stored is not None:
            examples = {k: np.asarray(v) for k, v in stored.items()}
        return cls(
            config=config_from_json(data["config"]),
            class_names=tuple(data["class_names"]),
            history=list(data["history"]),
            best_epoch=int(data["best_epoch"]),
            test_volume_names=list(data["test_volume_names"]),
            test_dsc=array_from_json(data["test_dsc"]),
            test_clece=array_from_json(data["test_clece"]),
            reliability={k: array_from_json(v) for k, v in data["reliability"].items()},
            examples=dict(examples or {}),
            wall_time_s=float(data["wall_time_s"]),
            data=data.get("data"),
            test_hd95=None if data.get("test_hd95") is None else array_from_json(data["test_hd95"]),
            test_assd=None if data.get("test_assd") is None else array_from_json(data["test_assd"]),
            surface=data.get("surface"),
        )

    def volume_rows(self) -> list[dict[str, Any]]:
        """One dict per test volume and foreground class: :data:`VOLUME_METRICS_COLUMNS` (NaN where undefined)."""
        rows = []
        for v, volume in enumerate(self.test_volume_names):
            for k in range(1, len(self.class_names)):
                rows.append(
                    {
                        "volume": volume,
                        "class": self.class_names[k],
                        "dsc": float(self.test_dsc[v, k]),
                        "hd95_mm": math.nan if self.test_hd95 is None else float(self.test_hd95[v, k]),
                        "assd_mm": math.nan if self.test_assd is None else float(self.test_assd[v, k]),
                    }
                )
        return rows


def _surface_summary(name: str, values: np.ndarray | None) -> dict[str, Any]:
    if values is None:
        return {}
    values = np.asarray(values, np.float64)[:, 1:]
    finite = np.isfinite(values)
    means = [float(values[finite[:, j], j].mean()) if finite[:, j].any() else None for j in range(values.shape[1])]
    return {
        f"test_{name}_mm_mean": means,
        f"test_{name}_mm_all_mean": float(values[finite].mean()) if finite.any() else None,
        f"test_{name}_undefined": int((~finite).sum()),
    }


def volume_metrics_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """CSV text of per-volume rows (e.g. :meth:`RunResult.volume_rows`, with any leading columns), floats with
    6 significant digits, undefined (NaN) values as empty cells."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    columns = list(rows[0]) if rows else list(VOLUME_METRICS_COLUMNS)
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_cell(row[c]) for c in columns])
    return buffer.getvalue()


def _csv_cell(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else ""
    return value


def config_from_json(data: Mapping[str, Any]) -> TrainConfig:
    """The :class:`TrainConfig` of ``json_ready(config)`` (unknown keys, from other versions, ignored)."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in data.items() if k in fields}
    if values.get("loss_classes") is not None:
        values["loss_classes"] = tuple(values["loss_classes"])
    return TrainConfig(**values)


def save_run_result(result: RunResult, run_dir: str | os.PathLike) -> pathlib.Path:
    """Write ``run_dir/result.json`` (examples in ``run_dir/examples.npz``, per-volume metrics in
    ``run_dir/test_metrics.csv``); return the JSON path."""
    run_dir = pathlib.Path(run_dir)
    with atomic_output(run_dir / EXAMPLES_FILE) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **result.examples)
    data = result.to_json(include_examples=False)
    data["examples_file"] = EXAMPLES_FILE
    write_text_atomic(run_dir / VOLUME_METRICS_FILE, volume_metrics_csv(result.volume_rows()))
    return write_json_atomic(run_dir / RESULT_FILE, data)


def load_run_result(path: str | os.PathLike) -> RunResult:
    """Read a :class:`RunResult` from a run directory or its ``result.json`` (ValueError naming the file when
    it cannot)."""
    path = pathlib.Path(path)
    if path.is_dir():
        path = path / RESULT_FILE
    try:
        data = json.loads(path.read_text())
        examples = None
        if data.get("examples") is None and data.get("examples_file"):
            with np.load(path.parent / data["examples_file"]) as npz:
                examples = {k: npz[k] for k in npz.files}
        return RunResult.from_json(data, examples)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: cannot read the run result ({err})") from err
