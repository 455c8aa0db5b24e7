"""What a run produced (:class:`RunResult`), and its files: ``result.json`` and ``examples.npz``."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from segmime_jax.atomic_files import array_from_json, atomic_output, json_ready, write_json_atomic
from segmime_jax.train import metrics as metrics_lib
from segmime_jax.train.config import TrainConfig

RESULT_FILE = "result.json"
EXAMPLES_FILE = "examples.npz"
METRICS_FILE = "metrics.jsonl"


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

    def summary(self) -> dict[str, Any]:
        """Test DSC mean and std over volumes per class and "All" (foreground mean per volume), ClECE means."""
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
        )


def config_from_json(data: Mapping[str, Any]) -> TrainConfig:
    """The :class:`TrainConfig` of ``json_ready(config)`` (unknown keys, from other versions, ignored)."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in data.items() if k in fields}
    if values.get("loss_classes") is not None:
        values["loss_classes"] = tuple(values["loss_classes"])
    return TrainConfig(**values)


def save_run_result(result: RunResult, run_dir: str | os.PathLike) -> pathlib.Path:
    """Write ``run_dir/result.json`` (examples in ``run_dir/examples.npz``); return the JSON path."""
    run_dir = pathlib.Path(run_dir)
    with atomic_output(run_dir / EXAMPLES_FILE) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **result.examples)
    data = result.to_json(include_examples=False)
    data["examples_file"] = EXAMPLES_FILE
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
