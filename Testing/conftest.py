"""Shared pytest fixtures: the shared data folder and test doubles."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from shared_data import SHARED_DATA, shared_case  # noqa: E402,F401 - re-exported for the tests


@pytest.fixture(autouse=True, scope="session")
def _weights_cache_in_a_temporary_folder(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Weights checksum records (and any download) go to a temporary folder, never the user's cache."""
    os.environ["SAMSEGMENT_WEIGHTS_DIR"] = str(tmp_path_factory.mktemp("weights"))
