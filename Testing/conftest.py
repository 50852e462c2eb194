"""Shared pytest fixtures: the shared data folder and test doubles."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

SHARED_DATA = ROOT.parent / "shared" / "data"


def shared_case(*parts: str) -> Path:
    """Path of a file in ../shared/data; skips the test (saying why) when the shared data is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared test data not found at {path} (CI always has ../shared beside the repository)")
    return path
