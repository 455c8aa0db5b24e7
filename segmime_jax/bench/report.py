"""Markdown tables of a benchmark report (the dict written to ``benchmark.json``)."""

from __future__ import annotations

from typing import Any


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:.0f}"


def _donated(program: dict[str, Any] | None) -> str:
    if not program or program.get("fully_donated") is None:
        return "n/a"
    return "all" if program["fully_donated"] else f"{program['donated_bytes'] / program['donatable_bytes']:.0%}"


def format_profiles(report: dict[str, Any], *, top: int = 5) -> list[str]:
    """Lines of a table of the cases' profiles (empty when none was taken)."""
    profiled = [r for r in report["cases"] if "profile" in r]
    if not profiled:
        return []
    lines = [
        "",
        "| profile: case | traced wall ms/step | op ms/step | busy (traced / untraced) | ops/step "
        "| by category (ms/step) | top ops (ms/step) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in profiled:
        p = r["profile"]
        if "error" in p:
            lines.append(f"| {r['label']} | profiler failed: {p['error']} | | | | | |")
            continue
        categories = ", ".join(f"{name} {ms:.2f}" for name, ms in p["by_category_ms"].items())
        ops = ", ".join(f"{op['op']} {op['ms_per_step']:.2f}" for op in p["top_ops"][:top])
        lines.append(
            f"| {r['label']} | {p['wall_ms_per_step']:.2f} | {p['op_ms_per_step']:.2f} "
            f"| {_fmt(p['busy_fraction'], '.0%')} / {_fmt(p.get('busy_vs_untraced'), '.0%')} "
            f"| {p['ops_per_step']:.0f} | {categories} | {ops} |"
        )
    lines.append(f"(ops from {profiled[0]['profile'].get('source', 'n/a')})")
    return lines


def format_grid_table(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown lines of the grid measurements (empty when there are none)."""
    if not rows:
        return []
    lines = [
        "",
        "| grid: case | runs | mesh (runs x data) | sequential ms/grid step | stacked ms/grid step "
        "| sequential run-img/s | stacked run-img/s | stacked / sequential | stacked compile s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['runs']} | {r['mesh']['runs']} x {r['mesh']['data']} | {r['sequential_ms']:.1f} "
            f"| {r['stacked_ms']:.1f} | {r['sequential_run_images_per_s']:.0f} | {r['stacked_run_images_per_s']:.0f} "
            f"| {r['speedup']:.2f}x | {r['stacked_compile_s']:.1f} |"
        )
    return lines


def format_table(report: dict[str, Any]) -> str:
    """Markdown tables: one row per case, then the profiles (if any), then one row per epoch timing."""
    env = report["environment"]
    lines = [
        f"Device: {env.get('device_count', env['local_device_count'])} x {env['device_kind']} ({env['backend']})"
        + (f", {env['process_count']} processes" if env.get("process_count", 1) > 1 else "")
        + "; "
        f"jax {env['versions']['jax']}, flax {env['versions']['flax']}; "
        f"matmul precision {env.get('matmul_precision', 'default')}, PRNG {env.get('prng', 'threefry2x32')}"
        + (f"; XLA_FLAGS={env['xla_flags']}" if env.get("xla_flags") else "")
        + ("" if report.get("complete", True) else " (INCOMPLETE: the run stopped early)"),
        "",
        "| model | size | batch | precision | devices | compile s | train ms/step (min/med/max) | train img/s "
        "| infer img/s | train TFLOP/s | planned MiB | kernels | donated |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["cases"]:
        c, t = r["case"], r["train_step"]
        program = r.get("program")
        lines.append(
            f"| {c['model']} | {c['size']} | {c['batch_size']} | {c['precision']} | {c['num_devices']} "
            f"| {r['compile_s']:.1f} | {t['min_ms']:.2f} / {t['median_ms']:.2f} / {t['max_ms']:.2f} "
            f"| {r['train_images_per_s']:.0f} | {r['inference_images_per_s']:.0f} "
            f"| {_fmt(r['train_tflops_per_s'], '.2f')} | {_mib(r['planned_memory_bytes'])} "
            f"| {program['kernels'] if program else 'n/a'} | {_donated(program)} |"
        )
    for failure in report.get("failed", ()):
        lines.append(
            f"| {failure['label']} | FAILED ({failure.get('what', 'case')}): {failure['error'].splitlines()[0][:160]} |"
        )
    lines += format_profiles(report)
    lines += format_grid_table(report.get("grid", []))
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
                f"| {e['epoch_images_per_s']:.0f} |"
            )
    return "\n".join(lines)
