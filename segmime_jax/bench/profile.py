"""Where a train step's time goes: a ``jax.profiler`` trace of a few steps, summarised per XLA op.

:func:`profile_steps` traces ``steps`` calls of a compiled train step into ``log_dir`` (a TensorBoard /
XProf trace that Perfetto also opens: ``*.trace.json.gz``) and :func:`summarize_profile` reads the
``*.xplane.pb`` it wrote back with :class:`jax.profiler.ProfileData`:

- on a GPU, the device plane (``/device:GPU:0``): kernel time from its ``Stream …`` lines (summed over
  streams), grouped by the XLA op each kernel belongs to (the event's ``hlo_op`` stat, else the ``XLA Ops``
  line, else the kernel name); ``busy_fraction`` = kernel time / traced wall time. Under the profiler XLA:GPU
  runs its command buffers op by op and the tracer adds a few µs per kernel, so the traced wall time is
  longer than an untraced step: ``1 − busy_fraction`` over-states launch overhead. The benchmark therefore
  also reports ``busy_vs_untraced`` (kernel time / the untraced median step), the better estimate of how
  busy the device is in a real run;
- on the CPU backend (no device plane), the XLA thunks on the host's thread-pool lines, summed over threads
  (so ``busy_fraction`` can exceed 1 there).

Ops are grouped by name without their ``.N`` suffix (``loop_add_fusion.12`` → ``loop_add_fusion``) and by
category (collective, convolution, matmul, reduction, copy/transpose, other fusion, other); figures are per step.
"""

from __future__ import annotations

import collections
import pathlib
import re
import time
from collections.abc import Iterable
from typing import Any

import jax

_SUFFIX = re.compile(r"(\.\d+)+$")
_CATEGORIES = (
    (
        "collective",
        (
            "all-reduce",
            "all_reduce",
            "all-gather",
            "all_gather",
            "reduce-scatter",
            "reduce_scatter",
            "collective",
            "all-to-all",
            "nccl",
        ),
    ),
    # cuDNN kernel names (used when no hlo_op names the XLA op): *_fprop_* / *_dgrad_* / *_wgrad_*
    ("convolution", ("conv", "cudnn", "fprop", "dgrad", "wgrad")),
    ("matmul", ("gemm", "dot", "cublas", "matmul")),
    ("reduction", ("reduce",)),
    ("copy/transpose", ("copy", "transpose", "memcpy", "memset")),
    ("other fusion", ("fusion",)),
)


def op_group(name: str) -> str:
    """An op's name without its numeric suffix: ``convolution.151`` → ``convolution``."""
    return _SUFFIX.sub("", name)


def op_category(name: str) -> str:
    """The category of an op or kernel name (first matching needle; ``convert`` is not a convolution)."""
    lowered = name.lower().replace("convert", "cvt")
    for category, needles in _CATEGORIES:
        if any(needle in lowered for needle in needles):
            return category
    return "other"


def _stats(event: Any) -> dict[str, Any]:
    try:
        return dict(event.stats)
    except (TypeError, ValueError):
        return {}


def _device_events(plane: Any) -> tuple[list[tuple[str, float]], str]:
    """``[(op name, duration ns)]`` of a device plane's kernels, and where the names came from."""
    lines = list(plane.lines)
    streams = [line for line in lines if line.name.startswith("Stream")]
    xla_ops = [line for line in lines if line.name == "XLA Ops"]
    if streams:
        events = [e for line in streams for e in line.events]
        named = [(_stats(e).get("hlo_op"), e) for e in events]
        if any(op for op, _ in named):
            return [(str(op or e.name), e.duration_ns) for op, e in named], f"{plane.name} streams (hlo_op)"
        if not xla_ops:
            return [(e.name, e.duration_ns) for e in events], f"{plane.name} streams (kernel names)"
        # Kernel time from the streams, names from the XLA Ops line: scale the op durations to the kernels'.
        kernel_ns = sum(e.duration_ns for e in events)
        ops = [(e.name, e.duration_ns) for line in xla_ops for e in line.events]
        op_ns = sum(d for _, d in ops) or 1.0
        return [(name, d * kernel_ns / op_ns) for name, d in ops], f"{plane.name} XLA Ops (scaled to streams)"
    ops = [(e.name, e.duration_ns) for line in xla_ops for e in line.events]
    return ops, f"{plane.name} XLA Ops"


