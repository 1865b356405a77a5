"""Where the independent reference files (original URDFs and meshes, tests/data/reference) live."""

from __future__ import annotations

from pathlib import Path

REFERENCE_DATA = Path(__file__).resolve().parents[1] / "data" / "reference"
