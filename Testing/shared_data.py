"""Where the real test data lives: ../shared/data beside the repository (see its INDEX.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_case(*parts: str) -> Path:
    """Path of a file in ../shared/data; skips the test (saying why) when the shared data is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared test data not found at {path} (CI always has ../shared beside the repository)")
    return path
