"""Shared pytest fixtures: the shared data folder and test doubles."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from shared_data import SHARED_DATA, shared_case  # noqa: E402,F401 - re-exported for the tests
