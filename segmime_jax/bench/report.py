"""Plain-text and markdown tables of a benchmark report (the dict written to ``benchmark.json``)."""

from __future__ import annotations

from typing import Any


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:.0f}"


def format_table(report: dict[str, Any]) -> str:
    """A markdown table: one row per case, then one per epoch timing."""
    env = report["environment"]
    lines = [
        f"Device: {env['local_device_count']} x {env['device_kind']} ({env['backend']}); "
        f"jax {env['versions']['jax']}, flax {env['versions']['flax']}",
        "",
        "| model | size | batch | precision | devices | compile s | train ms/step (min/med/max) | train img/s "
        "| infer img/s | train TFLOP/s | planned MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["cases"]:
        c, t = r["case"], r["train_step"]
        lines.append(
            f"| {c['model']} | {c['size']} | {c['batch_size']} | {c['precision']} | {c['num_devices']} "
            f"| {r['compile_s']:.1f} | {t['min_ms']:.2f} / {t['median_ms']:.2f} / {t['max_ms']:.2f} "
            f"| {r['train_images_per_s']:.0f} | {r['inference_images_per_s']:.0f} "
            f"| {_fmt(r['train_tflops_per_s'], '.2f')} | {_mib(r['planned_memory_bytes'])} |")
    if report.get("epochs"):
        lines += [
            "",
            "| epoch: model | batch | steps | data on device | epoch s | fixed-batch s | pipeline share | img/s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for e in report["epochs"]:
            c = e["case"]
            lines.append(
                f"| {c['model']} {c['size']}x{c['size']} | {c['batch_size']} | {e['steps']} | {e['resident']} "
                f"| {e['epoch_s']:.2f} | {e['fixed_batch_s']:.2f} | {100 * e['pipeline_share']:.1f}% "
                f"| {e['epoch_images_per_s']:.0f} |")
    return "\n".join(lines)