def _host_events(plane: Any) -> list[tuple[str, float]]:
    """XLA:CPU thunks: events on the thread-pool lines whose names are HLO ops (not ``Class::method``)."""
    return [
        (e.name, e.duration_ns)
        for line in plane.lines
        if line.name.startswith("tf_XLA")
        for e in line.events
        if e.name and "::" not in e.name and " " not in e.name
    ]


def summarize_events(
    events: Iterable[tuple[str, float]], *, steps: int, wall_s: float, source: str, top: int = 12
) -> dict[str, Any]:
    """Per-step totals by op group and category of ``(op name, duration ns)`` events from ``steps`` steps."""
    by_group: dict[str, float] = collections.defaultdict(float)
    counts: collections.Counter[str] = collections.Counter()
    for name, duration_ns in events:
        group = op_group(name)
        by_group[group] += duration_ns
        counts[group] += 1
    total_ns = sum(by_group.values())
    per_step = 1e-6 / steps  # ns over all steps -> ms per step
    categories: dict[str, float] = collections.defaultdict(float)
    for group, ns in by_group.items():
        categories[op_category(group)] += ns * per_step
    ranked = sorted(by_group.items(), key=lambda item: -item[1])[:top]
    wall_ms = 1e3 * wall_s / steps
    return {
        "source": source,
        "steps": steps,
        "wall_ms_per_step": wall_ms,
        "op_ms_per_step": total_ns * per_step,
        "busy_fraction": total_ns * per_step / wall_ms if wall_ms > 0 else None,
        "ops_per_step": sum(counts.values()) / steps,
        "by_category_ms": dict(sorted(categories.items(), key=lambda item: -item[1])),
        "top_ops": [
            {
                "op": group,
                "ms_per_step": ns * per_step,
                "calls_per_step": counts[group] / steps,
                "share": ns / total_ns if total_ns else 0.0,
            }
            for group, ns in ranked
        ],
    }


def summarize_profile(profile: Any, *, steps: int, wall_s: float, top: int = 12) -> dict[str, Any]:
    """Summary of a ``jax.profiler.ProfileData`` (or anything with the same planes/lines/events shape)."""
    planes = list(profile.planes)
    devices = [p for p in planes if p.name.startswith("/device:") and "CUSTOM" not in p.name]
    for plane in devices:
        events, source = _device_events(plane)
        if events:
            return summarize_events(events, steps=steps, wall_s=wall_s, source=source, top=top)
    host = [p for p in planes if p.name == "/host:CPU"]
    events = [e for p in host for e in _host_events(p)]
    if not events:
        raise ValueError("the profile has no device kernels and no XLA:CPU thunks")
    return summarize_events(
        events, steps=steps, wall_s=wall_s, top=top, source="/host:CPU thread pool (summed over threads)"
    )


def _options() -> Any:
    """No Python tracer (its per-call overhead would inflate the wall time, and its events the trace) and no
    HLO protos in the trace (``--dump-hlo`` writes the HLO); device and XLA host events as usual."""
    options_type = getattr(jax.profiler, "ProfileOptions", None)
    if options_type is None:
        return None
    options = options_type()
    for name, value in (("python_tracer_level", 0), ("enable_hlo_proto", False)):
        try:  # an option a jax version lacks must not cost the whole profile
            setattr(options, name, value)
        except (AttributeError, TypeError):
            pass
    return options


def profile_steps(step: Any, *, steps: int, log_dir: pathlib.Path) -> dict[str, Any]:
    """Trace ``steps`` calls of ``step()`` (which returns arrays to wait for) into ``log_dir`` and summarise.

    One untraced call comes first. The returned dict has ``trace_dir`` (where the trace files are).
    """
    from jax.profiler import ProfileData

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    log_dir = pathlib.Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    before = set(log_dir.rglob("*.xplane.pb"))
    jax.block_until_ready(step())
    with jax.profiler.trace(str(log_dir), profiler_options=_options()):
        start = time.perf_counter()
        for _ in range(steps):
            out = step()
        jax.block_until_ready(out)
        wall_s = time.perf_counter() - start
    written = sorted(set(log_dir.rglob("*.xplane.pb")) - before, key=lambda p: p.stat().st_mtime)
    if not written:
        raise RuntimeError(f"jax.profiler wrote no .xplane.pb under {log_dir}")
    summary = summarize_profile(ProfileData.from_file(str(written[-1])), steps=steps, wall_s=wall_s)
    summary["trace_dir"] = str(written[-1].parent)
    return summary
