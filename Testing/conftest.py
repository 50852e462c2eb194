"""Shared pytest fixtures: the shared data folder and test doubles."""

from __future__ import annotations

import os
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


@pytest.fixture(autouse=True, scope="session")
def _weights_cache_in_a_temporary_folder(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Weights checksum records (and any download) go to a temporary folder, never the user's cache."""
    os.environ["SAMSEGMENT_WEIGHTS_DIR"] = str(tmp_path_factory.mktemp("weights"))
