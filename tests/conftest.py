"""pytest configuration: the jax settings of :mod:`helpers` for every test, shared fixtures, the ``slow`` marker."""

from __future__ import annotations

import pathlib

import jax
import pytest
from helpers import SHARED_REFERENCE


@pytest.fixture
def key() -> jax.Array:
    return jax.random.key(0)


@pytest.fixture(scope="session")
def shared_reference() -> pathlib.Path:
    """``../shared/reference`` relative to the repository; tests skip where it is absent."""
    if not SHARED_REFERENCE.is_dir():
        pytest.skip(f"reference fixtures not found at {SHARED_REFERENCE} (../shared/reference)")
    return SHARED_REFERENCE
