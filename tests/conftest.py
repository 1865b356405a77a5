"""Shared test fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
from reference_data import REFERENCE_DATA


@pytest.fixture(scope="session")
def reference_data() -> Path:
    """The original URDFs and meshes (tests/data/reference), the oracles for the robot model."""
    return REFERENCE_DATA
