"""Shared fixtures: the real data sets beside the repository."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.config import data_root


@pytest.fixture(scope="session")
def data_dir() -> Path:
    root = data_root()
    if not (root / "mirflickr25k").is_dir():
        raise RuntimeError(f"the shipped data sets are missing at {root}: "
                           "set HASHREC_DATA_ROOT to their folder")
    return root
