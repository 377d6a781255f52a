"""Fixtures of the preprocess tests: a small map and simulated micrographs with known centres."""

import pytest

from . import pick_data


@pytest.fixture
def volume():
    return pick_data.volume()


@pytest.fixture
def sim():
    return pick_data.simulated()
