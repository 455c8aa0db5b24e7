"""What a result was computed on: devices, host, library versions and compiler flags (one record for the
experiments' ``results.json`` and the benchmark's ``benchmark.json``); and the environment of a child process
that must import this same package (:func:`child_process_environment`)."""

from __future__ import annotations

import importlib.metadata
import os
import pathlib
import platform
from typing import Any

_PACKAGES = (
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "orbax-checkpoint",
    "chex",
    "numpy",
    "scipy",
    "matplotlib",
    "jax-cuda12-plugin",
    "jax-cuda12-pjrt",
    "jax-cuda13-plugin",
    "jax-cuda13-pjrt",
    "nvidia-cudnn-cu12",
    "nvidia-cudnn-cu13",
    "jax-rocm-plugin",
)


def package_version(package: str) -> str | None:
    """The installed version of ``package``, ``None`` when it is not installed."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    """Backend, device kind and counts, processes, host, CPU count, Python, the versions of the libraries a result
    depends on (those installed), and the ``XLA_FLAGS`` it ran under (``None`` where unset)."""
    import jax

    devices = jax.local_devices()
    return {
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "local_device_count": len(devices),
        "device_count": jax.device_count(),
        "process_count": jax.process_count(),
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "versions": {name: version for name in _PACKAGES if (version := package_version(name)) is not None},
        "xla_flags": os.environ.get("XLA_FLAGS"),
    }


def child_process_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with ``PYTHONPATH`` starting at the folder that holds this
    ``segmime_jax``: a child ``python -m segmime_jax...`` then imports the same package, whether it is installed
    or run from a checkout that is not."""
    import segmime_jax

    env = dict(os.environ if base is None else base)
    here = os.fspath(pathlib.Path(segmime_jax.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH", "")) if p)
    return env
