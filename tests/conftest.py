"""pytest configuration: the jax settings of :mod:`helpers` for every test, a random key, the ``slow`` marker."""

from __future__ import annotations

import jax
import pytest


@pytest.fixture
def key() -> jax.Array:
    return jax.random.key(0)
