"""Shared fixtures. Real data lives in tests/data (provenance in tests/data/README.md)."""

from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
