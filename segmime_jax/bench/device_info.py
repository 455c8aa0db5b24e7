"""Memory figures of a benchmark: peak device memory where the backend reports it, XLA's planned memory and
the bytes a compiled program updates in place. (What it ran on: :func:`segmime_jax.environment.environment`.)"""

from __future__ import annotations

from typing import Any

import jax


def peak_memory_bytes(device: jax.Device | None = None) -> int | None:
    """``peak_bytes_in_use`` of ``device`` (default: the first local one), or ``None`` where the backend
    does not report memory statistics (the CPU backend)."""
    device = device or jax.local_devices()[0]
    try:
        stats = device.memory_stats()
    except (AttributeError, NotImplementedError, RuntimeError):
        return None
    if not stats:
        return None
    return stats.get("peak_bytes_in_use")


def _memory_analysis(compiled: Any) -> Any | None:
    """``compiled.memory_analysis()`` (XLA's byte counts of a compiled computation), or ``None`` where the
    backend does not provide it."""
    try:
        return compiled.memory_analysis()
    except (AttributeError, NotImplementedError, RuntimeError):
        return None


def _bytes(analysis: Any, name: str) -> int:
    return int(getattr(analysis, name, 0) or 0)


def aliased_bytes(compiled: Any) -> int | None:
    """Bytes XLA aliases from inputs to outputs (donated buffers updated in place), or ``None``."""
    analysis = _memory_analysis(compiled)
    return None if analysis is None else _bytes(analysis, "alias_size_in_bytes")


def compiled_memory_bytes(compiled: Any) -> int | None:
    """XLA's planned memory of a compiled computation: arguments + outputs + temporaries - aliased
    (donated) buffers, from ``compiled.memory_analysis()``; ``None`` where unavailable.

    Unlike the device's ``peak_bytes_in_use``, which only grows over a process, this is per computation,
    and the CPU backend reports it too.
    """
    analysis = _memory_analysis(compiled)
    if analysis is None:
        return None
    total = sum(
        _bytes(analysis, name) for name in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes")
    )
    return total - _bytes(analysis, "alias_size_in_bytes")
