"""Shared fixtures: the real data beside the project (../shared/data), read in place."""

from __future__ import annotations

from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"
DS000011 = SHARED_DATA / "ds000011"
LABEL_MAPS = SHARED_DATA / "synthseg-label-maps"


@pytest.fixture(scope="session")
def ds000011() -> Path:
    if not DS000011.is_dir():
        pytest.skip(f"real test data not found at {DS000011}")
    return DS000011


@pytest.fixture(scope="session")
def label_maps() -> Path:
    if not LABEL_MAPS.is_dir():
        pytest.skip(f"real label maps not found at {LABEL_MAPS}")
    return LABEL_MAPS
