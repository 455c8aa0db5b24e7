"""Helpers shared by the tests: the jax configuration they run under (persistent compilation cache, float32,
true float32 matmuls) and random inputs. Importing this module applies the configuration; ``conftest.py`` does
so for every test, and subprocesses started by tests import it too."""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
CACHE_DIR = REPO_ROOT / ".cache" / "jax-compilation"
REFERENCE_FIXTURES = REPO_ROOT / "tests" / "fixtures"  # the PyTorch reference fixtures (their README)

CACHE_DIR.mkdir(parents=True, exist_ok=True)
jax.config.update("jax_compilation_cache_dir", str(CACHE_DIR))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
jax.config.update("jax_enable_x64", False)
jax.config.update("jax_default_matmul_precision", "highest")


def random_probs(key: jax.Array, shape: tuple[int, ...], *, temperature: float = 1.0) -> jax.Array:
    """Softmax probabilities of shape ``(B, *spatial, K)`` (classes on the last axis)."""
    logits = jax.random.normal(key, shape, dtype=jnp.float32) / temperature
    return jax.nn.softmax(logits, axis=-1)


def random_onehot(key: jax.Array, shape: tuple[int, ...], *, empty_classes: tuple[int, ...] = ()) -> jax.Array:
    """One-hot float32 targets of shape ``(B, *spatial, K)``; ``empty_classes`` never occur."""
    num_classes = shape[-1]
    allowed = np.array([k for k in range(num_classes) if k not in empty_classes])
    labels = jax.random.choice(key, allowed, shape=shape[:-1])
    return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
